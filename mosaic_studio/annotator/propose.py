"""Automatic correspondence proposal: segment, match with two extractors, intersect, Eq. 2, P_k.

`Proposer.propose(request)` turns a target, its caption and K references into a SemAlign-MS
`Sample` (mosaic.semalign) whose correspondences are proposals. Per-point provenance goes into
the sample's meta, aligned with each reference's correspondences:

    meta["point_info"] = [{"source": ["dift+sift", ...], "confidence": [0.83, ...]}, ...]
    meta["proposal"] = the ProposalConfig used

Steps (paper appendix B): 1. segment the subjects in the target (and the references on their
plain background); 2. per extractor, match every target token in a subject's mask to the
reference subject; 3. keep tokens where the extractors agree (`intersect`); 4. Eq. 2; 5. P_k.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mosaic_studio.annotator.matching import (
    DEFAULT_CANDIDATE_GRID,
    Matches,
    disjoint,
    extract_all,
    intersect,
    match_pair,
    reference_views,
    sample_each,
    token_queries,
)
from mosaic_studio.annotator.segment import (
    SegmentationInput,
    Segmenter,
    labels_of,
    make_segmenter,
    reference_masks,
    segment,
)
from mosaic_studio.mosaic.data.semalign import (
    DEFAULT_TOKEN_SIZE,
    MAX_REFERENCES,
    Reference,
    Sample,
    SampleError,
    validate,
)

POINT_INFO = "point_info"  # meta key: per-reference lists of per-point source and confidence
PROPOSAL_META = "proposal"  # meta key: the settings that produced the points
PAPER_P_K = 150  # paper default P_k (Table 10's setting; Fig. 6 studies 50–200)


@dataclass(frozen=True)
class ProposalConfig:
    """Settings of one proposal run; saved with every proposed sample."""

    segmenter: str = "ground-truth"  # a name of annotator.segment.SEGMENTERS
    extractors: tuple[str, ...] = ("dift", "sift")  # names of annotator.features.EXTRACTORS
    radius: int = 0  # agreement radius in reference tokens; 0 = the authors' rule (same token)
    p_k: int = PAPER_P_K  # at most this many points per reference
    token_size: int = DEFAULT_TOKEN_SIZE  # pixels per target token: one query per token
    candidate_grid: int = DEFAULT_CANDIDATE_GRID  # reference positions per longer side
    mirror_test: bool = True  # also try the mirrored reference (flipped subjects)
    seed: int = 0  # P_k sampling

    def __post_init__(self):
        if not self.extractors:
            raise ValueError("at least one feature extractor is needed")
        if len(set(self.extractors)) != len(self.extractors):
            raise ValueError(f"extractors must be distinct, got {self.extractors}")
        if self.radius < 0 or self.p_k < 0 or self.token_size < 1 or self.candidate_grid < 1:
            raise ValueError("radius and p_k must be >= 0, token_size and candidate_grid >= 1")


@dataclass
class ProposalRequest:
    """One sample to annotate. `masks` and `attention` only where the data has them."""

    sample_id: str
    target: np.ndarray  # (H, W, 3) uint8
    caption: str
    references: list[np.ndarray]  # K × (h, w, 3) uint8
    categories: list[str]  # K of mosaic.semalign.CATEGORIES
    labels: list[str]  # K finer names (detector prompts); "" = use the category
    masks: list[np.ndarray] | None = None
    masks_exclusive: bool = True
    attention: np.ndarray | None = None  # (K, rows, cols) from a generation's AttentionRecord
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_sample(cls, sample: Sample, use_masks: bool = True) -> ProposalRequest:
        """A stored sample, to be annotated again (its correspondences are ignored)."""
        refs = sample.references
        return cls(
            sample.sample_id,
            sample.target,
            sample.caption,
            [r.image for r in refs],
            [r.category for r in refs],
            [r.label for r in refs],
            [r.mask for r in refs] if use_masks else None,
            sample.masks_exclusive,
            meta=dict(sample.meta),
        )


def _check_image(image, what: str, sample_id: str) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"sample {sample_id!r}: {what} must be a uint8 (H, W, 3) RGB array")


def check_request(request: ProposalRequest) -> None:
    """ValueError naming the sample for anything the proposal cannot work on."""
    sid, count = request.sample_id, len(request.references)
    if not 1 <= count <= MAX_REFERENCES:
        raise ValueError(f"sample {sid!r}: {count} references, allowed 1..{MAX_REFERENCES}")
    _check_image(request.target, "the target", sid)
    for k, image in enumerate(request.references):
        _check_image(image, f"reference {k}", sid)
    if not len(request.categories) == len(request.labels) == count:
        raise ValueError(f"sample {sid!r}: need one category and one label per reference")
    if request.masks is not None and len(request.masks) != count:
        raise ValueError(f"sample {sid!r}: {len(request.masks)} masks for {count} references")


class Proposer:
    """A segmenter plus feature extractors, configured once, run on many samples."""

    def __init__(self, config: ProposalConfig, segmenter: Segmenter, extractors: dict):
        """extractors: name → Extractor, for every name in config.extractors."""
        missing = [name for name in config.extractors if name not in extractors]
        if missing:
            raise ValueError(f"no extractor object for {missing}")
        self.config, self.segmenter = config, segmenter
        self.extractors = [extractors[name] for name in config.extractors]

    def match_all(self, request: ProposalRequest):
        """Steps 1–2: target masks, exclusivity, and per extractor one Matches per reference."""
        check_request(request)
        inp = SegmentationInput(
            request.sample_id,
            request.target,
            request.references,
            labels_of(request.labels, request.categories),
            request.caption,
            request.masks,
            request.attention,
            {"masks_exclusive": request.masks_exclusive},
        )
        target_masks, exclusive = segment(self.segmenter, inp)
        ref_masks = reference_masks(inp)
        queries = [token_queries(mask, self.config.token_size) for mask in target_masks]
        per_extractor = {
            name: self._match(extractor, request, target_masks, ref_masks, queries)
            for name, extractor in zip(self.config.extractors, self.extractors)
        }
        return target_masks, exclusive, per_extractor

    def _match(self, extractor, request, target_masks, ref_masks, queries) -> list[Matches]:
        """One extractor's matches for every reference; all its images described in one call
        (one target map for all subjects unless the extractor scales with the subject)."""
        targets = (
            [(request.target, mask) for mask in target_masks]
            if extractor.uses_mask
            else [(request.target, target_masks[0])]
        )
        views = [
            reference_views(image, mask, self.config.mirror_test) for image, mask in zip(request.references, ref_masks)
        ]
        flat = targets + [(image, mask) for per_ref in views for image, mask, _ in per_ref]
        maps = iter(extract_all(extractor, [image for image, _ in flat], [mask for _, mask in flat]))
        target_maps = [next(maps) for _ in targets]
        matches = []
        for k, ((tokens, points), per_ref) in enumerate(zip(queries, views)):
            described = [(next(maps), mirrored) for _, _, mirrored in per_ref]
            matches.append(
                match_pair(
                    target_maps[k if extractor.uses_mask else 0],
                    tokens,
                    points,
                    described,
                    ref_masks[k],
                    extractor.name,
                    self.config.candidate_grid,
                )
            )
        return matches

    def combine(self, per_extractor: dict, names=None, radius=None) -> list[Matches]:
        """Step 3: the intersection of the named extractors' matches (one name: its matches)."""
        names = list(names or self.config.extractors)
        radius = self.config.radius if radius is None else radius
        token_size = self.config.token_size
        if len(names) == 1:
            return list(per_extractor[names[0]])
        return [
            intersect(list(ref_matches), token_size, radius)
            for ref_matches in zip(*(per_extractor[name] for name in names))
        ]

    def finish(self, request: ProposalRequest, target_masks, exclusive: bool, matches: list[Matches]) -> Sample:
        """Steps 4–5 and the output sample, validated (Eq. 2 at the configured token size)."""
        rng = np.random.default_rng(self.config.seed)
        matches = sample_each(disjoint(matches), self.config.p_k, rng)
        references = [
            Reference(image, mask, m.ref_points, m.target_points, category, label)
            for image, mask, m, category, label in zip(
                request.references, target_masks, matches, request.categories, request.labels
            )
        ]
        meta = {
            **request.meta,
            PROPOSAL_META: asdict(self.config) | {"extractors": list(self.config.extractors)},
            POINT_INFO: [{"source": [m.source] * len(m), "confidence": m.confidence.tolist()} for m in matches],
        }
        sample = Sample(request.sample_id, request.target, request.caption, references, exclusive, meta)
        try:
            return validate(sample, self.config.token_size)
        except SampleError as error:  # a broken proposal is a bug or a bad segmentation
            raise ValueError(f"proposal for sample {request.sample_id!r} is invalid: {error}") from error

    def propose(self, request: ProposalRequest) -> Sample:
        target_masks, exclusive, per_extractor = self.match_all(request)
        return self.finish(request, target_masks, exclusive, self.combine(per_extractor))


def build_proposer(
    config: ProposalConfig, pipe=None, segmenter_options: dict | None = None, extractor_options: dict | None = None
) -> Proposer:
    """A Proposer with components made by name. `pipe` (a MosaicPipeline) feeds the dift
    extractor and the attention segmenter; extractor_options: name → keyword arguments."""
    from mosaic_studio.annotator.features import make_extractor

    runner = None
    if pipe is not None:
        from mosaic_studio.annotator.flux_features import FluxRunner

        runner = FluxRunner(pipe)
    segmenter_options = dict(segmenter_options or {})
    if config.segmenter == "attention":
        segmenter_options.setdefault("runner", runner)
        segmenter_options.setdefault("token_size", config.token_size)
    extractors = {}
    for name in config.extractors:
        options = dict((extractor_options or {}).get(name, {}))
        if name == "dift":
            if runner is None:
                raise ValueError("the dift extractor needs a loaded pipeline (pipe=...)")
            options.setdefault("runner", runner)
        extractors[name] = make_extractor(name, **options)
    return Proposer(config, make_segmenter(config.segmenter, **segmenter_options), extractors)
