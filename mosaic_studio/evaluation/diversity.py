"""Generation diversity (the paper's Table 15): mean pairwise perceptual distance across seeds.

Definition: for each test case, fix the prompt and the references, generate N images with N
random seeds, and report the mean over all unordered pairs (i < j) of the perceptual distance
d(image_i, image_j); higher = more diverse. `mean_pairwise_distance` computes it for one case.

Two distances:

- `LpipsDistance`: the paper's LPIPS (Zhang et al. 2018, AlexNet, v0.1). It needs the optional
  `lpips` package, which is not in requirements.txt, and its AlexNet trunk is downloaded by
  torchvision from download.pytorch.org on first use, so it needs internet once:

      pip install lpips torchvision
      python -m mosaic_studio.evaluation.diversity --lpips seed0.png seed1.png seed2.png seed3.png

- `FeatureDistance`: an offline LPIPS-style distance. Per layer l with features f_l (C, H, W),
  unit-normalise each spatial position's channel vector, take the squared difference summed over
  channels, average over space; then average over layers:

      d(x, y) = 1/L sum_l 1/(H_l W_l) sum_hw || f_l(x)_hw / |f_l(x)_hw| - f_l(y)_hw / |f_l(y)_hw| ||^2

  This is LPIPS's formula with uniform layer weights instead of its learned linear weights (the
  LPIPS paper's "baseline" variant, up to the constant 1/L). Why a fallback: the LPIPS weights are
  not reachable offline, and the default model's own VAE encoder is a perceptual network trained
  here, so its `down_blocks` activations serve as the feature layers:

      python -m mosaic_studio.evaluation.diversity --vae mosaic_studio/assets/tiny-flux seed0.png seed1.png seed2.png

Absolute values of the two distances, or of FeatureDistance over different VAEs, are not
comparable with each other nor with the paper's LPIPS numbers: only comparisons within one run
(same distance, same encoder, e.g. MOSAIC vs. a baseline) are meaningful.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch
from PIL import Image

# LPIPS's `normalize_tensor` epsilon: keeps an all-zero feature vector finite (it normalises to 0).
NORM_EPS = 1e-10
# Images per encoder pass in `FeatureDistance.pairwise`: bounds memory at high resolution
# (FLUX's VAE keeps ~0.3 GB of down-block activations per 1024 px image).
DEFAULT_BATCH_SIZE = 4
MIN_IMAGES = 2


def mean_pairwise_distance(images: list, distance) -> float:
    """Mean over all unordered pairs (i < j) of distance(images[i], images[j]) (Table 15).

    Uses `distance.pairwise(images)` (an (N, N) matrix) when the distance has it, so each image is
    encoded once; otherwise calls `distance(a, b)` for every pair.
    """
    check_images(images)
    pairs = list(itertools.combinations(range(len(images)), 2))
    if hasattr(distance, "pairwise"):
        matrix = distance.pairwise(images)
        values = [float(matrix[i, j]) for i, j in pairs]
    else:
        values = [float(distance(images[i], images[j])) for i, j in pairs]
    return sum(values) / len(values)


def check_images(images: list) -> None:
    """Raise ValueError unless there are at least 2 images, all of the same size."""
    if len(images) < MIN_IMAGES:
        raise ValueError(f"pairwise distance needs at least {MIN_IMAGES} images, got {len(images)}")
    sizes = [_image_size(image) for image in images]
    if len(set(sizes)) > 1:
        raise ValueError(f"pairwise distance needs images of one size (height, width), got {sizes}")


def _image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image or an (H, W, ...) array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(np.shape(image)[:2])


def to_unit_range(image) -> torch.Tensor:
    """A PIL image or a uint8 (H, W, 3) array as a float (1, 3, H, W) tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a PIL image or a uint8 (H, W, 3) array, got {_describe(image)}")
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)  # (3, H, W)
    return (pixels.float() / 127.5 - 1.0).unsqueeze(0)  # (1, 3, H, W)


def _describe(image) -> str:
    if isinstance(image, np.ndarray):
        return f"{image.dtype} array of shape {image.shape}"
    return type(image).__name__


