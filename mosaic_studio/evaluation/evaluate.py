"""Evaluate a MOSAIC model (+ its LoRA) on a benchmark: per-case records, a summary per number of
subjects, a markdown table and a plot of every metric against the subject count.

    python -m mosaic_studio.evaluation.evaluate --out outputs/eval  # embedded default, 204 held-out scenes
    python -m mosaic_studio.evaluation.evaluate --model runs/ablation/both/pipeline --cases 48 \\
        --out outputs/eval-both
    python -m mosaic_studio.evaluation.evaluate --oracle --out outputs/eval-oracle  # the metrics on the true targets
    python -m mosaic_studio.evaluation.evaluate --reference-cache --out outputs/eval-fast  # fast mode
    python -m mosaic_studio.evaluation.evaluate --model black-forest-labs/FLUX.1-dev \\
        --lora bytedance-fanqie-ai/MOSAIC \\
        --benchmark xversebench:XVerseBench/eval/tools/XVerseBench_multi.json --root XVerseBench --out outputs/xverse
    python -m mosaic_studio.evaluation.evaluate --model ... --benchmark dreambench:dreambooth/dataset \\
        --out outputs/dreambench
    python -m mosaic_studio.evaluation.evaluate --model ... --benchmark uno:UNO/datasets/dreambench_multiip.json \\
        --out ...

Synthetic world (`--benchmark synthetic`, the default): held-out identities from world seed
EVAL_SEED, case i has 1 + (i mod 6) subjects, its references drawn at `--ref-side` pixels
(default: half of `--side`), the size the generations and the probe use too. Per case:
identity fidelity and fidelity above chance (minus the fidelity of DECOYS absent held-out
identities of the same size in the same image), presence, missing, duplicated, leakage and
prompt adherence (mosaic_studio/evaluation/world_metrics.py,
averaged over the case's subjects), attention PCK@1 token of the Eq. 8 probe against the true correspondences (no
generation: the probe runs on the true target at fixed noise levels), and, on every
`--diversity-every`-th case, diversity: the mean pairwise perceptual distance over `--seeds`
generations (mosaic_studio/evaluation/diversity.py; paper Table 15). Published case lists: CLIP-I, CLIP-T and DINO
(mosaic_studio/evaluation/published_metrics.py) and the same diversity. `--reference-cache` runs the generations and
the probe in fast mode (docs/DESIGN.md §7; `probe_attention` says what that changes in the probe);
every record and the report say which mode ran (benchmarks/fast_mode_quality.py compares the two).

Records go to <out>/records.jsonl as each case finishes, so a stopped run resumes where it
stopped (with the same settings; other settings need another --out). The end writes
<out>/evaluation.json (settings, summary, records), evaluation.md and metrics_vs_subjects.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.metrics import attention_pck
from mosaic_studio.evaluation.report import markdown_by_subjects, markdown_table, plot_by_subjects, summarise
from mosaic_studio.mosaic.attention import ReferenceCache
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES
from mosaic_studio.mosaic.latents import encode_latents, encode_reference_pixels
from mosaic_studio.mosaic.probe import AttentionProbe
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward
from mosaic_studio.train.config import LORA_CONFIG, PROBE_SITES, load_config
from mosaic_studio.train.data import collate, generate_exact
from mosaic_studio.world.synthetic import WorldConfig

EVAL_SEED = 1234  # held-out scenes come from a world seed the training never used
PCK_TIMESTEPS = (0.3, 0.5, 0.7)  # the probe's PCK is averaged over these noise levels
PCK_POINTS = 32  # correspondences per reference per case
DECOY_OFFSET = 50_000  # decoy scenes: far from any case index
DECOYS = 2


@dataclass(frozen=True)
class Settings:
    benchmark: str = "synthetic"
    cases: int = 204  # synthetic: 34 per subject count; published: a limit (0 = all)
    side: int = 128  # generated image side (the synthetic world's training size)
    steps: int = 12
    guidance: float = 3.5
    seeds: int = 4  # generations per diversity case
    # Every n-th case gets the diversity generations (0 = none). Coprime with the 6 subject
    # counts, so those cases cover every count (a multiple of 6 would pick one count only).
    diversity_every: int = 7
    oracle: bool = False  # score the true target instead of a generation (synthetic only)
    # Fast mode (MosaicPipeline's reference_cache, docs/DESIGN.md §7) for the generations and
    # the PCK probe; False: the exact group mask the model was trained with.
    reference_cache: bool = False
    # Reference side in pixels. None: synthetic references at side // 2 (the world's training
    # ratio; at the default side that is 64 px, what every earlier run used), published lists at
    # the model's native size. A P_k sweep at a larger size evaluates its rows at theirs.
    ref_side: int | None = None

    @property
    def reference_side(self) -> int | None:
        """The reference size generations are called with: synthetic references are drawn at this
        size and the probe reads them at it, so the generation must not resize them to the model's
        native one. None (published lists without ref_side): the pipeline's native size."""
        if self.ref_side is not None or self.benchmark != "synthetic":
            return self.ref_side
        return self.side // 2

    @property
    def mode(self) -> str:
        """What each record says it ran: "fast", "exact", or "oracle" (nothing generated or probed)."""
        return "oracle" if self.oracle else "fast" if self.reference_cache else "exact"


