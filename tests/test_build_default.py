"""The default's build chain at toy size: every stage from the one it names, the decoder stage on a
frozen encoder, and the final model assembled from the lora stage and the polished decoder."""

import json

import pytest
from safetensors.torch import load_file

from mosaic_studio.mosaic.tiny import BUILD_INFO
from mosaic_studio.train.build_default import BUILD_ORDER, STAGE_INPUTS, main
from tests.train_fixtures import FAST

TOY = [f"{stage}:{override}" for stage in BUILD_ORDER for override in [*FAST, "optim.max_steps=2"]]


def weights(pipeline, component):
    return load_file(str(pipeline / component / "diffusion_pytorch_model.safetensors"))


def test_build_assembles_the_lora_stage_with_the_polished_decoder(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "model"
    with pytest.raises(SystemExit, match="decoder stage starts from .*vae/pipeline, which is not trained yet"):
        main(["--runs", str(runs), "--out", str(out), "--only", "decoder", *TOY])
    main(["--runs", str(runs), "--out", str(out), "--stop-after", "vae", *TOY])
    assert not (runs / "decoder").exists()  # --stop-after vae trains nothing after it
    main(["--runs", str(runs), "--out", str(out), "--only", "decoder", *TOY])
    assert (runs / "decoder" / "pipeline").is_dir() and not (runs / "base").exists()
    main(["--runs", str(runs), "--out", str(out), *TOY])  # base and lora; vae and decoder are done

    vae, polished, final = (weights(p, "vae") for p in (runs / "vae" / "pipeline", runs / "decoder" / "pipeline", out))
    assert set(vae) == set(polished) == set(final)
    for name in vae:
        if name.startswith("encoder.") or name.startswith("quant_conv."):
            assert vae[name].equal(polished[name]), f"the decoder stage changed {name}"
        assert final[name].equal(polished[name]), f"the model's VAE is not the decoder stage's at {name}"
    changed = [n for n in vae if n.startswith("decoder.") and not vae[n].equal(polished[n])]
    assert changed, "the decoder stage trained nothing"
    # latents keep the shift and scale the transformer was trained with
    read = lambda p: json.loads((p / "vae" / "config.json").read_text())  # noqa: E731
    for key in ("shift_factor", "scaling_factor"):
        assert read(out)[key] == read(runs / "vae" / "pipeline")[key]
    lora = runs / "lora" / "pipeline"
    assert weights(out, "transformer").keys() == weights(lora, "transformer").keys()
    assert all(v.equal(weights(lora, "transformer")[k]) for k, v in weights(out, "transformer").items())
    assert (out / "mosaic_lora.safetensors").read_bytes() == (lora / "mosaic_lora.safetensors").read_bytes()
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["stages"] == STAGE_INPUTS and set(info["wall_minutes"]) == set(BUILD_ORDER)
    assert not list(tmp_path.glob(".*"))  # no staging folder left beside the model


def test_a_stage_whose_readers_are_all_exported_is_not_trained_again():
    from mosaic_studio.train.build_default import stages_to_train

    everything = dict.fromkeys(BUILD_ORDER, False)
    assert stages_to_train(BUILD_ORDER, everything) == set(BUILD_ORDER)
    # The tree's state: the refine stage exported, the base it read gone, lora and decoder to do.
    tree = everything | {"refine": True}
    assert stages_to_train(BUILD_ORDER, tree) == {"vae", "lora", "decoder"}  # vae: the decoder reads it
    assert stages_to_train(BUILD_ORDER, tree | {"decoder": True}) == {"lora"}
    assert stages_to_train(("vae", "base"), everything) == {"vae", "base"}  # --stop-after base
    assert stages_to_train(("refine",), tree) == set()  # --only refine, already exported


def test_a_rebuild_without_the_base_pipeline_retrains_only_what_reads_a_missing_one(tmp_path):
    import shutil

    runs, out = tmp_path / "runs", tmp_path / "model"
    main(["--runs", str(runs), "--out", str(out), *TOY])
    base = weights(runs / "refine" / "pipeline", "transformer")
    shutil.rmtree(runs / "base" / "pipeline")
    shutil.rmtree(runs / "lora")
    main(["--runs", str(runs), "--out", str(out), *TOY])
    assert not (runs / "base" / "pipeline").exists()  # the refine stage's export stands in for it
    lora = runs / "lora" / "pipeline"
    assert (out / "mosaic_lora.safetensors").read_bytes() == (lora / "mosaic_lora.safetensors").read_bytes()
    assert all(v.equal(base[k]) for k, v in weights(lora, "transformer").items())  # the LoRA's frozen base
