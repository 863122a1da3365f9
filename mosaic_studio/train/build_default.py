"""Rebuild the embedded default model from nothing, with fixed seeds:

    python -m mosaic_studio.train.build_default            # ~100 min on 2 CPU cores; resumable: rerun after a stop

init (random tiny FLUX pipeline, 4x VAE) → vae → base (text-to-image) → lora (MOSAIC) →
`mosaic_studio/assets/tiny-flux` (diffusers layout + `mosaic_lora.safetensors` in the authors' format).
Each stage checkpoints under `runs/default/<stage>` and resumes where it stopped; a stage whose
pipeline was exported (it reached max_steps or its wall-time budget) is skipped. Wall times go
to `runs/default/timings.json` (a resumed stage adds the minutes of each run; its budget
restarts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import Settings as EvaluatedAt
from mosaic_studio.files import replace_dir_copy
from mosaic_studio.mosaic.native import NativeSettings, write_native_settings
from mosaic_studio.mosaic.tiny import BUILD_INFO, TinyFluxConfig, build_tiny_pipeline
from mosaic_studio.train.config import CONFIGS_DIR, STAGES, load_config
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/default", help="where stage checkpoints and exports go")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="final pipeline folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-after",
        choices=STAGES,
        default=STAGES[-1],
        help="train the stages up to this one and stop (no export to --out)",
    )
    parser.add_argument("overrides", nargs="*", help="stage:section.key=value, e.g. base:optim.max_steps=100")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    init = runs / "init"
    if not init.exists():
        build_tiny_pipeline(init, DEFAULT_ARCHITECTURE, seed=args.seed)

    timings_path = runs / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    pretrained = init
    for stage in STAGES:
        overrides = [o.split(":", 1)[1] for o in args.overrides if o.startswith(f"{stage}:")]
        config = load_config(
            CONFIGS_DIR / f"default_{stage}.yaml",
            [
                f"model.pretrained={pretrained}",
                f"run.output_dir={runs / stage}",
                f"data.seed={args.seed}",
                *overrides,
            ],
        )
        run_dir = Path(config.run.output_dir)
        if not (run_dir / "pipeline").is_dir():
            began = time.monotonic()
            train(config)
            timings[stage] = timings.get(stage, 0.0) + (time.monotonic() - began) / 60
            timings_path.write_text(json.dumps(timings, indent=2))
        pretrained = run_dir / "pipeline"
        if stage == args.stop_after and stage != STAGES[-1]:
            print(f"stopped after the {stage} stage: {pretrained}")
            return
    replace_dir_copy(pretrained, Path(args.out))
    write_build_info(Path(args.out), args.seed, timings)
    write_default_settings(Path(args.out), config)
    print(f"default model written to {args.out}; wall minutes per stage: {timings}")


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
        "stages": list(STAGES),
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
