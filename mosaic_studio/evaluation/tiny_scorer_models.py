"""Tiny random stand-ins for the published-metric models, saved like the real ones.

`save_tiny_scorer_models(out)` writes a CLIP folder (CLIPModel + image processor + tokenizer)
and a DINO folder (ViTModel + image processor), both loadable with `from_pretrained`, so
`PublishedScorer(clip_model=clip_dir, dino_model=dino_dir)` runs offline on the same code path
as `openai/clip-vit-base-patch32` and `facebook/dino-vits16`. The weights are random: the
numbers test the plumbing, never image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, ViTConfig, ViTImageProcessorPil, ViTModel

from mosaic_studio.evaluation.published_metrics import DINO_CROP, IMAGENET_MEAN, IMAGENET_STD
from mosaic_studio.mosaic.tiny import build_clip_tokenizer, load_vocab

CLIP_IMAGE_SIZE = 32  # the real checkpoints use 224; 32 with 8-pixel patches = 16 tokens, fast
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, as in its processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(vocab_size: int, bos: int, eos: int, pad: int) -> CLIPModel:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )  # token ids from the tokenizer: pooling finds the EOS by id
    vision = dict(
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def tiny_dino() -> ViTModel:
    # image_size = the published DINO crop, so `dino_pixels` feeds it unchanged; 32-pixel patches keep it small.
    return ViTModel(
        ViTConfig(
            image_size=DINO_CROP,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
    )


def save_tiny_scorer_models(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `<out_dir>/clip` and `<out_dir>/dino`; same seed, same weights. Returns both paths."""
    out = Path(out_dir)
    clip_dir, dino_dir = out / "clip", out / "dino"
    tokenizer = build_clip_tokenizer(load_vocab())
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        clip = tiny_clip(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        dino = tiny_dino()
    clip.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(clip_dir)
    dino.save_pretrained(dino_dir)
    # Unused by PublishedScorer (it applies the published DINO transform itself); saved so the
    # folder is complete like the hub's, for other tools that read it.
    ViTImageProcessorPil(
        size={"height": DINO_CROP, "width": DINO_CROP}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    ).save_pretrained(dino_dir)
    return clip_dir, dino_dir