def heldout_sample(index: int, num_refs: int | None, target_size: int = 128, ref_size: int = 64, token_size: int = 8):
    """Held-out scene `index` with exactly `num_refs` subjects (None: any number)."""
    lo, hi = (num_refs, num_refs) if num_refs else (1, MAX_REFERENCES)
    world = WorldConfig(
        target_size=target_size, ref_size=ref_size, token_size=token_size, min_subjects=lo, max_subjects=hi
    )
    return generate_exact(EVAL_SEED, index, "heldout", world, num_refs)


def synthetic_cases(count: int, side: int, token_size: int, ref_side: int | None = None) -> list:
    """The first `count` held-out cases; references at `ref_side` (None: side // 2)."""
    ref = side // 2 if ref_side is None else ref_side
    return [heldout_sample(i, 1 + i % MAX_REFERENCES, side, ref, token_size) for i in range(count)]


@torch.no_grad()
def probe_attention(
    pipe,
    batch,
    t: float,
    sites: Sequence[str],
    generator: torch.Generator,
    max_sequence_length: int,
    reference_cache: bool = False,
    target_latents: str = "sample",
) -> torch.Tensor:
    """Eq. 8 rows (B, K·P, N_tgt) of the batch's correspondence points (`batch.rows`) at noise
    level t, averaged over the transformer blocks `sites` (module names, e.g.
    `mosaic.probe.early_double_blocks(pipe.transformer)`). The target is encoded (the posterior's
    "sample" or "mode", as the training's `loss.target_latents`) and noised with `generator`
    exactly as a training step does, so the rows are the ones the losses supervise; references
    use the posterior mode.

    reference_cache: run the forward under fast mode's mask (docs/DESIGN.md §7: reference queries
    see their own reference only; text and target queries still see every reference) instead of
    the exact group mask. The row is the same quantity in both modes: Eq. 8 is the softmax of a
    reference token's query against the target keys, taken over the target keys only, a read-out
    of Q_ref and K_tgt, not the attention the reference row performs (in exact mode that softmax
    also spans text and the reference itself; in fast mode it spans the reference only and never
    reaches the target). So the row is defined in fast mode, and the probe's direction (reference
    query → target keys) is exactly the one fast mode cuts; the direction it keeps (target
    queries → reference keys) is not what Eq. 8 reads. What fast mode changes is the tokens Q_ref
    and K_tgt are projected from, from the second block on: reference tokens have attended to
    their own reference only (not to text and target), and target tokens to those changed
    reference keys and values. At the first double block both come straight from the embedders,
    identical in the two modes, so a probe reading `transformer_blocks.0` alone gives the same
    rows bit for bit; any site after it (the embedded default's every double block, FLUX.1-dev's
    early blocks 0–5) differs."""
    transformer = pipe.transformer
    x0, grid = encode_latents(pipe, batch.target, generator=generator if target_latents == "sample" else None)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    timestep = torch.as_tensor(t).expand(len(x0)).to(x0)
    prompt, pooled, text_ids = pipe.encode_prompt(
        prompt=batch.captions, prompt_2=None, device=transformer.device, max_sequence_length=max_sequence_length
    )
    guidance = torch.ones_like(timestep) if transformer.config.guidance_embeds else None  # as the training embeds it
    reference_latents, reference_ids = encode_reference_pixels(pipe, batch.reference_pixels)
    s = timestep.view(-1, 1, 1)
    probe = AttentionProbe(batch.rows)
    cache = ReferenceCache(keep_queries=True) if reference_cache else None  # the probe reads reference queries
    with probe.attached(transformer, sites):
        mosaic_forward(
            transformer,
            (1 - s) * x0 + s * noise,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=timestep,
            img_ids=grid_position_ids(*grid, device=x0.device, dtype=x0.dtype),
            txt_ids=text_ids,
            guidance=guidance,
            reference_latents=reference_latents,
            reference_ids=reference_ids,
            reference_cache=cache,
        )
    return probe.attention()


