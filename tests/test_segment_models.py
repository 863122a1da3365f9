"""Model-backed backends on tiny random models built here (no download), and absent weights."""

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertTokenizerFast,
    Dinov2Config,
    Dinov2Model,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
)

from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.features import Dinov2Extractor, SiftExtractor
from mosaic_studio.annotator.propose import ProposalConfig, ProposalRequest, Proposer
from mosaic_studio.annotator.segment import SegmentationInput, make_segmenter
from mosaic_studio.annotator.segment_models import GroundedSamSegmenter, TransformersDetector, assign_by_colour
from mosaic_studio.annotator.weights import MissingWeightsError
from mosaic_studio.mosaic.data.semalign import validate
from mosaic_studio.world.synthetic import WorldConfig, generate_sample

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "mug", "vase", "object"]


@pytest.fixture(scope="module")
def sample():
    return generate_sample(0, 0, "heldout", WorldConfig())  # two mugs


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    """GroundingDINO (Swin + BERT) and SAM, a few thousand random weights each."""
    from transformers import GroundingDinoImageProcessor, SamImageProcessor

    torch.manual_seed(0)
    vocab = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab.write_text("\n".join(WORDS))
    detector = GroundingDinoForObjectDetection(
        GroundingDinoConfig(
            backbone_config=SwinConfig(
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 1],
                window_size=4,
                image_size=64,
                out_features=["stage1", "stage2"],
            ),
            text_config=BertConfig(
                vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=8,
            num_feature_levels=2,
            encoder_n_points=2,
            decoder_n_points=2,
            max_text_len=16,
        )
    )
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizerFast(vocab_file=str(vocab)),
    )
    sam = SamModel(
        SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                mlp_dim=32,
                image_size=64,
                patch_size=8,
                output_channels=16,
                global_attn_indexes=[0],
                window_size=4,
                num_pos_feats=8,
            ),
            prompt_encoder_config=SamPromptEncoderConfig(
                hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
            ),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
            ),
        )
    )
    sam_processor = SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    )
    return TransformersDetector(
        detector=(detector, processor), sam=(sam, sam_processor), box_threshold=0.0, text_threshold=0.0
    )


def test_grounded_sam_through_transformers_gives_one_mask_per_subject(tiny_detector, sample):
    found = tiny_detector(sample.target, "mug")
    assert found.boxes.shape[1] == 4 and found.masks.shape[1:] == sample.target.shape[:2]
    segmenter = GroundedSamSegmenter(detect=tiny_detector)
    inp = SegmentationInput(
        sample.sample_id, sample.target, [r.image for r in sample.references], [r.label for r in sample.references]
    )
    masks, exclusive = segmenter.target_masks(inp)
    assert not exclusive and len(masks) == len(sample.references) == 2
    assert all(m.dtype == bool and m.shape == sample.target.shape[:2] for m in masks)


def test_subjects_sharing_a_label_get_masks_by_colour():
    target = np.full((40, 40, 3), 200, dtype=np.uint8)
    target[:, :20] = (200, 30, 30)  # red on the left, blue on the right
    target[:, 20:] = (30, 30, 200)
    left, right = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    left[:, :20], right[:, 20:] = True, True
    blue_ref = np.full((40, 40, 3), 255, dtype=np.uint8)
    blue_ref[10:30, 10:30] = (20, 40, 210)
    red_ref = np.full((40, 40, 3), 255, dtype=np.uint8)
    red_ref[10:30, 10:30] = (210, 40, 20)
    assert assign_by_colour([left, right], target, [blue_ref, red_ref]) == (1, 0)


def test_dinov2_features_through_transformers(sample):
    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=8,
            image_size=64,
        )
    )
    extractor = Dinov2Extractor(model=model, resolution=64)
    features = extractor.extract(sample.target, sample.references[0].mask)
    assert features.grid.shape == (32, 8, 8)
    described = features.at(np.array([[0.5, 0.5], [64.0, 100.0]]))
    assert described.shape == (2, 32) and np.allclose(np.linalg.norm(described, axis=1), 1, atol=1e-5)
    proposer = Proposer(
        ProposalConfig(extractors=("dinov2", "sift")),
        make_segmenter("ground-truth"),
        {"dinov2": extractor, "sift": SiftExtractor()},
    )
    validate(proposer.propose(ProposalRequest.from_sample(sample)))


def test_missing_weights_name_the_model_and_how_to_provide_it(tmp_path):
    absent = str(tmp_path / "no-such-dinov2")
    with pytest.raises(MissingWeightsError, match="no-such-dinov2.*huggingface-cli download.*sift"):
        Dinov2Extractor(model_id=absent)
    with pytest.raises(MissingWeightsError, match="GroundingDINO.*no-such-detector.*--detector"):
        GroundedSamSegmenter(detector_id=str(tmp_path / "no-such-detector"), use_lang_sam=False)


def test_cli_reports_missing_weights_and_offline_backends_still_work(tmp_path, capsys, sample):
    from mosaic_studio.mosaic.data.semalign import save_sample

    save_sample(sample, tmp_path / "data" / sample.sample_id)
    absent = str(tmp_path / "no-such-dinov2")
    assert (
        main(
            [
                "propose",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "out"),
                "--extractors",
                "dinov2,sift",
                "--dinov2",
                absent,
            ]
        )
        == 1
    )
    assert "DINOv2 weights" in capsys.readouterr().err and not (tmp_path / "out" / sample.sample_id).exists()
    assert (
        main(
            ["propose", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out2"), "--extractors", "sift,patch"]
        )
        == 0
    )
    assert (tmp_path / "out2" / sample.sample_id / "sample.json").is_file()
