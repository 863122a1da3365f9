"""Rebuild the embedded default model from nothing, with fixed seeds:

    python -m mosaic_studio.train.build_default   # hours on 2 CPU cores (docs/TRAINING.md); resumable: rerun it

init (random tiny FLUX pipeline, 4x VAE) → vae → base (text-to-image) → refine (the base on the
VAE posterior's mode) → lora (MOSAIC), and
vae → decoder (the VAE decoder polished on the frozen encoder) → `mosaic_studio/assets/tiny-flux`:
the lora stage's pipeline drawn by the decoder stage's VAE (diffusers layout +
`mosaic_lora.safetensors` in the authors' format).
Each stage checkpoints under `runs/default/<stage>` and resumes where it stopped; a stage whose
pipeline was exported (it reached max_steps or its wall-time budget) is skipped. Wall times go
to `runs/default/timings.json` (a resumed stage adds the minutes of each run; its budget
restarts). `--only decoder` trains that stage alone, e.g. in a second process beside base or lora.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from functools import partial
from pathlib import Path

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import Settings as EvaluatedAt
from mosaic_studio.files import replace_dir, write_file_atomic
from mosaic_studio.mosaic.native import NativeSettings, write_native_settings
from mosaic_studio.mosaic.tiny import BUILD_INFO, TinyFluxConfig, build_tiny_pipeline
from mosaic_studio.train.config import CONFIGS_DIR, load_config
from mosaic_studio.train.trainer import train

# The trained default's architecture. Sizing (see docs/TRAINING.md): a 4x VAE with FLUX's 2x2
# packing gives 8 px per token, so a 128 px target is 16x16 = 256 tokens and a 64 px reference
# 8x8 = 64 tokens: subjects span several tokens, and a batch-8 step stays near 0.3 s on 2 cores.
DEFAULT_ARCHITECTURE = TinyFluxConfig(
    num_layers=4,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    axes_dims_rope=(8, 12, 12),
    vae_block_out_channels=(16, 32, 64),
    # 16 channels like FLUX's VAE: at 4x down that is 3x compression, enough for the world's sharp
    # edges and patterns (4 channels plateaued near 19 dB); convolution only, see TinyFluxConfig.
    latent_channels=16,
    vae_mid_block_attention=False,
)
# Build order, and the stage each one starts from ("init": the seeded random pipeline). The
# decoder reads only the vae stage: the latents it draws are the encoder's, which never changes.
STAGE_INPUTS = {"vae": "init", "base": "vae", "refine": "base", "lora": "refine", "decoder": "vae"}
BUILD_ORDER = tuple(STAGE_INPUTS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/default", help="where stage checkpoints and exports go")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="final pipeline folder")
    parser.add_argument("--seed", type=int, default=0)
    stops = parser.add_mutually_exclusive_group()
    stops.add_argument(
        "--stop-after",
        choices=BUILD_ORDER,
        help=f"train the stages up to this one, in the order {', '.join(BUILD_ORDER)}, and stop (no export to --out)",
    )
    stops.add_argument(
        "--only", choices=BUILD_ORDER, help="train this stage alone (the one it starts from must be trained) and stop"
    )
    parser.add_argument("overrides", nargs="*", help="stage:section.key=value, e.g. base:optim.max_steps=100")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    pipeline = {"init": runs / "init"} | {stage: runs / stage / "pipeline" for stage in BUILD_ORDER}
    if not pipeline["init"].exists():
        build_tiny_pipeline(pipeline["init"], DEFAULT_ARCHITECTURE, seed=args.seed)

    timings_path = runs / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    configs = {}
    stages = (args.only,) if args.only else BUILD_ORDER
    if args.stop_after:
        stages = BUILD_ORDER[: BUILD_ORDER.index(args.stop_after) + 1]
    wanted = stages_to_train(stages, {stage: pipeline[stage].is_dir() for stage in stages})
    for stage in stages:
        source = pipeline[STAGE_INPUTS[stage]]
        if stage in wanted and not source.is_dir():
            raise SystemExit(f"the {stage} stage starts from {source}, which is not trained yet")
        overrides = [o.split(":", 1)[1] for o in args.overrides if o.startswith(f"{stage}:")]
        configs[stage] = config = load_config(
            CONFIGS_DIR / f"default_{stage}.yaml",
            [
                f"model.pretrained={source}",
                f"run.output_dir={runs / stage}",
                f"data.seed={args.seed}",
                *overrides,
            ],
        )
        if stage in wanted:
            began = time.monotonic()
            train(config)
            # read again: a stage in another process may have written its own minutes meanwhile
            timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
            timings[stage] = timings.get(stage, 0.0) + (time.monotonic() - began) / 60
            write_file_atomic(timings_path, partial(json.dump, timings, indent=2))
        if stage in (args.stop_after, args.only):
            print(f"stopped after the {stage} stage: {pipeline[stage]}")
            return
    out = Path(args.out)
    # Assembled beside --out and swapped in whole: the transformer and LoRA of the lora stage,
    # drawn by the polished decoder (its encoder, shift and scale are the ones they trained on).
    staging = out.with_name(f".{out.name}.assembling")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(pipeline["lora"], staging, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(staging / "vae")
    shutil.copytree(pipeline["decoder"] / "vae", staging / "vae")
    write_build_info(staging, args.seed, timings)
    write_default_settings(staging, configs["lora"])
    replace_dir(staging, out)
    print(f"default model written to {out}; wall minutes per stage: {timings}")


def stages_to_train(stages: tuple[str, ...], exported: dict[str, bool]) -> set[str]:
    """The stages of `stages` that must train: those whose pipeline is not exported and that the
    last stage or the final assembly needs, directly or through a stage that must train. A stage
    whose every reader is exported is skipped even without its own pipeline (the tree keeps the
    refine stage's pipeline, not the base's it started from)."""
    ends = set(stages[-1:]) | ({"lora", "decoder"} & set(stages))
    readers = {stage: [s for s in stages if STAGE_INPUTS[s] == stage] for stage in stages}
    wanted: set[str] = set()
    for stage in reversed(stages):  # readers come after the stage they read
        needed = stage in ends or any(reader in wanted for reader in readers[stage])
        if needed and not exported[stage]:
            wanted.add(stage)
    return wanted


def write_default_settings(out: Path, lora_config) -> None:
    """The default's native settings: the LoRA stage's sizes, and the steps and guidance the
    benchmark evaluates it at (evaluation.evaluate.Settings), so the app and the library
    generate as the reported numbers were measured."""
    evaluated = EvaluatedAt()
    size, ref_size = lora_config.data.target_size, lora_config.data.ref_size
    native = NativeSettings(
        height=size,
        width=size,
        reference_size=ref_size,
        num_inference_steps=evaluated.steps,
        guidance_scale=evaluated.guidance,
    )
    write_native_settings(out, native)


def write_build_info(out: Path, seed: int, timings: dict) -> None:
    """Provenance beside model_index.json: trained weights, not the random init's."""
    info = {
        "builder": "mosaic_studio.train.build_default",
        "seed": seed,
        "architecture": dataclasses.asdict(DEFAULT_ARCHITECTURE),
        "wall_minutes": timings,
        "stages": {stage: STAGE_INPUTS[stage] for stage in BUILD_ORDER},  # each stage and the one it started from
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
