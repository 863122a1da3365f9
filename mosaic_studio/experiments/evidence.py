"""Evidence for the embedded default: training curves, attention PCK on held-out samples
(trained LoRA versus the same base with a zero LoRA), and a grid of held-out generations.

    python -m mosaic_studio.experiments.evidence --model mosaic_studio/assets/tiny-flux --runs runs/default --out docs
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from mosaic_studio.evaluation.evaluate import EVAL_SEED, heldout_sample, probe_hits
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.train.config import LORA_CONFIG, load_config

GRID_COUNTS = (1, 2, 3, 4, 6)


def plot_curves(runs: Path, out: Path) -> None:
    panels = [
        ("vae", ["loss"]),
        ("decoder", ["loss"]),
        ("base", ["loss"]),
        ("refine", ["loss"]),
        ("lora", ["diffusion", "scal", "mdl"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4))
    for ax, (stage, columns) in zip(axes, panels):
        path = runs / stage / "log.csv"
        if not path.exists():
            ax.set_title(f"{stage}: no log")
            continue
        rows = list(csv.DictReader(path.open()))
        steps = [int(r["step"]) for r in rows]
        for column in columns:
            values = np.array([float(r[column]) for r in rows])
            window = max(1, len(values) // 30)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, label=column)
        targets = {"base": "posterior samples", "refine": "posterior mode"}.get(stage)  # loss floors differ
        ax.set_title(f"{stage} stage" + (f" ({targets})" if targets else ""))
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


@torch.no_grad()
def pck(pipe, config, num_samples: int) -> dict:
    """Attention PCK@1 token of the probe on held-out samples, with the LoRA on and off."""
    rng = np.random.default_rng(EVAL_SEED)
    samples = [
        heldout_sample(i, None, config.data.target_size, config.data.ref_size, pipe.pixels_per_token)
        for i in range(num_samples)
    ]
    seeds = [rng.integers(2**32) for _ in samples]  # the same points for both rows
    result = {}
    for name, lora_on in (("trained LoRA", True), ("zero LoRA (base)", False)):
        pipe.enable_lora() if lora_on else pipe.disable_lora()
        counts = [probe_hits(pipe, sample, np.random.default_rng(seed)) for sample, seed in zip(samples, seeds)]
        result[name] = sum(h for h, _ in counts) / sum(n for _, n in counts)
    pipe.enable_lora()
    result["points"] = sum(n for _, n in counts)
    result["samples"] = num_samples
    return result


@torch.no_grad()
def grid(pipe, config, out: Path, steps: int | None, guidance: float | None) -> None:
    """References | generation | true target for held-out scenes of 1, 2, 3, 4 and 6 subjects;
    steps and guidance None: the model's native ones (`MosaicPipeline.native_settings`)."""
    side = config.data.target_size
    rows = []
    for k in GRID_COUNTS:
        sample = heldout_sample(10_000 + k, k, side, config.data.ref_size, pipe.pixels_per_token)
        refs = [Image.fromarray(r.image) for r in sample.references]
        image = pipe(
            sample.caption,
            reference_images=refs,
            height=side,
            width=side,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(k),
        ).images[0]
        tiles = [r.resize((side, side), Image.Resampling.NEAREST) for r in refs]
        tiles += [Image.new("RGB", (side, side), "white")] * (max(GRID_COUNTS) - k)
        rows.append(tiles + [image, Image.fromarray(sample.target)])
    canvas = Image.new("RGB", (side * len(rows[0]), side * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tile, (c * side, r * side))
    canvas.save(out / "heldout_grid.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mosaic_studio/assets/tiny-flux")
    parser.add_argument("--runs", default="runs/default")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--steps", type=int, help="grid denoising steps (default: the model's native ones)")
    parser.add_argument("--guidance", type=float, help="grid guidance (default: the model's native one)")
    args = parser.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(LORA_CONFIG)
    pipe = load_pipeline(args.model, device="cpu")
    plot_curves(runs, out)
    grid(pipe, config, out, args.steps, args.guidance)
    scores = pck(pipe, config, args.samples)
    (out / "attention_pck.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
