"""Does a transformer use its references? The flow-matching loss on held-out scenes at fixed
noise levels, once with the scene's references and once without, on the same latents, noise and
caption. A generator that copies what its references show (shape, pattern, accents: what the
caption does not say) predicts the target better with them; the benefit is the loss without
minus the loss with, per case, with its 95 % bootstrap interval.

    python -m mosaic_studio.experiments.reference_benefit   # the embedded default, its LoRA on
    python -m mosaic_studio.experiments.reference_benefit --model runs/default/refine/pipeline --lora none

Targets are the VAE posterior's mode: what the decoder draws, without the posterior noise no model
can predict (see `loss.target_latents`). With a LoRA loaded, the forward with references is
MOSAIC's (the LoRA on reference tokens only); without references the LoRA has nothing to act on.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import synthetic_cases
from mosaic_studio.evaluation.intervals import bootstrap_interval
from mosaic_studio.evaluation.report import shown_path
from mosaic_studio.mosaic.latents import encode_reference_pixels
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.train.config import LORA_CONFIG, load_config
from mosaic_studio.train.data import Batch, to_pixels
from mosaic_studio.train.flow import flow_matching_loss
from mosaic_studio.train.stages import BaseStage

NOISE_LEVELS = (0.25, 0.5, 0.75, 0.95)
NOISE_SEED = 0


def mode_stage() -> BaseStage:
    """The training forward of the default LoRA stage's config (its caption length) on the
    posterior mode: what the losses below are computed with."""
    return BaseStage(load_config(LORA_CONFIG, ["loss.target_latents=mode"]))


@torch.no_grad()
def case_losses(pipe, samples, t: float, generator: torch.Generator, stage: BaseStage) -> tuple[np.ndarray, np.ndarray]:
    """(without, with): per-sample L_diff at noise level t of same-K `samples`, without and with
    their references, on one draw of noise, through `stage`'s training forward."""
    batch = Batch(to_pixels([s.target for s in samples]), [s.caption for s in samples], None)
    f = stage.flow_inputs(pipe, batch, generator, t=t)
    references = torch.stack([to_pixels([r.image for r in s.references]) for s in samples])
    losses = []
    for refs in ((None, None), encode_reference_pixels(pipe, references)):
        prediction = stage.forward(pipe.transformer, f, *refs)
        losses.append(flow_matching_loss(prediction, f["x0"], f["noise"], reduction="per_sample").cpu().numpy())
    return losses[0], losses[1]


def measure(pipe, cases: int, side: int, ref_side: int, levels=NOISE_LEVELS) -> dict:
    """{t: {"without", "with", "benefit", "ci95", "by_subjects": {K: benefit}}} over the first
    `cases` held-out cases (1-6 subjects in turn)."""
    samples = synthetic_cases(cases, side, pipe.pixels_per_token, ref_side)
    by_count = defaultdict(list)
    for sample in samples:
        by_count[len(sample.references)].append(sample)
    stage = mode_stage()
    result = {}
    for t in levels:
        generator = torch.Generator().manual_seed(NOISE_SEED)
        rows = {count: case_losses(pipe, group, t, generator, stage) for count, group in sorted(by_count.items())}
        without = np.concatenate([w for w, _ in rows.values()])
        with_refs = np.concatenate([r for _, r in rows.values()])
        benefit = without - with_refs
        result[f"{t:g}"] = {
            "without": float(without.mean()),
            "with": float(with_refs.mean()),
            "benefit": float(benefit.mean()),
            "ci95": bootstrap_interval(benefit),
            "by_subjects": {str(count): float((w - r).mean()) for count, (w, r) in rows.items()},
        }
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="pipeline folder")
    parser.add_argument("--lora", default="auto", help="'auto' (the folder's own LoRA), 'none', or a LoRA path")
    parser.add_argument("--cases", type=int, default=96, help="held-out cases, 1-6 subjects in turn")
    parser.add_argument("--side", type=int, help="target side (default: the LoRA stage's training size)")
    parser.add_argument("--ref-side", type=int, help="reference side (default: the LoRA stage's training size)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--out", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be at least 1, got {args.cases}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, lora=None if args.lora == "none" else args.lora, device="cpu")
    # The tiny world's training sizes (a base folder records no native settings).
    trained = load_config(LORA_CONFIG)
    side = args.side or trained.data.target_size
    ref_side = args.ref_side or trained.data.ref_size
    report = {
        "model": shown_path(args.model),
        "lora": args.lora,
        "cases": args.cases,
        "side": side,
        "ref_side": ref_side,
        "levels": measure(pipe, args.cases, side, ref_side),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
