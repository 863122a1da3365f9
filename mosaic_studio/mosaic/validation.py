"""Argument checks of `MosaicPipeline.__call__`: everything is checked before any work starts,
and each error names the bad value."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from mosaic_studio.mosaic.images import check_size

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_SIDE = 4096  # FLUX positions are trained up to ~2 MP; 4096 px is far beyond useful
MAX_IMAGES_PER_PROMPT = 16
# FLUX's flow-matching scheduler is trained on 1000 timesteps; more steps only repeat them, and a
# typo like 100000 would run for hours.
MAX_INFERENCE_STEPS = 1000
# Guidance: FLUX.1-dev's embedded guidance is trained around 1–10 and classifier-free guidance is
# useful up to ~20; 100 leaves room to experiment while inf/1e30/NaN (black images) or a negative
# scale (pushes away from the prompt) are refused.
GUIDANCE_RANGE = (0.0, 100.0)
FLUX_MAX_SEQUENCE_LENGTH = 512  # the longest T5 prompt FLUX accepts (FluxPipeline refuses more)


def max_sequence_limit(pipe) -> int:
    """The longest T5 prompt `pipe` takes: FLUX's 512, or its T5 tokenizer's limit if shorter
    (the tiny default's is 128). A tokenizer without a limit reports a huge model_max_length."""
    return min(FLUX_MAX_SEQUENCE_LENGTH, int(pipe.tokenizer_2.model_max_length))


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)  # numpy ints too


@dataclass(frozen=True)
class CallInputs:
    """The arguments of one `MosaicPipeline.__call__`, after defaults are filled in."""

    prompts: list
    reference_images: list  # decoded images, one per subject
    height: int
    width: int
    reference_size: int
    num_inference_steps: Any
    num_images_per_prompt: Any
    output_type: str
    attention_steps: tuple[int, int]
    callback: Callable | None
    guidance_scale: Any = 3.5  # defaults keep callers that predate these checks working
    max_sequence_length: Any = None  # None: not checked (the pipeline always passes its value)


def check_call_inputs(pipe, inputs: CallInputs) -> None:
    """Raise a TypeError or ValueError naming the first bad value of `inputs` for `pipe`."""
    prompts, references = inputs.prompts, inputs.reference_images
    num_inference_steps, num_images_per_prompt = inputs.num_inference_steps, inputs.num_images_per_prompt
    output_type, attention_steps, callback = inputs.output_type, inputs.attention_steps, inputs.callback
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
    if not references and not any(p.strip() for p in prompts):
        raise ValueError("the prompt is empty and there are no references: give a prompt, references, or both")
    if len(references) > pipe.max_references:
        raise ValueError(f"{len(references)} references given; this pipeline takes at most {pipe.max_references}")
    token = pipe.pixels_per_token
    check_size(inputs.height, inputs.width, token, min_side=2 * token, max_side=MAX_SIDE)
    check_size(inputs.reference_size, inputs.reference_size, token, min_side=2 * token, max_side=MAX_SIDE)
    if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
        raise ValueError(
            f"num_inference_steps must be an int in [1, {MAX_INFERENCE_STEPS}], got {num_inference_steps!r}"
        )
    guidance, (low, high) = inputs.guidance_scale, GUIDANCE_RANGE
    if not (
        isinstance(guidance, Real)
        and not isinstance(guidance, bool)
        and math.isfinite(guidance)
        and low <= guidance <= high
    ):
        raise ValueError(f"guidance_scale must be a finite number in [{low:g}, {high:g}], got {guidance!r}")
    length = inputs.max_sequence_length
    if length is not None:
        limit = max_sequence_limit(pipe)
        if not _is_int(length) or not 1 <= length <= limit:
            raise ValueError(
                f"max_sequence_length must be an int in [1, {limit}] (this pipeline's T5 limit), got {length!r}"
            )
    if not isinstance(num_images_per_prompt, int) or not 1 <= num_images_per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(
            f"num_images_per_prompt must be an int in [1, {MAX_IMAGES_PER_PROMPT}], got {num_images_per_prompt!r}"
        )
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    start, end = attention_steps
    if not 0 <= start < end <= num_inference_steps:
        raise ValueError(
            f"attention_steps must satisfy 0 <= start < end <= {num_inference_steps}, got {attention_steps!r}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable, got {type(callback).__name__}")
