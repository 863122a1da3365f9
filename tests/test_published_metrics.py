"""CLIP-I, CLIP-T and DINO: pure cosine helpers against float64 numpy, the published DINO
transform, and PublishedScorer on tiny random models saved like the real ones."""

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from mosaic_studio.evaluation.published_metrics import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PublishedScorer,
    cosine_matrix,
    dino_pixels,
    mean_cosine,
)
from mosaic_studio.evaluation.tiny_scorer_models import save_tiny_scorer_models


def _np_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def _image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_scorer_models(tmp_path_factory.mktemp("scorer"))


@pytest.fixture(scope="module")
def scorer(model_dirs):
    return PublishedScorer(*model_dirs).load()


# ---------------------------------------------------------------- pure functions


def test_cosine_matrix_and_mean_match_float64_numpy():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=generator), torch.randn(3, 7, generator=generator)
    expected = _np_cosine(a.numpy(), b.numpy())
    np.testing.assert_allclose(cosine_matrix(a, b).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(mean_cosine(a, b).numpy(), expected.mean(axis=1), atol=1e-6)
    assert torch.allclose(cosine_matrix(a, 3.0 * a).diagonal(), torch.ones(5))  # scale-free


def test_mean_cosine_needs_references():
    with pytest.raises(ValueError, match="empty reference set"):
        mean_cosine(torch.ones(1, 4), torch.ones(0, 4))


def test_dino_pixels_is_the_published_resize_crop_normalise():
    portrait, landscape = _image(0, (300, 500)), _image(1, (500, 300))
    assert dino_pixels([portrait, landscape]).shape == (2, 3, 224, 224)
    grey = Image.new("RGB", (640, 480), (128, 64, 32))
    expected = (torch.tensor([128, 64, 32]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(dino_pixels([grey])[0, :, 100, 100], expected, atol=1e-6)
    # Centre crop: a stripe at the far left of a wide image falls outside the 224 crop.
    wide = Image.new("RGB", (512, 256), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 64, 256))
    assert dino_pixels([wide]).amin() == dino_pixels([Image.new("RGB", (8, 8), (255, 255, 255))]).amin()


# ---------------------------------------------------------------- scorer


def test_defaults_are_the_published_models_and_nothing_loads_early():
    scorer = PublishedScorer()
    assert (scorer.clip_model_id, scorer.dino_model_id) == (DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL)
    assert (DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL) == ("openai/clip-vit-base-patch32", "facebook/dino-vits16")
    assert scorer._clip is None and scorer._dino is None


def test_identical_images_score_one_and_different_images_less(scorer):
    image, other = _image(0), _image(1)
    same = scorer.score_case(image, [image.copy()], "a dog on the beach")
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert same["dino"] == pytest.approx(1.0, abs=1e-5)
    different = scorer.score_case(image, [other], "a dog on the beach")
    assert different["clip_i"] < 1.0 - 1e-4
    assert different["dino"] < 1.0 - 1e-4
    for scores in (same, different):
        assert -1.0 <= scores["clip_t"] <= 1.0


def test_clip_t_is_the_cosine_of_the_models_own_embeddings(scorer, model_dirs):
    clip_dir, _ = model_dirs
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(clip_dir)
    image, prompt = _image(2), "a red backpack in the snow"
    with torch.no_grad():
        image_emb = model.get_image_features(**processor(images=[image], return_tensors="pt")).pooler_output
        text_emb = model.get_text_features(**tokenizer([prompt], return_tensors="pt")).pooler_output
    expected = _np_cosine(image_emb.numpy(), text_emb.numpy())[0, 0]
    assert scorer.score_case(image, [_image(3)], prompt)["clip_t"] == pytest.approx(expected, abs=1e-5)


def test_several_references_score_the_mean_over_references(scorer):
    generated, refs = _image(4), [_image(5), _image(6), _image(7)]
    together = scorer.score_case(generated, refs, "a cat")
    alone = [scorer.score_case(generated, [ref], "a cat") for ref in refs]
    for key in ("clip_i", "dino"):
        assert together[key] == pytest.approx(np.mean([s[key] for s in alone]), abs=1e-5)
    assert together["clip_t"] == pytest.approx(alone[0]["clip_t"], abs=1e-6)  # the references do not enter CLIP-T


def test_batching_equals_one_by_one(model_dirs):
    images = [_image(seed, (32 + 8 * seed, 40)) for seed in range(5)]
    prompts = ["a dog", "a dog on the beach with a city in the background", "a red cat", "a toy", "a vase"]
    batched, single = PublishedScorer(*model_dirs, batch_size=2), PublishedScorer(*model_dirs, batch_size=1)
    for embed, items in (
        ("clip_image_embeddings", images),
        ("dino_image_embeddings", images),
        ("clip_text_embeddings", prompts),
    ):
        together = getattr(batched, embed)(items)
        one_by_one = torch.cat([getattr(single, embed)([item]) for item in items])
        assert together.shape[0] == len(items)
        assert torch.allclose(together, one_by_one, atol=1e-5), embed


def test_empty_inputs_are_refused(scorer):
    with pytest.raises(ValueError, match="empty reference list"):
        scorer.score_case(_image(0), [], "a dog")
    with pytest.raises(ValueError, match="empty prompt"):
        scorer.score_case(_image(0), [_image(1)], "  ")
    with pytest.raises(ValueError, match="no inputs"):
        scorer.clip_image_embeddings([])


def test_unloadable_model_names_the_id_and_the_way_out(model_dirs, tmp_path, monkeypatch):
    # Offline at call time: the hub reads HF_HUB_OFFLINE when imported, so setting the variable
    # after the import does not stop it from retrying a network it cannot reach.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _, dino_dir = model_dirs
    missing = "no-such-org/no-such-clip"
    with pytest.raises(OSError, match=f"CLIP model '{missing}'.*") as info:
        PublishedScorer(clip_model=missing, dino_model=dino_dir).load()
    assert "internet" in str(info.value) and "local folder" in str(info.value)
    with pytest.raises(OSError, match="DINO model"):
        PublishedScorer(clip_model=model_dirs[0], dino_model=tmp_path / "absent").load()
