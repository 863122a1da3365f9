"""CLIP-I, CLIP-T and DINO with their published definitions, through `transformers`.

These are the subject-fidelity and text-alignment numbers that DreamBooth (Ruiz et al. 2023,
§4.1) introduced with DreamBench and that later methods report on it (UNO, OmniGen; MOSAIC's
Table 1 compares on CLIP-I, CLIP-T and DINO). For a generated image g, its reference images R
(one or more) and its prompt p:

    CLIP-I(g, R) = mean over r in R of cos(E_clip_image(g), E_clip_image(r))
    CLIP-T(g, p) = cos(E_clip_image(g), E_clip_text(p))
    DINO(g, R)   = mean over r in R of cos(CLS_dino(g), CLS_dino(r))

E_clip_* are CLIP's projected embeddings (`CLIPModel.get_image_features` / `get_text_features`);
CLS_dino is the DINO ViT's class token after the final layer norm (`last_hidden_state[:, 0]`).
A benchmark score is the mean of these per-image numbers over all generated images. Values are
raw cosines in [-1, 1]; XVerse and DreamBench++ print them x100.

Default models, and why:
  DINO `facebook/dino-vits16`: DreamBooth defines DINO with the ViT-S/16 DINO model; XVerse's
    released scorer (eval/tools/dino.py) loads exactly `facebook/dino-vits16`. (XVerseBench's
    ReadMe says "DINOv2 similarity", but its code loads DINO v1 ViT-S/16; DreamBench++'s code
    offers both `dino_vits8` and `facebook/dinov2-small`.)
  CLIP `openai/clip-vit-base-patch32`: the default of DreamBench++'s released CLIP-I/CLIP-T code
    (dreambench_plus/metrics/clip_score.py) and the usual DreamBench choice. The DreamBooth paper
    speaks of "CLIP embeddings"; we could not confirm a named variant from its text here. UNO and
    MOSAIC released no metric code, XVerse none for CLIP (its `CLIP_MODEL_PATH`, ViT-L/14, is
    the generator's image encoder, not a metric).

Preprocessing: CLIP uses the model's own image processor and tokenizer (resize the short side
to 224 bicubic, centre-crop 224, CLIP mean/std for the OpenAI checkpoints), as DreamBench++ does.
DINO uses the fixed transform of XVerse's and DreamBench++'s scorers (short side to 256 bicubic,
centre-crop 224, ImageNet mean/std) rather than the hub's processor config, which for
`facebook/dino-vits16` squashes to 224x224 without a crop (`dino_pixels`).

Several references: the score is the mean over references, as in DreamBooth ("average pairwise
cosine similarity" between generated and real images of the subject). Published multi-subject
protocols differ, and this module does not reproduce them:
  * XVerseBench scores each non-human subject by detecting it in the generated image (Florence-2
    with the subject's label, up to 3 instances, each padded to a white square), taking the max
    DINO over the detected crops (0 when none is found), then averaging over subjects and images;
    human subjects get a face-ID score instead (eval/tools/idip_sam-dino_score.py). Here the whole
    generated image is compared with every reference, so multi-subject numbers are lower than and
    not comparable to XVerse's "IP" score.
  * Multi-subject DreamBench (UNO's dreambench_multiip.json) has no released metric code; the
    mean over references is our reading of "CLIP-I/DINO averaged over subjects".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"

# The DINO transform of XVerse's eval/tools/dino.py and DreamBench++'s dino_score.py
# (torchvision Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize).
DINO_RESIZE = 256
DINO_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- pure functions


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` (N, D) with every row of `b` (M, D): (N, M)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row of `a` (N, D) against all rows of `b` (M, D), averaged over b: (N,).

    With a = generated images and b = references this is CLIP-I or DINO for several references.
    """
    if b.shape[0] == 0:
        raise ValueError("mean_cosine: no rows to compare against (empty reference set)")
    return cosine_matrix(a, b).mean(dim=1)


