"""Native settings (mosaic/native.py): the settings a model folder records, what a call that
gives none uses, the record the trainer and the default's build write, and the shipped one."""

import json
import shutil

import pytest
import torch
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import Settings as EvaluatedAt
from mosaic_studio.mosaic import native
from mosaic_studio.mosaic.lora_io import DEFAULT_ADAPTER
from mosaic_studio.mosaic.native import (
    FLUX_DEV_SETTINGS,
    NATIVE_SETTINGS_FILE,
    NativeSettings,
    read_native_settings,
    write_native_settings,
    write_trained_settings,
)
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.mosaic.tiny import TinyFluxConfig, tiny_flux_components
from mosaic_studio.train.build_default import write_default_settings
from mosaic_studio.train.config import CONFIGS_DIR, load_config
from mosaic_studio.train.stages import LoraStage

# Not FLUX's and not each other's, so a value taken from the wrong place shows. The tiny test
# model has 16 px tokens: every size is whole tokens.
RECORDED = NativeSettings(height=48, width=80, reference_size=32, num_inference_steps=3, guidance_scale=2.5)
REFERENCE = Image.new("RGB", (40, 40), (200, 30, 30))


class Stop(Exception):
    """Raised from the step callback: the first step shows every setting of the call."""


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """A saved tiny guidance-distilled pipeline (its guidance reaches the denoiser as a tensor) with no record."""
    folder = tmp_path_factory.mktemp("plain") / "pipe"
    MosaicPipeline(**tiny_flux_components(TinyFluxConfig(guidance_embeds=True))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def recorded_dir(plain_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recorded") / "pipe"
    shutil.copytree(plain_dir, folder)
    write_native_settings(folder, RECORDED)
    return folder


def observed_call(pipe, monkeypatch, stop_after_first_step=False, **kwargs):
    """Runs `pipe` with one reference; returns what the call used: output, steps run, the
    scheduler's step count, target tokens, guidance values and the reference size."""
    seen = {"steps": 0, "guidance": set(), "reference_size": None}
    encode, denoise = pipe.encode_references, pipe._denoise

    def spy_encode(images, size, *args, **kw):
        seen["reference_size"] = size
        return encode(images, size, *args, **kw)

    def spy_denoise(**kw):
        seen["guidance"].update(kw["guidance"].tolist())
        seen["tokens"] = kw["latents"].shape[1]
        return denoise(**kw)

    def callback(_pipe, i, _t, _tensors):
        seen["steps"] += 1
        seen["scheduled"] = len(_pipe.scheduler.timesteps)
        if stop_after_first_step:
            raise Stop
        return {}

    monkeypatch.setattr(pipe, "encode_references", spy_encode)
    monkeypatch.setattr(pipe, "_denoise", spy_denoise)
    try:
        seen["out"] = pipe(
            "a red box",
            reference_images=[REFERENCE],
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=callback,
            **kwargs,
        )
    except Stop:
        pass
    return seen


def test_a_call_that_gives_nothing_uses_the_folders_record(recorded_dir, monkeypatch):
    pipe = MosaicPipeline.from_pretrained(recorded_dir)
    assert pipe.native_settings == RECORDED
    seen = observed_call(pipe, monkeypatch)
    assert seen["out"].images[0].size == (RECORDED.width, RECORDED.height)
    assert seen["steps"] == seen["scheduled"] == RECORDED.num_inference_steps
    assert seen["guidance"] == {RECORDED.guidance_scale}
    assert seen["reference_size"] == RECORDED.reference_size


def test_explicit_arguments_win_over_the_record(recorded_dir, monkeypatch):
    pipe = MosaicPipeline.from_pretrained(recorded_dir)
    given = dict(height=32, width=64, num_inference_steps=2, guidance_scale=4.0, reference_size=64)
    seen = observed_call(pipe, monkeypatch, **given)
    assert seen["out"].images[0].size == (64, 32)
    assert seen["steps"] == seen["scheduled"] == 2
    assert seen["guidance"] == {4.0} and seen["reference_size"] == 64


def test_without_a_record_a_call_uses_flux_dev_settings(plain_dir, monkeypatch):
    pipe = MosaicPipeline.from_pretrained(plain_dir)
    assert pipe.native_settings == FLUX_DEV_SETTINGS
    # One step at 512 × 512 is enough to see every setting; the other 27 would only cost time.
    seen = observed_call(pipe, monkeypatch, stop_after_first_step=True)
    token = pipe.pixels_per_token
    assert seen["tokens"] == (512 // token) ** 2 and seen["scheduled"] == 28
    assert seen["guidance"] == {3.5} and seen["reference_size"] == 512


def test_the_reference_size_is_never_larger_than_the_output(recorded_dir, monkeypatch):
    pipe = MosaicPipeline.from_pretrained(recorded_dir)
    pipe.native_settings = NativeSettings(
        height=48, width=80, reference_size=512, num_inference_steps=1, guidance_scale=1
    )
    seen = observed_call(pipe, monkeypatch)
    assert seen["reference_size"] == 48  # the output's shorter side, as before records existed


def test_native_settings_must_be_a_record():
    pipe = MosaicPipeline(**tiny_flux_components())
    assert pipe.native_settings == FLUX_DEV_SETTINGS  # built in memory: no folder, FLUX's
    with pytest.raises(TypeError, match="must be a mosaic.native.NativeSettings, got dict"):
        pipe.native_settings = RECORDED.as_dict()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not a JSON object"),
        ("[128, 128]", "expected a JSON object"),
        (json.dumps({**RECORDED.as_dict(), "steps": 3}), r"unknown \['steps'\]"),
        (json.dumps({k: v for k, v in RECORDED.as_dict().items() if k != "width"}), r"missing \['width'\]"),
        (json.dumps({**RECORDED.as_dict(), "height": True}), "height must be a positive integer, got True"),
        (json.dumps({**RECORDED.as_dict(), "reference_size": 0}), "reference_size must be a positive integer"),
        (json.dumps({**RECORDED.as_dict(), "num_inference_steps": 2.5}), "num_inference_steps must be a positive"),
        (json.dumps({**RECORDED.as_dict(), "guidance_scale": "3.5"}), "guidance_scale must be a finite number"),
        (
            '{"height": 48, "width": 80, "reference_size": 32, "num_inference_steps": 3, "guidance_scale": NaN}',
            "finite",
        ),
        (json.dumps({**RECORDED.as_dict(), "guidance_scale": -1}), "guidance_scale must be >= 0"),
    ],
)
def test_a_bad_record_is_refused_by_name(tmp_path, text, message):
    (tmp_path / NATIVE_SETTINGS_FILE).write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_native_settings(tmp_path)
    assert NATIVE_SETTINGS_FILE in str(error.value)  # names the file, not just the problem


def test_a_bad_record_fails_from_pretrained_before_the_weights_load(recorded_dir, tmp_path, monkeypatch):
    folder = tmp_path / "pipe"
    shutil.copytree(recorded_dir, folder)
    (folder / NATIVE_SETTINGS_FILE).write_text(json.dumps({**RECORDED.as_dict(), "width": -8}))
    loads = []
    monkeypatch.setattr("diffusers.DiffusionPipeline.from_pretrained", lambda *a, **k: loads.append(1))
    with pytest.raises(ValueError, match="width must be a positive integer, got -8"):
        MosaicPipeline.from_pretrained(folder)
    assert loads == []


def test_no_record_in_a_hub_id_or_a_bare_folder(tmp_path):
    assert read_native_settings("black-forest-labs/FLUX.1-dev") is None
    assert read_native_settings(tmp_path) is None
    assert native.native_settings_of(tmp_path) == FLUX_DEV_SETTINGS == NativeSettings(512, 512, 512, 28, 3.5)


def test_a_trained_checkpoint_records_its_sizes_and_its_parents_sampling(recorded_dir, tmp_path):
    write_trained_settings(tmp_path, target_size=96, reference_size=48, trained_from=recorded_dir)
    assert read_native_settings(tmp_path) == NativeSettings(96, 96, 48, RECORDED.num_inference_steps, 2.5)
    write_trained_settings(tmp_path, target_size=512, reference_size=512, trained_from="black-forest-labs/FLUX.1-dev")
    assert read_native_settings(tmp_path) == FLUX_DEV_SETTINGS


def test_the_lora_stage_export_writes_the_record(recorded_dir, tmp_path):
    config = load_config(
        CONFIGS_DIR / "default_lora.yaml", [f"model.pretrained={recorded_dir}", f"run.output_dir={tmp_path / 'run'}"]
    )
    stage = LoraStage(config)
    pipe = MosaicPipeline.from_pretrained(recorded_dir)
    stage.trainable(pipe)  # adds the adapter the export saves
    out = tmp_path / "exported"
    stage.export(pipe, pipe.transformer, out, source=None)
    size, ref = config.data.target_size, config.data.ref_size
    assert read_native_settings(out) == NativeSettings(size, size, ref, RECORDED.num_inference_steps, 2.5)
    assert MosaicPipeline.from_pretrained(out).get_active_adapters() == [DEFAULT_ADAPTER]  # and its LoRA with it


def test_the_shipped_default_records_how_it_was_trained_and_evaluated(tmp_path):
    shipped = read_native_settings(DEFAULT_MODEL_DIR)
    lora = load_config(CONFIGS_DIR / "default_lora.yaml", [])
    evaluated = EvaluatedAt()
    assert shipped == NativeSettings(
        height=lora.data.target_size,
        width=lora.data.target_size,
        reference_size=lora.data.ref_size,
        num_inference_steps=evaluated.steps,
        guidance_scale=evaluated.guidance,
    )
    write_default_settings(tmp_path, lora)  # what the default's build writes: the same record
    assert (tmp_path / NATIVE_SETTINGS_FILE).read_text() == (DEFAULT_MODEL_DIR / NATIVE_SETTINGS_FILE).read_text()
