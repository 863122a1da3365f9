"""How faithfully a VAE reconstructs held-out scenes of the synthetic world: PSNR per background type.

    python -m mosaic_studio.evaluation.vae_fidelity --model mosaic_studio/assets/tiny-flux --out docs/vae_fidelity.json
    python -m mosaic_studio.evaluation.vae_fidelity --model runs/default/init \
        --weights runs/default/vae/checkpoints/step-N/model.safetensors

No generator can draw more faithfully than its VAE decodes, so this bounds every image metric of
the embedded default. Each target and each of its references goes through encode → posterior
mode → decode, as generation and training use it (without the latent shift and scale, which
cancel). PSNR is 10·log10(1 / MSE) on [0, 1] pixels, per image; the report gives its mean, a
95 % bootstrap interval of the mean and the minimum, for targets by background type and overall,
and for references.

It also reports the targets' posterior per latent channel, in the transformer's units (after the
latent shift and scale): the spread of the mode, and the posterior's own standard deviation. A
channel whose posterior spread exceeds its mode's carries noise, not the image (the decoder
ignores it), and a transformer trained on posterior samples (`loss.target_latents: sample`) must
fit that noise: the mean posterior variance is the floor it adds to the flow-matching loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import heldout_sample
from mosaic_studio.evaluation.intervals import bootstrap_interval
from mosaic_studio.evaluation.report import shown_path
from mosaic_studio.train.data import to_pixels


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] → (N,) PSNR in dB on [0, 1] pixels; the reconstruction is clamped."""
    error = ((reconstruction.clamp(-1, 1) - original) / 2).pow(2).flatten(1).mean(1)  # (N,)
    return 10 * torch.log10(1 / error.clamp_min(1e-12))


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """encode → posterior mode → decode, in batches; same shape as `pixels`."""
    parts = [vae.decode(vae.encode(chunk).latent_dist.mode()).sample for chunk in pixels.split(batch)]
    return torch.cat(parts)


def summary(values: list[float]) -> dict:
    """Mean, 95 % bootstrap interval of the mean, minimum and count."""
    array = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_interval(array)
    return {
        "mean": round(float(array.mean()), 2),
        "ci95": [round(low, 2), round(high, 2)],
        "min": round(float(array.min()), 2),
        "n": len(array),
    }


@torch.no_grad()
def posterior_spread(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 16) -> dict:
    """Per latent channel, in the transformer's units: the mode's standard deviation over images
    and positions, and the posterior's mean standard deviation; the noise channels (posterior
    wider than mode) and the mean posterior variance."""
    scale = vae.config.scaling_factor
    dists = [vae.encode(chunk).latent_dist for chunk in pixels.split(batch)]
    mode = torch.cat([d.mode() for d in dists]) * scale  # the shift cancels in a spread
    std = torch.cat([d.std for d in dists]) * scale
    mode_std = mode.transpose(0, 1).flatten(1).std(1)
    posterior_std = std.transpose(0, 1).flatten(1).mean(1)
    return {
        "mode_std": [round(v, 3) for v in mode_std.tolist()],
        "posterior_std": [round(v, 3) for v in posterior_std.tolist()],
        "noise_channels": [c for c, (m, p) in enumerate(zip(mode_std, posterior_std)) if p > m],
        "sampled_target_noise": round(std.pow(2).mean().item(), 3),
    }


def vae_fidelity(vae: AutoencoderKL, count: int, target_size: int = 128, ref_size: int = 64) -> dict:
    """PSNR of `count` held-out targets (1–6 subjects, cycled) and of all their references."""
    samples = [heldout_sample(index, 1 + index % 6, target_size, ref_size) for index in range(count)]
    targets = to_pixels([s.target for s in samples])  # (count, 3, H, W)
    references = to_pixels([r.image for s in samples for r in s.references])  # (Σ K, 3, h, w)
    target_psnr = psnr(reconstruct(vae, targets), targets).tolist()
    reference_psnr = psnr(reconstruct(vae, references), references).tolist()
    by_background: dict[str, list[float]] = {}
    for sample, value in zip(samples, target_psnr, strict=True):
        by_background.setdefault(sample.meta["background"], []).append(value)
    return {
        "targets": summary(target_psnr),
        "targets_by_background": {name: summary(values) for name, values in sorted(by_background.items())},
        "references": summary(reference_psnr),
        "target_posterior": posterior_spread(vae, targets),
        "sizes": {"target": target_size, "reference": ref_size},
    }


# A decoder-stage checkpoint holds the trained decoder alone: its encoder is the folder's, frozen.
FROZEN_BY_DECODER_STAGE = ("encoder.", "quant_conv.")


def load_vae(model: str, weights: str | None) -> AutoencoderKL:
    """The VAE of a pipeline folder, optionally with a training checkpoint's weights on top: a vae
    stage's (every weight) or a decoder stage's (every weight but the encoder's)."""
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    if weights:
        state = {key.removeprefix("model."): value for key, value in load_file(weights).items()}
        missing, unexpected = vae.load_state_dict(state, strict=False)
        decoder_only = all(name.startswith(FROZEN_BY_DECODER_STAGE) for name in missing)
        if unexpected or (missing and not decoder_only):
            missing = [name for name in missing if not name.startswith(FROZEN_BY_DECODER_STAGE)] or missing
            raise ValueError(
                f"{weights} does not match the VAE of {model}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    return vae.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="pipeline folder whose vae/ is measured")
    parser.add_argument("--weights", help="a training checkpoint's model.safetensors to load into that VAE")
    parser.add_argument("--count", type=int, default=48, help="held-out targets (their references come too)")
    parser.add_argument("--out", help="write the report here as JSON")
    args = parser.parse_args(argv)
    report = {
        "model": shown_path(args.model),
        "weights": args.weights,
        **vae_fidelity(load_vae(args.model, args.weights), args.count),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