def dino_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """The published DINO transform: short side to 256 (bicubic), centre crop 224, ImageNet
    normalisation. Returns (N, 3, 224, 224) float32.

    Written out with PIL because torchvision is not a dependency; sizes and offsets follow
    torchvision's Resize (long side truncated) and CenterCrop (offsets rounded).
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(DINO_RESIZE * long / short)
        size = (DINO_RESIZE, new_long) if w <= h else (new_long, DINO_RESIZE)
        image = image.resize(size, Image.BICUBIC)
        left = int(round((size[0] - DINO_CROP) / 2.0))
        top = int(round((size[1] - DINO_CROP) / 2.0))
        image = image.crop((left, top, left + DINO_CROP, top + DINO_CROP))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, 224, 224)
        out.append((x - mean) / std)
    return torch.stack(out)


# ---------------------------------------------------------------- models


def _load(loader: Callable, model_id: str, role: str):
    """`loader(model_id)`, with an error that names the model and says how to get its weights."""
    try:
        return loader(model_id)
    except OSError as err:
        raise OSError(
            f"cannot load the {role} model {model_id!r}: {err}\n"
            f"Published-metric weights come from the Hugging Face Hub, which needs internet access "
            f"(or a filled cache); offline, pass a local folder written by save_pretrained."
        ) from err


class PublishedScorer:
    """CLIP-I, CLIP-T and DINO (module docstring) with configurable models.

    clip_model / dino_model: hub ids or local folders (`from_pretrained`); loaded on first use,
    so constructing a scorer never touches the network. device: where the models run; they
    run in float32, the published precision. batch_size: images per forward pass.
    """

    def __init__(
        self,
        clip_model: str | Path = DEFAULT_CLIP_MODEL,
        dino_model: str | Path = DEFAULT_DINO_MODEL,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip_model_id = str(clip_model)
        self.dino_model_id = str(dino_model)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._clip = self._clip_processor = self._clip_tokenizer = self._dino = None

    # --- lazy loading

    def _clip_parts(self):
        if self._clip is None:
            model_id = self.clip_model_id
            self._clip = _load(CLIPModel.from_pretrained, model_id, "CLIP").to(self.device).eval()
            self._clip_processor = _load(AutoImageProcessor.from_pretrained, model_id, "CLIP image processor")
            self._clip_tokenizer = _load(AutoTokenizer.from_pretrained, model_id, "CLIP tokenizer")
        return self._clip, self._clip_processor, self._clip_tokenizer

    def _dino_model(self):
        if self._dino is None:
            self._dino = _load(AutoModel.from_pretrained, self.dino_model_id, "DINO").to(self.device).eval()
        return self._dino

    def load(self) -> PublishedScorer:
        """Load both models now (instead of on first use), e.g. to fail early."""
        self._clip_parts()
        self._dino_model()
        return self

    # --- embeddings, (N, D) float32 on the CPU

    def _batched(self, items: Sequence, embed: Callable[[Sequence], torch.Tensor], what: str) -> torch.Tensor:
        if len(items) == 0:
            raise ValueError(f"{what}: no inputs")
        with torch.no_grad():
            chunks = [embed(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return torch.cat(chunks).float().cpu()

    def clip_image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP's projected image embeddings E_clip_image, (N, projection_dim)."""
        model, processor, _ = self._clip_parts()

        def embed(batch):
            pixels = processor(images=[im.convert("RGB") for im in batch], return_tensors="pt")["pixel_values"]
            return model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output

        return self._batched(images, embed, "clip_image_embeddings")

    def clip_text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP's projected text embeddings E_clip_text, (N, projection_dim); prompts are cut at
        the text model's context length (77 for CLIP), as CLIP was trained."""
        model, _, tokenizer = self._clip_parts()
        max_length = model.config.text_config.max_position_embeddings

        def embed(batch):
            tokens = tokenizer(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            ).pooler_output

        return self._batched(prompts, embed, "clip_text_embeddings")

    def dino_image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """DINO class tokens CLS_dino after the final layer norm, (N, hidden_size)."""
        model = self._dino_model()

        def embed(batch):
            return model(pixel_values=dino_pixels(batch).to(self.device)).last_hidden_state[:, 0]

        return self._batched(images, embed, "dino_image_embeddings")

    # --- one benchmark case

    def score_case(self, generated: Image.Image, references: Sequence[Image.Image], prompt: str) -> dict[str, float]:
        """{"clip_i", "clip_t", "dino"} for one generated image; CLIP-I and DINO are means over
        `references` (module docstring)."""
        if len(references) == 0:
            raise ValueError("score_case: empty reference list; CLIP-I and DINO need at least one reference image")
        if not prompt.strip():
            raise ValueError("score_case: empty prompt; CLIP-T needs the prompt the image was generated from")
        images = [generated, *references]
        clip = self.clip_image_embeddings(images)  # (1 + M, D): generated first
        dino = self.dino_image_embeddings(images)
        text = self.clip_text_embeddings([prompt])
        return {
            "clip_i": mean_cosine(clip[:1], clip[1:]).item(),
            "clip_t": cosine_matrix(clip[:1], text).item(),
            "dino": mean_cosine(dino[:1], dino[1:]).item(),
        }