@functools.lru_cache(maxsize=1)
def lora_probe_settings() -> tuple[str, int, str]:
    """(loss.blocks, model.max_sequence_length, loss.target_latents) of the default LoRA stage
    (train/configs/default_lora.yaml), read once: PCK probes the sites that stage supervises,
    with its caption length and its targets."""
    config = load_config(LORA_CONFIG)
    return config.loss.blocks, config.model.max_sequence_length, config.loss.target_latents


def probe_sites(pipe) -> list[str]:
    """The blocks PCK reads: the default LoRA stage's probe sites on this transformer."""
    return PROBE_SITES[lora_probe_settings()[0]](pipe.transformer)


def probe_points(pipe, batch, t: float, reference_cache: bool = False) -> torch.Tensor:
    """`probe_attention` on the default LoRA stage's probe sites, with noise fixed by t."""
    generator = torch.Generator().manual_seed(int(t * 1000))
    _, max_sequence_length, target_latents = lora_probe_settings()
    return probe_attention(
        pipe, batch, t, probe_sites(pipe), generator, max_sequence_length, reference_cache, target_latents
    )


@torch.no_grad()
def probe_hits(pipe, sample, rng: np.random.Generator, reference_cache: bool = False) -> tuple[float, int]:
    """(hits, points) of attention PCK@1 token for the Eq. 8 probe (the training's probe sites) on
    one sample, summed over PCK_TIMESTEPS; PCK_POINTS correspondences per reference from `rng`;
    reference_cache: under fast mode's mask (`probe_attention`)."""
    token = pipe.pixels_per_token
    batch = collate([sample], [sample.caption], PCK_POINTS, token, rng)
    grid_w = sample.target.shape[1] // token
    hits, total = 0.0, 0
    for t in PCK_TIMESTEPS:
        attention = probe_points(pipe, batch, t, reference_cache)
        n = int(batch.valid.sum())
        hits += attention_pck(attention, batch.tgt_index, grid_w, 1, batch.valid).item() * n
        total += n
    return hits, total


def generate(pipe, prompt: str, references: list[Image.Image], settings: Settings, seed: int) -> Image.Image:
    return pipe(
        prompt,
        reference_images=references,
        height=settings.side,
        width=settings.side,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        reference_size=settings.reference_side,
        generator=torch.Generator().manual_seed(seed),
        reference_cache=settings.reference_cache,
    ).images[0]


