"""Tests for the tiny FLUX-architecture pipeline builder (`mosaic_studio.mosaic.tiny`, `.build_tiny`)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers/transformers import: never reach the hub

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.build_tiny import main
from mosaic_studio.mosaic.tiny import (
    BUILD_INFO,
    TinyFluxConfig,
    build_tiny_pipeline,
    dir_size,
    load_vocab,
    tiny_flux_components,
)

ASSET = DEFAULT_MODEL_DIR
PROMPT = "A red cat, and 2 blue dogs on the grass."
MODELS = ("vae", "text_encoder", "text_encoder_2", "transformer")
# The embedded default model (mosaic_studio/assets/tiny-flux, committed and shipped with the app) may take at most
# 30 MiB on disk in all, the project's limit: room for the trained default's architecture (about 17 MiB).
EMBEDDED_DEFAULT_MAX_BYTES = 30 * 2**20


def _load(path: Path) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several stall badly on a busy shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("build") / "tiny-flux", seed=0)


@pytest.fixture(scope="module")
def pipe(built) -> FluxPipeline:
    return _load(built)


def _generate(pipe: FluxPipeline, seed: int, steps: int = 2) -> np.ndarray:
    return pipe(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=steps,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


# ---------------------------------------------------------------- layout and size


def test_build_writes_safetensors_diffusers_layout(built):
    assert (built / "model_index.json").is_file()
    for name in MODELS:
        weights = list((built / name).glob("*.safetensors"))
        assert len(weights) == 1, name
    assert not list(built.rglob("*.bin")), "weights must be safetensors only"
    assert json.loads((built / BUILD_INFO).read_text())["seed"] == 0
    assert dir_size(built) < 10 * 2**20


def test_build_is_byte_deterministic(built, tmp_path):
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_rebuild_replaces_directory_and_cli_reports_size(tmp_path, capsys):
    out = tmp_path / "tiny-flux"
    out.mkdir()
    (out / "stale.txt").write_text("old build")
    assert main(["--out", str(out), "--seed", "3", "--force"]) == 0
    assert "MiB" in capsys.readouterr().out
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-flux"], "temp or backup dir left behind"
    assert json.loads((out / BUILD_INFO).read_text())["seed"] == 3


def test_cli_refuses_to_overwrite_a_trained_model_without_force(tmp_path, capsys):
    trained = tmp_path / "trained"
    shutil.copytree(DEFAULT_MODEL_DIR, trained)
    before = {p.name: p.stat().st_mtime_ns for p in trained.rglob("*")}
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(trained)])
    assert refused.value.code == 2
    message = capsys.readouterr().err
    assert "trained model" in message and "--force" in message
    assert {p.name: p.stat().st_mtime_ns for p in trained.rglob("*")} == before, "the trained model was touched"
    with pytest.raises(SystemExit):
        main([])  # --out is required: no default that points at the shipped model


# ---------------------------------------------------------------- architecture


def test_vae_downsamples_8x(pipe):
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent = pipe.vae.encode(image).latent_dist.mode()
        decoded = pipe.vae.decode(latent).sample
    assert latent.shape == (1, pipe.vae.config.latent_channels, 8, 8)
    assert decoded.shape == image.shape
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.shift_factor is not None and pipe.vae.config.scaling_factor > 0


def test_transformer_takes_packed_2x2_latent_patches(pipe):
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    cfg = TinyFluxConfig()
    assert sum(pipe.transformer.config.axes_dims_rope) == pipe.transformer.config.attention_head_dim
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_2.config.d_model == cfg.joint_attention_dim
    assert pipe.transformer.config.pooled_projection_dim == pipe.text_encoder.config.hidden_size


def test_scheduler_uses_flux_dev_shift(pipe):
    sched = pipe.scheduler.config
    assert (sched.shift, sched.use_dynamic_shifting, sched.base_shift, sched.max_shift) == (3.0, True, 0.5, 1.15)
    assert (sched.base_image_seq_len, sched.max_image_seq_len) == (256, 4096)


# ---------------------------------------------------------------- tokenizers


def test_clip_tokenizer_round_trip(pipe):
    tok = pipe.tokenizer
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids, skip_special_tokens=True) == "a red cat , and 2 blue dogs on the grass ."
    assert tok("a zorblax").input_ids[2] == tok.unk_token_id
    assert tok.unk_token_id != tok.eos_token_id, "an unknown word must not look like the EOS"
    padded = tok(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 == tok.model_max_length
    assert padded[: len(ids)] == ids and set(padded[len(ids) :]) == {tok.eos_token_id}  # CLIP pads with EOS
    long = tok(" ".join(["cat"] * 100), truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[-1] == tok.eos_token_id


def test_t5_tokenizer_round_trip(pipe):
    tok = pipe.tokenizer_2
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT).input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[:3]) == ["a", "red", "cat"]
    assert tok("a zorblax").input_ids == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.eos_token_id]
    padded = tok(PROMPT, padding="max_length", max_length=32).input_ids
    assert padded[len(ids) :] == [0] * (32 - len(ids))


def test_tokenizers_survive_save_and_load(pipe):
    fresh = tiny_flux_components()
    for name in ("tokenizer", "tokenizer_2"):
        assert fresh[name](PROMPT).input_ids == getattr(pipe, name)(PROMPT).input_ids, name


def test_vocab_file_is_clean(tmp_path):
    words = load_vocab()
    assert 200 <= len(words) <= 1000
    bad = tmp_path / "vocab.txt"
    bad.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"vocab.txt:3"):
        load_vocab(bad)


# ---------------------------------------------------------------- text encoders


def test_clip_pooled_output_is_final_norm_state_at_eos(pipe):
    tok, clip = pipe.tokenizer, pipe.text_encoder
    assert clip.config.eos_token_id == tok.eos_token_id != 2  # 2 would switch CLIP to legacy argmax pooling
    assert (clip.config.bos_token_id, clip.config.pad_token_id) == (tok.bos_token_id, tok.pad_token_id)
    prompts = [PROMPT, "a cat"]
    enc = tok(prompts, padding="max_length", max_length=77, return_tensors="pt")
    eos_pos = torch.tensor([len(tok(p).input_ids) - 1 for p in prompts])  # counted, not searched for
    with torch.no_grad():
        out = clip(enc.input_ids, output_hidden_states=True)
        expected = clip.final_layer_norm(out.hidden_states[-1])[torch.arange(2), eos_pos]
    torch.testing.assert_close(out.pooler_output, expected, rtol=0, atol=0)
    assert not torch.allclose(out.pooler_output[1], out.last_hidden_state[1, -1])  # not just "last token"


def test_encode_prompt_shapes(pipe):
    cfg = TinyFluxConfig()
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=32)
    assert prompt_embeds.shape == (1, 32, cfg.joint_attention_dim)
    assert pooled.shape == (1, cfg.pooled_projection_dim)
    assert text_ids.shape == (32, 3)


# ---------------------------------------------------------------- generation and seeds


def test_stock_pipeline_call_is_deterministic(pipe):
    first, second = _generate(pipe, seed=0), _generate(pipe, seed=0)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _generate(pipe, seed=1))


def test_same_seed_same_weights_different_seed_different():
    a, b, c = tiny_flux_components(seed=0), tiny_flux_components(seed=0), tiny_flux_components(seed=1)
    for name in MODELS:
        sa, sb, sc = (x[name].state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), name


def test_saved_weights_equal_in_memory_weights(built):
    fresh = tiny_flux_components(seed=0)
    for name in MODELS:
        saved = load_file(next((built / name).glob("*.safetensors")))
        state = fresh[name].state_dict()
        for key, tensor in saved.items():
            assert torch.equal(tensor, state[key]), f"{name}.{key}"


def test_components_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_flux_components(seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"axes_dims_rope": (4, 6, 4)}, "axes_dims_rope"),
        ({"axes_dims_rope": (5, 5, 6)}, "axes_dims_rope"),
        ({"vae_block_out_channels": (32,)}, "vae_block_out_channels"),
        ({"vae_block_out_channels": (12, 32, 32, 64)}, "vae_block_out_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"clip_num_heads": 3}, "clip_num_heads"),
        ({"t5_num_heads": 5}, "t5_num_heads"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        TinyFluxConfig(**overrides)


# ---------------------------------------------------------------- committed asset


def test_committed_asset_loads_offline_and_generates():
    assert (ASSET / "model_index.json").is_file(), (
        "the embedded default is missing: rebuild it with python -m mosaic_studio.train.build_default"
    )
    pipe = _load(ASSET)
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert pipe.tokenizer(PROMPT).input_ids[-1] == pipe.text_encoder.config.eos_token_id
    assert np.isfinite(_generate(pipe, seed=0, steps=1)).all()
    assert dir_size(ASSET) < EMBEDDED_DEFAULT_MAX_BYTES
