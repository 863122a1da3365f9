"""Open-vocabulary detection + SAM: the `grounded-sam` segmenter (paper appendix B, stage 3).

The paper segments subjects with Lang-SAM, which wraps GroundingDINO (text → boxes) and SAM 2.1
(box → mask). When the `lang_sam` package is importable it is used as is; otherwise the same two
models run through transformers (model ids configurable, loaded from a local folder or the
Hugging Face cache; absent weights raise `MissingWeightsError` naming the model).

For each subject the detector is queried with its label ("mug."); every box above the
thresholds is segmented. Subjects sharing a label (two mugs) get distinct detections, assigned
to references by the closest mean colour of the reference's subject: the detector cannot tell
identities apart, colour usually can.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mosaic_studio.annotator.segment_base import SegmentationInput, Segmenter, plain_background_mask
from mosaic_studio.annotator.weights import OFFLINE_SEGMENTERS, load_pretrained

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"
DEFAULT_SAM = "facebook/sam2.1-hiera-small"  # the SAM 2.1 size Lang-SAM uses by default
LANG_SAM_DEFAULT_TYPE = "sam2.1_hiera_small"
BOX_THRESHOLD = 0.3  # Lang-SAM's defaults
TEXT_THRESHOLD = 0.25


@dataclass
class Detections:
    """Everything found for one text prompt, best first."""

    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 pixels
    scores: np.ndarray  # (N,)
    masks: np.ndarray  # (N, H, W) bool

    def sorted(self) -> Detections:
        order = np.argsort(-self.scores, kind="stable")
        return Detections(self.boxes[order], self.scores[order], self.masks[order])


def _prompt(label: str) -> str:
    """GroundingDINO's query format: lower case, ending with a period."""
    text = label.strip().lower()
    return text if text.endswith(".") else text + "."


class TransformersDetector:
    """GroundingDINO + SAM (or SAM 2) through transformers."""

    def __init__(
        self,
        detector_id: str = DEFAULT_DETECTOR,
        sam_id: str = DEFAULT_SAM,
        detector=None,
        sam=None,
        device: str = "cpu",
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ):
        """detector / sam: (model, processor) pairs already built (tests, custom models); by
        default both are loaded from their ids."""
        from transformers import AutoModel, AutoModelForZeroShotObjectDetection, AutoProcessor

        alternatives = OFFLINE_SEGMENTERS
        if detector is None:
            detector = (
                load_pretrained(
                    AutoModelForZeroShotObjectDetection,
                    detector_id,
                    "GroundingDINO detector",
                    "--detector",
                    alternatives,
                ),
                load_pretrained(AutoProcessor, detector_id, "GroundingDINO processor", "--detector", alternatives),
            )
        if sam is None:
            sam = (
                load_pretrained(AutoModel, sam_id, "SAM", "--sam", alternatives),
                load_pretrained(AutoProcessor, sam_id, "SAM processor", "--sam", alternatives),
            )
        self.detector_model, self.detector_processor = detector
        self.sam_model, self.sam_processor = sam
        self.detector_model.to(device).eval()
        self.sam_model.to(device).eval()
        self.device = device
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    @torch.no_grad()
    def __call__(self, image: np.ndarray, label: str) -> Detections:
        pil = Image.fromarray(image)
        height, width = image.shape[:2]
        inputs = self.detector_processor(images=pil, text=_prompt(label), return_tensors="pt").to(self.device)
        outputs = self.detector_model(**inputs)
        found = self.detector_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(height, width)],
        )[0]
        boxes = found["boxes"].cpu().numpy().reshape(-1, 4)
        scores = found["scores"].cpu().numpy()
        if len(boxes) == 0:
            return Detections(boxes, scores, np.zeros((0, height, width), dtype=bool))
        sam_inputs = self.sam_processor(images=pil, input_boxes=[boxes.tolist()], return_tensors="pt")
        prediction = self.sam_model(
            pixel_values=sam_inputs["pixel_values"].to(self.device),
            input_boxes=sam_inputs["input_boxes"].to(self.device),
            multimask_output=False,
        )
        extra = (
            {"reshaped_input_sizes": sam_inputs["reshaped_input_sizes"]} if "reshaped_input_sizes" in sam_inputs else {}
        )  # SAM 1 needs it, SAM 2 not
        masks = self.sam_processor.post_process_masks(
            prediction.pred_masks.cpu(), sam_inputs["original_sizes"], **extra
        )[0]
        masks = masks.reshape(len(boxes), -1, height, width)[:, 0].numpy().astype(bool)  # (N, H, W)
        return Detections(boxes, scores, masks)


