"""Reading and writing the reference LoRA in the authors' file format.

The official checkpoint (`ByteDance-FanQie/MOSAIC`, `subject_512.safetensors`) is a state dict
as written by `FluxPipeline.save_lora_weights` from a peft LoRA: keys
`transformer.<module>.lora_A.weight` (rank × in) and `transformer.<module>.lora_B.weight`
(out × rank). Keys and values are checked against the transformer before anything is loaded, so
a wrong file fails whole, with the offending keys named, and leaves the pipeline as it was.
"""

from __future__ import annotations

import re

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from mosaic_studio.mosaic.lora import tuner_layers

DEFAULT_ADAPTER = "subject"
DEFAULT_WEIGHT_NAME = "mosaic_lora.safetensors"
_KEY = re.compile(r"transformer\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_SHOWN_KEYS = 5  # how many offending keys an error message lists


def lora_key_problems(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module) -> list[str]:
    """Every reason `state_dict` is not a reference LoRA for `transformer` (empty when it is)."""
    problems, shapes = [], {}
    for key, tensor in state_dict.items():
        match = _KEY.fullmatch(key)
        if match is None:
            problems.append(f"{key}: not a 'transformer.<module>.lora_A/lora_B.weight' key")
            continue
        try:
            module = transformer.get_submodule(match["module"])
        except AttributeError:
            problems.append(f"{key}: the transformer has no module {match['module']!r}")
            continue
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if not isinstance(module, torch.nn.Linear):
            problems.append(f"{key}: {match['module']!r} is a {type(module).__name__}, not a Linear layer")
            continue
        shapes.setdefault(match["module"], {})[match["part"]] = (tensor.shape, module)
    for name, parts in shapes.items():
        if set(parts) != {"A", "B"}:
            problems.append(f"{name}: has lora_{''.join(parts)} but not both lora_A and lora_B")
            continue
        (a_shape, linear), (b_shape, _) = parts["A"], parts["B"]
        expected_a, expected_b = (a_shape[0], linear.in_features), (linear.out_features, a_shape[0])
        if tuple(a_shape) != expected_a or tuple(b_shape) != expected_b:
            problems.append(
                f"{name}: lora_A {tuple(a_shape)} / lora_B {tuple(b_shape)} do not fit a "
                f"Linear({linear.in_features} → {linear.out_features}); expected {expected_a} / {expected_b}"
            )
    if not state_dict:
        problems.append("the file holds no tensors")
    return problems


def lora_value_problems(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module) -> list[str]:
    """Every tensor of `state_dict` holding NaN/inf, or values the transformer's dtype cannot hold.

    One NaN in a LoRA factor spreads through every attention row: the pipeline would only ever
    produce black images, so such a file is refused rather than loaded.
    """
    dtype = next(transformer.parameters()).dtype
    problems = []
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue  # integer tensors are refused by their key or shape, and are always finite
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            problems.append(f"{key}: {bad} of {tensor.numel()} values are NaN or infinite")
            continue
        # loading casts to the transformer's dtype: 1e6 is finite in float32 but inf in float16
        cast_bad = int((~torch.isfinite(tensor.to(dtype))).sum())
        if cast_bad:
            problems.append(
                f"{key}: {cast_bad} of {tensor.numel()} values overflow {dtype} (largest {dtype} value: "
                f"{torch.finfo(dtype).max:.4g})"
            )
    return problems


def _listed(problems: list[str]) -> str:
    """The first _SHOWN_KEYS problems, one per indented line, and how many more there are."""
    shown = "".join(f"\n  {problem}" for problem in problems[:_SHOWN_KEYS])
    return shown + (f"\n  … and {len(problems) - _SHOWN_KEYS} more" if len(problems) > _SHOWN_KEYS else "")


class MosaicLoraMixin:
    """`load_mosaic_lora` / `save_mosaic_lora` for a FluxPipeline subclass."""

    def load_mosaic_lora(
        self, path_or_hub_id, weight_name: str | None = None, adapter_name: str = DEFAULT_ADAPTER, **kwargs
    ):
        """Load a reference LoRA (a file, a folder or a hub repo id) and make it the active adapter.

        kwargs go to diffusers' `lora_state_dict` (revision, cache_dir, token, …).
        """
        existing = getattr(self.transformer, "peft_config", {}) or {}
        if adapter_name in existing:
            raise ValueError(f"an adapter named {adapter_name!r} is already loaded; pick another adapter_name")
        state_dict = self.lora_state_dict(path_or_hub_id, weight_name=weight_name, **kwargs)
        problems = lora_key_problems(state_dict, self.transformer)
        if problems:
            raise ValueError(f"{path_or_hub_id!s} is not a MOSAIC LoRA for this transformer:{_listed(problems)}")
        problems = lora_value_problems(state_dict, self.transformer)
        if problems:  # checked before loading, so a refused file leaves the pipeline untouched
            dtype = next(self.transformer.parameters()).dtype
            raise ValueError(
                f"{path_or_hub_id!s} is not a usable MOSAIC LoRA:{_listed(problems)}\n"
                f"every value must be finite and fit {dtype}"
            )
        self.load_lora_weights(state_dict, adapter_name=adapter_name)
        self.set_adapters([adapter_name])

    def save_mosaic_lora(
        self, save_directory, adapter_name: str = DEFAULT_ADAPTER, weight_name: str = DEFAULT_WEIGHT_NAME
    ):
        """Write adapter `adapter_name` in the authors' format (loadable by `load_mosaic_lora`
        and by stock `FluxPipeline.load_lora_weights`)."""
        if not tuner_layers(self.transformer) or adapter_name not in self.transformer.peft_config:
            raise ValueError(f"no adapter named {adapter_name!r} on the transformer")
        layers = get_peft_model_state_dict(self.transformer, adapter_name=adapter_name)
        self.save_lora_weights(save_directory, transformer_lora_layers=layers, weight_name=weight_name)