def _fraction(flags: list) -> float | None:
    defined = [f for f in flags if f is not None]
    return float(np.mean(defined)) if defined else None


def decoys(index: int, sample) -> list[np.ndarray]:
    """DECOYS references of held-out identities absent from the case, from another held-out
    scene with the same subject count (so their drawn size matches): the chance baseline."""
    k = len(sample.references)
    other = heldout_sample(DECOY_OFFSET + index, k, sample.target.shape[0], sample.references[0].image.shape[0])
    present = {s["identity"] for s in sample.meta["subjects"]}
    kept = [r.image for r, s in zip(other.references, other.meta["subjects"]) if s["identity"] not in present]
    return kept[:DECOYS]


def world_record(image: np.ndarray, sample, decoy_references: list[np.ndarray]) -> dict:
    """The case's world metrics: each a mean over its subjects (mosaic_studio/evaluation/world_metrics.py)."""
    from mosaic_studio.evaluation.world_metrics import (
        chance_fidelity,
        subject_scores,
    )  # OpenCV only where the world is scored

    colours = [s["colour"] for s in sample.meta["subjects"]]
    chance = chance_fidelity(image, decoy_references) if decoy_references else 0.0  # no decoy: an identity clash
    scores = subject_scores(image, [r.image for r in sample.references], colours, chance)
    return {
        "fidelity": float(np.mean([s.fidelity for s in scores])),
        "fidelity_gain": float(np.mean([s.gain for s in scores])),
        "chance": chance,
        "presence": _fraction([s.count == 1 for s in scores]),
        "missing": _fraction([s.count == 0 for s in scores]),
        "duplicated": _fraction([s.count >= 2 for s in scores]),
        "leakage": _fraction([s.leaked for s in scores]),
        "adherence": _fraction([s.adherent for s in scores]),
        "per_subject": [s.as_dict() for s in scores],
    }


class Evaluator:
    """Runs cases with one pipeline and settings; `distance` scores diversity, `scorer` the
    published metrics."""

    def __init__(self, pipe, settings: Settings, out: Path, distance=None, scorer=None):
        self.pipe, self.settings, self.out = pipe, settings, out
        self.distance, self.scorer = distance, scorer
        (out / "images").mkdir(parents=True, exist_ok=True)

    def _diversity(self, index: int, prompt: str, references: list[Image.Image], first: Image.Image) -> float | None:
        from mosaic_studio.evaluation.diversity import mean_pairwise_distance

        s = self.settings
        if self.distance is None or s.oracle or s.diversity_every <= 0 or index % s.diversity_every or s.seeds < 2:
            return None
        images = [first] + [
            generate(self.pipe, prompt, references, s, seed=index * 1000 + j) for j in range(1, s.seeds)
        ]
        return mean_pairwise_distance(images, self.distance)

    def _image(self, index: int, case_id: str, prompt: str, refs: list[Image.Image], image: Image.Image | None = None):
        """Case `index`'s image (generated unless given), saved under images/, and the record's
        head: (image, record)."""
        if image is None:
            image = generate(self.pipe, prompt, refs, self.settings, seed=index * 1000)
        name = f"images/{index:04d}.png"
        image.save(self.out / name)
        head = {"case": case_id, "subjects": len(refs), "prompt": prompt, "image": name}
        return image, {**head, "mode": self.settings.mode}

    def synthetic(self, index: int, sample) -> dict:
        refs = [Image.fromarray(r.image) for r in sample.references]
        truth = Image.fromarray(sample.target) if self.settings.oracle else None
        image, record = self._image(index, sample.sample_id, sample.caption, refs, truth)
        record.update(world_record(np.asarray(image), sample, decoys(index, sample)))
        if not self.settings.oracle:
            rng = np.random.default_rng([EVAL_SEED, index])
            hits, points = probe_hits(self.pipe, sample, rng, self.settings.reference_cache)
            record["pck"] = hits / points
        record["diversity"] = self._diversity(index, sample.caption, refs, image)
        return record

    def published(self, index: int, case) -> dict:
        refs = case.load_images()
        image, record = self._image(index, case.case_id, case.prompt, refs)
        record.update(self.scorer.score_case(image, case.load_metric_images(), case.prompt))
        record["diversity"] = self._diversity(index, case.prompt, refs, image)
        return record


