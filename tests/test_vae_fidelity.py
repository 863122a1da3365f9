"""VAE fidelity report: PSNR against a float64 hand computation, and the report on the default VAE."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.vae_fidelity import load_vae, posterior_spread, psnr, summary, vae_fidelity


def test_psnr_equals_a_float64_computation_on_unit_range_pixels():
    rng = np.random.default_rng(0)
    original = rng.uniform(-1, 1, (3, 3, 8, 8))
    noisy = original + rng.normal(0, 0.1, original.shape)
    unit = lambda a: (np.clip(a, -1, 1) + 1) / 2  # noqa: E731
    expected = [10 * np.log10(1 / np.mean((unit(n) - unit(o)) ** 2)) for n, o in zip(noisy, original)]
    got = psnr(torch.from_numpy(noisy).float(), torch.from_numpy(original).float())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_a_uniform_error_of_a_tenth_is_20_db():
    original = torch.zeros(1, 3, 4, 4)
    assert psnr(original + 0.2, original).item() == pytest.approx(20.0, abs=1e-4)  # 0.1 on [0, 1]


def test_summary_interval_holds_the_mean():
    report = summary([20.0, 22.0, 30.0, 31.0])
    assert report["n"] == 4 and report["min"] == 20.0 and report["mean"] == 25.75
    assert report["ci95"][0] <= report["mean"] <= report["ci95"][1]


def test_report_on_the_default_vae_covers_targets_references_and_backgrounds():
    report = vae_fidelity(load_vae(str(DEFAULT_MODEL_DIR), None), count=6)
    assert report["targets"]["n"] == 6
    assert report["references"]["n"] == sum(1 + i % 6 for i in range(6))  # every reference of every scene
    assert sum(b["n"] for b in report["targets_by_background"].values()) == 6
    assert 5 < report["targets"]["mean"] < 60


def test_checkpoint_weights_of_another_vae_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.not_a_vae_key": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="does not match the VAE"):
        load_vae(str(DEFAULT_MODEL_DIR), str(tmp_path / "model.safetensors"))
    assert isinstance(load_vae(str(DEFAULT_MODEL_DIR), None), AutoencoderKL)


def test_a_decoder_stage_checkpoint_loads_over_the_folders_encoder(tmp_path):
    from safetensors.torch import save_file

    reference = AutoencoderKL.from_pretrained(str(DEFAULT_MODEL_DIR), subfolder="vae").state_dict()
    decoder = {f"model.{k}": v + 1 for k, v in reference.items() if not k.startswith(("encoder.", "quant_conv."))}
    save_file(decoder, tmp_path / "model.safetensors")
    loaded = load_vae(str(DEFAULT_MODEL_DIR), str(tmp_path / "model.safetensors")).state_dict()
    for name, value in loaded.items():
        expected = reference[name] + (0 if name.startswith(("encoder.", "quant_conv.")) else 1)
        assert value.equal(expected), name
    # without one decoder weight it is neither a whole VAE nor a decoder: refused, naming it
    dropped = sorted(decoder)[0]
    save_file({k: v for k, v in decoder.items() if k != dropped}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=dropped.removeprefix("model.")):
        load_vae(str(DEFAULT_MODEL_DIR), str(tmp_path / "partial.safetensors"))


@torch.no_grad()
def test_posterior_noise_matches_a_monte_carlo_estimate_from_two_samples():
    """The mean posterior variance, against half the mean squared gap of two independent posterior
    samples (each at the transformer's scale), a float64 estimate that never reads the std."""
    torch.manual_seed(0)
    vae = load_vae(str(DEFAULT_MODEL_DIR), None)
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    report = posterior_spread(vae, pixels)
    dist = vae.encode(pixels).latent_dist
    scale = vae.config.scaling_factor
    gaps = []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        gaps.append(((dist.sample(g) - dist.sample(g)).double() * scale).pow(2).mean().item() / 2)
    assert report["sampled_target_noise"] == pytest.approx(np.mean(gaps), rel=0.02)
    mode = (dist.mode().double() * scale).numpy()
    expected = [mode[:, c].std(ddof=1) for c in range(mode.shape[1])]
    np.testing.assert_allclose(report["mode_std"], expected, atol=2e-3)
    # A noise channel is one whose posterior is wider than its mode's spread.
    wide = [c for c, (m, p) in enumerate(zip(report["mode_std"], report["posterior_std"])) if p > m]
    assert report["noise_channels"] == wide and len(report["posterior_std"]) == vae.config.latent_channels
