"""`MosaicPipeline.from_pretrained` loads the MOSAIC LoRA a model folder ships (the embedded
default's `mosaic_lora.safetensors`), unless told not to; the app's loader loads it once."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.lora_io import DEFAULT_ADAPTER, DEFAULT_WEIGHT_NAME, MosaicLoraMixin
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.studio.quantization import load_studio_pipeline

BUNDLED = DEFAULT_MODEL_DIR / DEFAULT_WEIGHT_NAME
LOGGER = "mosaic_studio.mosaic.pipeline"


def lora_parameters(pipe) -> dict[str, torch.Tensor]:
    return {name: p for name, p in pipe.transformer.named_parameters() if "lora_" in name}


@pytest.fixture
def loads(monkeypatch):
    """Every LoRA load of any pipeline (where from), counted at the mixin that does the loading."""
    seen = []
    original = MosaicLoraMixin.load_mosaic_lora

    def counted(self, path_or_hub_id, *args, **kwargs):
        seen.append(str(path_or_hub_id))
        return original(self, path_or_hub_id, *args, **kwargs)

    monkeypatch.setattr(MosaicLoraMixin, "load_mosaic_lora", counted)
    return seen


def test_from_pretrained_loads_the_bundled_lora_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pipe = MosaicPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert pipe.get_active_adapters() == [DEFAULT_ADAPTER]
    assert pipe.mosaic_lora_sources == {DEFAULT_ADAPTER: f"{DEFAULT_MODEL_DIR}/{DEFAULT_WEIGHT_NAME}"}
    # the file's own values, active in the transformer
    saved = load_file(BUNDLED)
    key = next(k for k in saved if k.endswith("lora_B.weight"))
    module = key.removeprefix("transformer.").removesuffix(".lora_B.weight")
    loaded = lora_parameters(pipe)[f"{module}.lora_B.{DEFAULT_ADAPTER}.weight"]
    assert torch.equal(loaded, saved[key]) and loaded.abs().sum() > 0
    said = [r for r in caplog.records if r.name == LOGGER]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert str(BUNDLED) in said[0].getMessage() and "load_bundled_lora=False" in said[0].getMessage()
    assert "\n" not in said[0].getMessage()


def test_load_bundled_lora_false_loads_none(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        pipe = MosaicPipeline.from_pretrained(DEFAULT_MODEL_DIR, load_bundled_lora=False)
    assert lora_parameters(pipe) == {} and pipe.mosaic_lora_sources == {}
    assert not [r for r in caplog.records if r.name == LOGGER]
    pipe.load_mosaic_lora(DEFAULT_MODEL_DIR, weight_name=DEFAULT_WEIGHT_NAME)  # an explicit load works as before
    assert pipe.get_active_adapters() == [DEFAULT_ADAPTER]


def test_the_bundled_lora_changes_the_generation():
    with_lora = MosaicPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    without = MosaicPipeline.from_pretrained(DEFAULT_MODEL_DIR, load_bundled_lora=False)
    reference = DEFAULT_MODEL_DIR.parent / "examples"
    image = sorted(reference.glob("*.png"))[0]
    images = [
        pipe(
            "a box",
            reference_images=[str(image)],
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images
        for pipe in (with_lora, without)
    ]
    assert abs(images[0] - images[1]).max() > 1e-3  # the LoRA acts on the reference tokens


def test_the_app_loads_the_bundled_lora_exactly_once(loads):
    pipe = load_studio_pipeline(DEFAULT_MODEL_DIR, device="cpu")
    assert loads == [str(DEFAULT_MODEL_DIR)] and pipe.get_active_adapters() == [DEFAULT_ADAPTER]
    loads.clear()
    load_pipeline(DEFAULT_MODEL_DIR, device="cpu")  # the library's loader: the same
    assert loads == [str(DEFAULT_MODEL_DIR)]


def test_an_explicit_lora_replaces_the_bundled_one_and_none_means_none(loads, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(BUNDLED, other / DEFAULT_WEIGHT_NAME)
    pipe = load_pipeline(DEFAULT_MODEL_DIR, lora=str(other), lora_weight_name=DEFAULT_WEIGHT_NAME, device="cpu")
    assert loads == [str(other)] and pipe.mosaic_lora_sources == {DEFAULT_ADAPTER: f"{other}/{DEFAULT_WEIGHT_NAME}"}
    loads.clear()
    assert lora_parameters(load_pipeline(DEFAULT_MODEL_DIR, lora=None, device="cpu")) == {} and loads == []