def load_cases(benchmark: str, count: int, side: int, token_size: int, root: str | None, ref_side: int | None = None):
    """(kind, cases) for `synthetic` (references at `ref_side`, None: side // 2) or
    `dreambench:DIR`, `uno:JSON`, `xversebench:JSON` (their own images; ref_side applies at
    generation)."""
    if benchmark == "synthetic":
        return "synthetic", synthetic_cases(count, side, token_size, ref_side=ref_side)
    from mosaic_studio.evaluation import benchmark_sets

    kind, sep, path = benchmark.partition(":")
    loaders = {
        "dreambench": lambda: benchmark_sets.load_dreambench(path),
        "uno": lambda: benchmark_sets.load_uno_cases(path, root),
        "xversebench": lambda: benchmark_sets.load_xversebench(path, root),
    }
    if not sep or kind not in loaders:
        raise ValueError(
            f"unknown benchmark {benchmark!r}: use synthetic, dreambench:DIR, uno:JSON or xversebench:JSON"
        )
    cases = loaders[kind]()
    return "published", cases[:count] if count > 0 else cases


def _resume(out: Path, settings: Settings) -> list[dict]:
    """Records already written by a run with these settings; other settings fail loudly, naming
    the keys that differ. A key missing from an older settings.json (one written before that
    setting existed) counts as its default, which is what that run used."""
    settings_path, records_path = out / "settings.json", out / "records.jsonl"
    wanted = dataclasses.asdict(settings)
    if settings_path.exists():
        found = {**dataclasses.asdict(Settings()), **json.loads(settings_path.read_text())}
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise ValueError(f"{out} holds an evaluation with other settings ({', '.join(changed)}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(wanted, indent=2))
    if not records_path.exists():
        return []
    records = []
    for line in records_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a stop mid-write: that case runs again
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def evaluate(
    pipe, settings: Settings, out: Path, root: str | None = None, distance=None, scorer=None, name: str = "model"
) -> dict:
    """Run (or resume) every case; returns the summary and writes the report files."""
    kind, cases = load_cases(
        settings.benchmark,
        settings.cases,
        settings.side,
        getattr(pipe, "pixels_per_token", 8),
        root,
        ref_side=settings.ref_side,
    )
    if kind == "published" and scorer is None:
        raise ValueError("a published benchmark needs a PublishedScorer (CLIP and DINO models)")
    if settings.oracle and kind != "synthetic":
        raise ValueError("--oracle scores the true targets, which only the synthetic world has")
    if settings.oracle and settings.reference_cache:
        raise ValueError("--oracle generates nothing and probes nothing, so --reference-cache would not apply")
    records = _resume(out, settings)
    evaluator = Evaluator(pipe, settings, out, distance, scorer)
    run = evaluator.synthetic if kind == "synthetic" else evaluator.published
    with (out / "records.jsonl").open("a") as stream:  # record i is case i: resuming starts at len(records)
        for index in tqdm(range(len(records), len(cases)), initial=len(records), total=len(cases), desc="evaluate"):
            records.append(run(index, cases[index]))
            stream.write(json.dumps(records[-1]) + "\n")
            stream.flush()
    summary = summarise(records)
    report = {"settings": dataclasses.asdict(settings), "mode": settings.mode, "summary": summary, "records": records}
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    table = markdown_table({name: summary})
    by_k = "\n\n".join(markdown_by_subjects({name: summary}, m) for m in summary["overall"])
    (out / "evaluation.md").write_text(
        f"# Evaluation: {name} on {settings.benchmark}\n\n{summary['cases']} cases. {mode_line(settings)}\n\n"
        f"{table}\n\n{by_k}\n"
    )
    plot_by_subjects({name: summary}, out / "metrics_vs_subjects.png", title=f"{name} on {settings.benchmark}")
    return summary


def mode_line(settings: Settings) -> str:
    """The report's sentence on the attention mode the generations (and the probe) ran with."""
    if settings.oracle:
        return "Oracle: the true targets are scored, nothing is generated."
    if settings.reference_cache:
        return (
            "Mode: **fast** (`reference_cache=True`: references attend to themselves only, their keys and "
            "values computed once; not the group mask the model was trained with)."
        )
    return "Mode: **exact** (the group mask the model was trained with)."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="pipeline folder or hub id")
    parser.add_argument("--lora", default="auto", help="LoRA folder/hub id; 'auto' = the model folder's own; 'none'")
    parser.add_argument(
        "--benchmark", default="synthetic", help="synthetic | dreambench:DIR | uno:JSON | xversebench:JSON"
    )
    parser.add_argument("--root", help="folder the case list's image paths are relative to (uno, xversebench)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", help="row name in the report (default: the model folder's name)")
    defaults = Settings()
    parser.add_argument("--cases", type=int, default=defaults.cases)
    parser.add_argument("--side", type=int, help=f"image side (synthetic: {defaults.side}; else the model's usual)")
    parser.add_argument(
        "--ref-side",
        type=int,
        help="reference side the cases are built and generated at (synthetic: side // 2; else the model's usual)",
    )
    parser.add_argument(
        "--steps", type=int, help=f"denoising steps (synthetic: {defaults.steps}; else the model's usual)"
    )
    parser.add_argument(
        "--guidance", type=float, help=f"guidance (synthetic: {defaults.guidance}; else the model's usual)"
    )
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--diversity-every", type=int, default=defaults.diversity_every)
    parser.add_argument("--oracle", action="store_true", help="score the true targets: the metrics' ceiling")
    parser.add_argument(
        "--reference-cache",
        action="store_true",
        help="fast mode: generate (and probe) with reference_cache=True instead of the exact group mask",
    )
    parser.add_argument(
        "--lpips", action="store_true", help="diversity with LPIPS (needs the lpips package and its weights)"
    )
    parser.add_argument("--clip-model", default=None, help="CLIP id or folder for CLIP-I/CLIP-T")
    parser.add_argument("--dino-model", default=None, help="DINO id or folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mosaic_studio.evaluation.diversity import FeatureDistance, LpipsDistance
    from mosaic_studio.mosaic.loading import load_pipeline
    from mosaic_studio.mosaic.pipeline import default_settings

    pipe = load_pipeline(args.model, lora=None if args.lora == "none" else args.lora, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    # The synthetic world is scored at its training size; published lists at the model's usual settings.
    usual = dataclasses.asdict(defaults) if args.benchmark == "synthetic" else default_settings(pipe)
    settings = Settings(
        args.benchmark,
        args.cases,
        args.side or usual["side"],
        args.steps or usual["steps"],
        args.guidance or usual["guidance"],
        args.seeds,
        args.diversity_every,
        args.oracle,
        reference_cache=args.reference_cache,
        ref_side=args.ref_side,
    )
    distance = LpipsDistance(device=args.device) if args.lpips else FeatureDistance.from_vae(pipe.vae)
    scorer = None
    if settings.benchmark != "synthetic":
        from mosaic_studio.evaluation.published_metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, PublishedScorer

        scorer = PublishedScorer(
            args.clip_model or DEFAULT_CLIP_MODEL, args.dino_model or DEFAULT_DINO_MODEL, device=args.device
        )
    name = args.name or Path(args.model.rstrip("/")).name
    summary = evaluate(pipe, settings, Path(args.out), args.root, distance, scorer, name)
    print(markdown_table({name: summary}))


if __name__ == "__main__":
    main()