class FeatureDistance:
    """LPIPS-style distance with uniform layer weights over the outputs of `layers` (modules inside
    `encoder`, captured with forward hooks). See the module docstring for the formula."""

    def __init__(self, encoder: torch.nn.Module, layers: list, batch_size: int = DEFAULT_BATCH_SIZE):
        if not layers:
            raise ValueError("FeatureDistance needs at least one layer to compare")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.layers = list(layers)
        self.batch_size = batch_size

    @classmethod
    def from_vae(cls, vae, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureDistance:
        """The default: a diffusers AutoencoderKL's encoder, compared at its `down_blocks` outputs."""
        return cls(vae.encoder, list(vae.encoder.down_blocks), batch_size=batch_size)

    @torch.no_grad()
    def features(self, images: list) -> list[torch.Tensor]:
        """Unit-normalised features per layer, each (N, C_l, H_l, W_l) float32: one pass per image.

        The hooks live only inside this call, so the encoder (e.g. the pipeline's VAE) is untouched
        otherwise."""
        param = next(self.encoder.parameters())
        pixels = torch.cat([to_unit_range(image) for image in images])  # (N, 3, H, W)
        captured: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda module, inputs, output: captured.append(output)) for layer in self.layers
        ]
        per_batch = []
        try:
            for batch in pixels.split(self.batch_size):
                captured.clear()
                self.encoder(batch.to(device=param.device, dtype=param.dtype))
                if len(captured) != len(self.layers):
                    raise RuntimeError(f"expected {len(self.layers)} hooked outputs, got {len(captured)}")
                per_batch.append([_unit_normalise(f.float()) for f in captured])
        finally:
            for hook in hooks:
                hook.remove()
        return [torch.cat(layer) for layer in zip(*per_batch)]

    @torch.no_grad()
    def pairwise(self, images: list) -> torch.Tensor:
        """The (N, N) distance matrix (float64, CPU; zero diagonal, symmetric)."""
        check_images(images)
        feats = self.features(images)
        n = len(images)
        matrix = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n - 1):
            row = sum(_layer_distance(f[i : i + 1], f[i + 1 :]) for f in feats) / len(feats)  # (n - i - 1,)
            matrix[i, i + 1 :] = row.double().cpu()
            matrix[i + 1 :, i] = matrix[i, i + 1 :]
        return matrix

    def __call__(self, a, b) -> float:
        return float(self.pairwise([a, b])[0, 1])


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Each spatial position's channel vector divided by its norm: (N, C, H, W) -> same."""
    norm = features.pow(2).sum(dim=1, keepdim=True).sqrt()  # (N, 1, H, W)
    return features / (norm + NORM_EPS)


def _layer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared difference summed over channels, averaged over space: (1|M, C, H, W) x2 -> (M,)."""
    return (a - b).pow(2).sum(dim=1).mean(dim=(1, 2))


class LpipsDistance:
    """The paper's LPIPS (package `lpips`, AlexNet, v0.1). Construction fails with a clear error
    when the package is missing or its weights cannot be loaded (they need internet once)."""

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu"):
        try:
            import lpips
        except ImportError as error:
            raise ImportError(
                "LpipsDistance needs the optional `lpips` package (not in requirements.txt): "
                "pip install lpips torchvision. Its AlexNet weights are downloaded on first use, "
                "which needs internet; offline, use FeatureDistance.from_vae(pipe.vae)."
            ) from error
        try:
            self.model = lpips.LPIPS(net=net, verbose=False).eval().to(device)
        except Exception as error:  # torchvision's weight download fails offline
            raise RuntimeError(
                f"LPIPS ({net}) weights could not be loaded: {error}. torchvision downloads them from "
                "download.pytorch.org on first use, which needs internet; offline, use "
                "FeatureDistance.from_vae(pipe.vae)."
            ) from error
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, a, b) -> float:
        check_images([a, b])
        x, y = (to_unit_range(image).to(self.device) for image in (a, b))  # LPIPS expects [-1, 1]
        return float(self.model(x, y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_studio.evaluation.diversity",
        description="Mean pairwise distance of images generated with different seeds.",
    )
    metric = parser.add_mutually_exclusive_group(required=True)
    metric.add_argument("--lpips", action="store_true", help="the paper's LPIPS (needs `lpips` and internet once)")
    metric.add_argument("--vae", metavar="MODEL", help="FeatureDistance over MODEL's VAE encoder (diffusers dir)")
    parser.add_argument("images", nargs="+", help="image files: one test case, one image per seed")
    args = parser.parse_args(argv)
    images = [Image.open(path).convert("RGB") for path in args.images]
    if args.lpips:
        distance = LpipsDistance()
    else:
        from diffusers import AutoencoderKL

        distance = FeatureDistance.from_vae(AutoencoderKL.from_pretrained(args.vae, subfolder="vae").eval())
    try:
        print(f"mean pairwise distance over {len(images)} images: {mean_pairwise_distance(images, distance):.6f}")
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
