"""The reference-branch LoRA: which modules it adapts, and how text/target bypass it.

MOSAIC (like OminiControl) trains one LoRA that only ever sees reference tokens: the text and
the noisy target always run through the base weights. The modules are the stock diffusers
ones wrapped by peft, so we switch the adapters off around every text/target call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

# The modules the official MOSAIC training wraps (docs/DESIGN.md §3), as one peft `target_modules`
# regex (peft full-matches it against each module name). Double blocks are
# `transformer_blocks.N`, single blocks `single_transformer_blocks.N`.
REFERENCE_LORA_TARGETS = (
    r"x_embedder"
    r"|transformer_blocks\.\d+\.(norm1\.linear|attn\.to_[qkv]|attn\.to_out\.0|ff\.net\.2)"
    r"|single_transformer_blocks\.\d+\.(norm\.linear|proj_mlp|proj_out|attn\.to_[qkv])"
)


def reference_lora_config(rank: int = 16, alpha: float | None = None, init: str = "gaussian") -> LoraConfig:
    """peft config of the reference LoRA; alpha defaults to rank (scale 1, as officially trained)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights=init,
        target_modules=REFERENCE_LORA_TARGETS,
    )


def tuner_layers(*modules: torch.nn.Module) -> list[BaseTunerLayer]:
    """Every peft-wrapped layer inside `modules` (empty when no adapter is loaded)."""
    return [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(*modules: torch.nn.Module) -> Iterator[None]:
    """Run `modules` on their base weights: the text and target branches (docs/DESIGN.md §3).

    peft's public `enable_adapters(False)` also flips `requires_grad` of the adapter weights,
    which would freeze the LoRA in the middle of a training step, so the flag is set directly.
    A merged (fused) adapter is refused: its weights are inside the base layer, where the text
    and target branches would see them.
    """
    layers = tuner_layers(*modules)
    for layer in layers:
        if layer.merged:
            raise RuntimeError(
                "MOSAIC applies the LoRA to reference tokens only; a merged (fused) LoRA would "
                "also change text and target tokens. Unfuse it (pipe.unfuse_lora()) first."
            )
    saved = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, saved):
            layer._disable_adapters = flag
