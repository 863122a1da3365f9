"""Shared tiny models for the tests: FLUX architecture, random weights, CPU, seconds."""

import os
import sqlite3

# Before any Hugging Face import: huggingface_hub reads this once, when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a model hub

import pytest
import torch
from diffusers import FluxTransformer2DModel
from train_fixtures import TINY

from mosaic_studio.mosaic.attention import install_mosaic_processors
from mosaic_studio.mosaic.lora import reference_lora_config
from mosaic_studio.mosaic.tiny import build_tiny_pipeline

TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=12,
    axes_dims_rope=(4, 6, 6),
)


def make_transformer(
    seed: int = 0, guidance_embeds: bool = False, mosaic: bool = True, **overrides
) -> FluxTransformer2DModel:
    """mosaic: with the MOSAIC attention processors installed; False keeps diffusers' own."""
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": guidance_embeds, **overrides}).eval()
    if mosaic:
        install_mosaic_processors(model)
    return model


def add_random_lora(transformer, seed: int = 1, rank: int = 4, adapter_name: str = "default") -> None:
    """A reference LoRA with non-zero B, so it really changes what it touches."""
    transformer.add_adapter(reference_lora_config(rank=rank), adapter_name=adapter_name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


def store_dump(path) -> list[str]:
    """Every row of every table of a SQLite store, schema included: equal dumps, unchanged store."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.fixture
def tiny_transformer():
    return make_transformer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny pipeline folder for the training tests (tests/train_fixtures.py: TINY)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", TINY, seed=0)
