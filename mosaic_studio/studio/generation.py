"""One generation for the app: check the request, run the pipeline with attention recording,
write the PNGs with their settings, and keep everything the other tabs need (`Generation`)."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mosaic_studio.mosaic.images import REFERENCE_CROP_TOLERANCE, check_crop_tolerance, preprocess_reference
from mosaic_studio.mosaic.probe import all_blocks
from mosaic_studio.mosaic.record import DEFAULT_BINS, record_bytes
from mosaic_studio.studio.limits import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS
from mosaic_studio.studio.metadata import save_png
from mosaic_studio.studio.references import load_references, parse_categories
from mosaic_studio.studio.session import Generation

MAX_SEED = 2**31 - 1
MAX_IMAGES = 4
MAX_STEPS = 100
MIN_SIDE, MAX_SIDE = 64, 1536  # the app's limits; FLUX works up to ~2 MP (1536² ≈ 2.4 MP)
MAX_REFERENCE_SIDE = 1024  # twice the official 512: every reference costs its tokens at every step
# Attention kept per generation (float32 on the CPU): every block of the model when it fits,
# else evenly spaced blocks. FLUX.1-dev at 512², 3 references, 1 image: 12.6 MB per block.
RECORD_BUDGET_BYTES = 1 << 30
MAX_REFERENCE_STRENGTH = 2.0  # the app's slider range 0–2; the pipeline itself takes any s_k >= 0


@dataclass(frozen=True)
class Request:
    """The Generate tab's settings, checked (`check`) before any model work."""

    prompt: str
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    num_images: int
    attention_first: int = 1  # record attention over steps first..last, 1-based inclusive
    attention_last: int = MAX_STEPS  # clamped to `steps`
    # `preprocess_reference`'s crop_tolerance: 0 crops as the official inference; kept in the
    # PNG settings because it changes what the model sees.
    reference_crop_tolerance: int = REFERENCE_CROP_TOLERANCE
    reference_size: int | None = None  # None: the model's native one (MosaicPipeline.native_reference_size)
    # Fast mode and per-reference strengths (docs/DESIGN.md §7). Strengths are per upload slot:
    # the first len(references) are used, a missing one is 1.
    reference_cache: bool = False
    reference_strengths: tuple[float, ...] = ()

    def check(self) -> Request:
        limits = [
            ("height", self.height, MIN_SIDE, MAX_SIDE),
            ("width", self.width, MIN_SIDE, MAX_SIDE),
            ("steps", self.steps, 1, MAX_STEPS),
            ("images", self.num_images, 1, MAX_IMAGES),
            ("seed", self.seed, 0, MAX_SEED),
        ]
        if self.reference_size is not None:
            limits.append(("reference size", self.reference_size, MIN_SIDE, MAX_REFERENCE_SIDE))
        for name, value, low, high in limits:
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name}={value!r} is outside [{low}, {high}]")
        if not isinstance(self.prompt, str):
            raise TypeError(f"the prompt must be text, got {type(self.prompt).__name__}")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is {len(self.prompt):,} characters; at most {MAX_PROMPT_CHARS:,}")
        if not 1 <= self.attention_first <= min(self.attention_last, self.steps):
            raise ValueError(
                f"attention steps {self.attention_first}–{self.attention_last} do not lie in 1–{self.steps}"
            )
        check_crop_tolerance(self.reference_crop_tolerance)
        if not isinstance(self.reference_cache, bool):
            raise TypeError(f"fast mode (reference_cache) must be True or False, got {self.reference_cache!r}")
        for i, strength in enumerate(self.reference_strengths):
            if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)):
                raise ValueError(f"reference {i + 1} strength={strength!r} is not a number")
            if not 0 <= strength <= MAX_REFERENCE_STRENGTH:
                raise ValueError(f"reference {i + 1} strength={strength!r} is outside [0, {MAX_REFERENCE_STRENGTH:g}]")
        return self

    def strengths_for(self, count: int) -> list[float]:
        """The strengths of the first `count` references (1 where the request gives none)."""
        given = [float(s) for s in self.reference_strengths[:count]]
        return given + [1.0] * (count - len(given))

    @property
    def attention_steps(self) -> tuple[int, int]:
        """[start, end) for the pipeline."""
        return (self.attention_first - 1, min(self.attention_last, self.steps))


def check_prompt_tokens(pipe, prompt: str) -> None:
    """Refuse a prompt longer than T5 reads: the pipeline would silently cut it (FLUX: 512 tokens,
    or the tokenizer's own limit when smaller, as the pipeline chooses)."""
    tokenizer = getattr(pipe, "tokenizer_2", None)
    if tokenizer is None or not prompt:
        return
    limit = min(MAX_PROMPT_TOKENS, tokenizer.model_max_length)
    count = len(tokenizer(prompt, verbose=False).input_ids)  # with the end token, as the pipeline counts
    if count > limit:
        raise ValueError(f"the prompt is {count} T5 tokens; the model reads at most {limit}: shorten it")


