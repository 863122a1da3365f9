"""Generation diversity (Table 15): the offline LPIPS-style distance on the tiny model's VAE."""

import sys
import types

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.diversity import FeatureDistance, LpipsDistance, main, mean_pairwise_distance

SIZE = 32  # pixels a side: 3 down-block levels of the tiny VAE, fast on a CPU


@pytest.fixture(scope="module")
def vae():
    return AutoencoderKL.from_pretrained(str(DEFAULT_MODEL_DIR), subfolder="vae").eval()


@pytest.fixture(scope="module")
def distance(vae):
    return FeatureDistance.from_vae(vae)


def noise(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def flat(value: int = 128, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def naive_distance(vae, a: np.ndarray, b: np.ndarray) -> float:
    """The formula written out in float64 on features hooked here, independently of the module."""
    feats = {}
    hooks = [
        block.register_forward_hook(lambda m, i, out, k=k: feats.setdefault(k, []).append(out))
        for k, block in enumerate(vae.encoder.down_blocks)
    ]
    with torch.no_grad():
        for image in (a, b):
            vae.encoder(torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1)
    for hook in hooks:
        hook.remove()
    layers = []
    for fa, fb in feats.values():
        fa, fb = fa[0].double(), fb[0].double()  # (C, H, W)
        _, h, w = fa.shape
        total = 0.0
        for y in range(h):
            for x in range(w):
                ua = fa[:, y, x] / (fa[:, y, x].norm() + 1e-10)
                ub = fb[:, y, x] / (fb[:, y, x].norm() + 1e-10)
                total += float(((ua - ub) ** 2).sum())
        layers.append(total / (h * w))
    return sum(layers) / len(layers)


def test_identical_images_have_zero_distance(distance):
    image = noise(0)
    assert distance(image, image.copy()) < 1e-7
    assert distance(Image.fromarray(image), image) < 1e-7  # PIL and arrays convert alike


def test_distance_is_symmetric_with_zero_diagonal(distance):
    matrix = distance.pairwise([noise(0), noise(1), flat()])
    assert torch.equal(matrix, matrix.T)
    assert torch.all(matrix.diagonal() == 0)
    assert distance(noise(0), noise(1)) == pytest.approx(distance(noise(1), noise(0)), abs=1e-7)


def test_matches_naive_float64_formula(vae, distance):
    a, b = noise(0), flat(200)
    assert distance(a, b) == pytest.approx(naive_distance(vae, a, b), abs=1e-6)


def test_mean_pairwise_is_mean_of_pair_distances(distance):
    images = [noise(0), noise(1), flat(90)]
    pairs = [distance(images[0], images[1]), distance(images[0], images[2]), distance(images[1], images[2])]
    assert mean_pairwise_distance(images, distance) == pytest.approx(sum(pairs) / 3, abs=1e-7)


def test_pairwise_encodes_each_image_once(vae):
    calls = []
    hook = vae.encoder.register_forward_hook(lambda m, i, out: calls.append(i[0].shape[0]))
    try:
        FeatureDistance.from_vae(vae, batch_size=2).pairwise([noise(s) for s in range(5)])
    finally:
        hook.remove()
    assert sum(calls) == 5 and max(calls) <= 2
    assert not vae.encoder.down_blocks[0]._forward_hooks  # no hook left behind on the pipeline's VAE


def test_mean_pairwise_falls_back_to_pair_calls():
    images = [flat(0), flat(1), flat(3)]
    mean = mean_pairwise_distance(images, lambda a, b: abs(int(a[0, 0, 0]) - int(b[0, 0, 0])))
    assert mean == pytest.approx((1 + 3 + 2) / 3)


def test_more_different_images_are_farther(distance):
    base = flat(128)
    perturbed = np.clip(base.astype(int) + np.random.default_rng(0).integers(-3, 4, base.shape), 0, 255)
    assert distance(base, noise(0)) > distance(base, perturbed.astype(np.uint8)) > 0


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "at least 2 images, got 0"),
        ([flat()], "at least 2 images, got 1"),
        ([flat(), flat(size=SIZE + 8)], "one size"),
    ],
)
def test_bad_image_lists_fail_clearly(distance, images, message):
    with pytest.raises(ValueError, match=message):
        mean_pairwise_distance(images, distance)
    if len(images) == 2:
        with pytest.raises(ValueError, match=message):
            distance(*images)


def test_float_arrays_are_refused(distance):
    with pytest.raises(ValueError, match="uint8"):
        distance(flat().astype(np.float32), flat().astype(np.float32))


def test_lpips_missing_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` raises ImportError
    with pytest.raises(ImportError, match="pip install lpips.*internet"):
        LpipsDistance()


def test_lpips_weights_unreachable_fail_clearly(monkeypatch):
    def offline(**kwargs):
        raise OSError("download failed")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=offline))
    with pytest.raises(RuntimeError, match="could not be loaded: download failed.*internet"):
        LpipsDistance()


def test_lpips_gets_images_in_unit_range(monkeypatch):
    seen = []

    class FakeLpips(torch.nn.Module):
        def forward(self, x, y):
            seen.append((x.min().item(), x.max().item(), tuple(y.shape)))
            return (x - y).abs().mean()

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=lambda **kwargs: FakeLpips()))
    assert LpipsDistance()(flat(0), flat(255)) == pytest.approx(2.0)
    assert seen == [(-1.0, -1.0, (1, 3, SIZE, SIZE))]


def test_cli_prints_mean_distance(tmp_path, capsys):
    paths = [tmp_path / f"seed{seed}.png" for seed in range(2)]
    for seed, path in enumerate(paths):
        Image.fromarray(noise(seed)).save(path)
    assert main(["--vae", str(DEFAULT_MODEL_DIR), *map(str, paths)]) == 0
    assert "mean pairwise distance over 2 images" in capsys.readouterr().out