class LangSamDetector:
    """The `lang_sam` package (GroundingDINO + SAM 2.1), when it is installed."""

    def __init__(
        self,
        sam_type: str = LANG_SAM_DEFAULT_TYPE,
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ):
        from lang_sam import LangSAM

        self.model = LangSAM(sam_type=sam_type)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    def __call__(self, image: np.ndarray, label: str) -> Detections:
        found = self.model.predict(
            [Image.fromarray(image)],
            [_prompt(label)],
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
        )[0]
        height, width = image.shape[:2]
        masks = np.asarray(found.get("masks", np.zeros((0, height, width)))) > 0
        return Detections(
            np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4),
            np.asarray(found["scores"], dtype=np.float64).reshape(-1),
            masks.reshape(-1, height, width),
        )


def lang_sam_available() -> bool:
    try:
        import lang_sam  # noqa: F401
    except ImportError:
        return False
    return True


def _mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image[mask].astype(np.float64).mean(axis=0) if mask.any() else np.full(3, np.inf)


def assign_by_colour(candidates: list[np.ndarray], target: np.ndarray, references: list[np.ndarray]) -> tuple[int, ...]:
    """Which candidate mask goes to each reference: the distinct choice with the smallest total
    distance between mean colours (exhaustive: a label is shared by at most six subjects)."""
    reference_colours = [_mean_colour(r, plain_background_mask(r)) for r in references]
    candidate_colours = [_mean_colour(target, m) for m in candidates]
    cost = np.array([[np.linalg.norm(c - r) for c in candidate_colours] for r in reference_colours])
    choices = itertools.permutations(range(len(candidates)), len(references))
    return min(choices, key=lambda choice: cost[np.arange(len(choice)), list(choice)].sum())


class GroundedSamSegmenter(Segmenter):
    """Open-vocabulary detector + SAM: Lang-SAM when importable, else transformers."""

    name = "grounded-sam"

    def __init__(
        self,
        detector_id: str = DEFAULT_DETECTOR,
        sam_id: str = DEFAULT_SAM,
        use_lang_sam: bool | None = None,
        detect=None,
        device: str = "cpu",
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ):
        """use_lang_sam: None = whenever the package is importable. detect: a ready
        `(image, label) -> Detections` callable, e.g. a TransformersDetector built from models."""
        if detect is None:
            if use_lang_sam is None:
                use_lang_sam = lang_sam_available()
            detect = (
                LangSamDetector(box_threshold=box_threshold, text_threshold=text_threshold)
                if use_lang_sam
                else TransformersDetector(
                    detector_id, sam_id, device=device, box_threshold=box_threshold, text_threshold=text_threshold
                )
            )
        self.detect = detect

    def target_masks(self, inp: SegmentationInput):
        masks: list[np.ndarray | None] = [None] * len(inp.references)
        for label in dict.fromkeys(inp.labels):  # each distinct label once, in order
            subjects = [k for k, other in enumerate(inp.labels) if other == label]
            found = self.detect(inp.target, label).sorted()
            if len(found.scores) < len(subjects):
                raise ValueError(
                    f"sample {inp.sample_id!r}: the detector found {len(found.scores)} "
                    f"'{label}' in the target for {len(subjects)} references "
                    f"(box threshold {getattr(self.detect, 'box_threshold', '?')})"
                )
            candidates = list(found.masks[: len(subjects) + 2])  # a few spares for assignment
            choice = assign_by_colour(candidates, inp.target, [inp.references[k] for k in subjects])
            for k, index in zip(subjects, choice):
                masks[k] = candidates[index]
        return masks, False  # detector masks may overlap: Eq. 2 is enforced per token later