def snap_side(label: str, value, *, token: int, low: int = MIN_SIDE, high: int = MAX_SIDE) -> tuple[int | None, str]:
    """A size box's value as the app will use it, and what to tell the user ("" when `value` is
    fine as it is). Out of [low, high]: refused, set to the nearest limit; else snapped to the
    nearest whole number of `token`-pixel tokens (the model's pixels per token)."""
    lowest, highest = -(-low // token) * token, high // token * token  # the limits in whole tokens
    if value is None:
        return None, f"{label}: enter a size in pixels, {low}–{high}."
    if not lowest <= value <= highest:
        nearest = min(max(round(value), lowest), highest)
        return nearest, f"{label} {value:g} px refused: it must be {lowest}–{highest} px. Set to {nearest}."
    snapped = min(max(round(value / token) * token, lowest), highest)
    if snapped != value:
        return snapped, f"{label} {value:g} px is not a whole number of {token} px tokens: snapped to {snapped}."
    return int(value), ""


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def record_blocks(
    transformer,
    *,
    num_images: int,
    num_refs: int,
    ref_tokens: int,
    target_tokens: int,
    recorded_steps: int,
    budget: int = RECORD_BUDGET_BYTES,
) -> list[str]:
    """Every block when its maps fit `budget` bytes, else as many evenly spaced ones as fit. A
    block keeps one map per step bin plus the mean (`record.record_bytes`)."""
    blocks = all_blocks(transformer)
    per_block = record_bytes(
        num_images=num_images,
        num_refs=num_refs,
        ref_tokens=ref_tokens,
        target_tokens=target_tokens,
        bins=min(recorded_steps, DEFAULT_BINS),
    )
    keep = max(1, min(len(blocks), budget // max(per_block, 1)))
    if keep == len(blocks):
        return blocks
    return [blocks[round(i * (len(blocks) - 1) / max(keep - 1, 1))] for i in range(keep)]


def generate(
    pipe,
    request: Request,
    files,
    categories_text: str = "",
    remove_bg: bool = False,
    outputs_dir: str | Path = ".",
    on_step: Callable[[int, int], None] | None = None,
    model_info: dict | None = None,
) -> Generation:
    """Run one generation. ValueError (naming the problem) for any bad input, before any work."""
    # 1. Check inputs
    request.check()
    check_prompt_tokens(pipe, request.prompt)
    images, names = load_references(files, remove_bg)
    if not images and not request.prompt.strip():
        raise ValueError("the prompt is empty and there are no references: give a prompt, references, or both")
    categories = parse_categories(categories_text, len(images))
    strengths = request.strengths_for(len(images))
    reference_size = request.reference_size or pipe.native_reference_size(request.height, request.width)
    token = pipe.pixels_per_token

    # 2. Attention recording: every block that fits the budget, the requested steps
    blocks = (
        record_blocks(
            pipe.transformer,
            num_images=request.num_images,
            num_refs=len(images),
            ref_tokens=(reference_size // token) ** 2,
            target_tokens=(request.height // token) * (request.width // token),
            recorded_steps=request.attention_steps[1] - request.attention_steps[0],
        )
        if images
        else None
    )

    # 3. Generate
    def callback(_pipe, i, _t, _tensors):
        if on_step is not None:
            on_step(i + 1, request.steps)
        return {}

    out = pipe(
        request.prompt,
        reference_images=images,
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.num_images,
        generator=torch.Generator().manual_seed(request.seed),
        callback_on_step_end=callback,
        record_attention=bool(images),
        reference_size=reference_size,
        reference_crop_tolerance=request.reference_crop_tolerance,
        attention_blocks=blocks,
        attention_steps=request.attention_steps,
        reference_cache=request.reference_cache,
        reference_strengths=strengths,
    )

    # 4. PNGs with metadata
    settings = {
        **asdict(request),
        "attention_last": request.attention_steps[1],
        "references": names,
        "categories": categories,
        "reference_size": reference_size,
        "reference_strengths": strengths,  # the ones used, one per reference
        **(model_info or {}),
    }
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    paths = [
        str(
            save_png(
                image,
                Path(outputs_dir) / f"mosaic-{stamp}-seed{request.seed}-{i + 1}.png",
                {**settings, "image": i + 1},
            )
        )
        for i, image in enumerate(out.images)
    ]
    reference_images = [  # as the pipeline saw them
        preprocess_reference(image, reference_size, crop_tolerance=request.reference_crop_tolerance) for image in images
    ]
    return Generation(
        settings=settings,
        images=list(out.images),
        reference_images=reference_images,
        categories=categories,
        record=out.attention,
        paths=paths,
    )
