"""The data commands of `python -m mosaic_studio.annotator`: requests, propose, import, export, compose.

  requests python -m mosaic_studio.annotator requests --photos DIR --out DIR
           one proposal request per (reference, target) pair of photos of the same subject

  propose  python -m mosaic_studio.annotator propose --data DIR --out DIR [--segmenter NAME] [--extractors dift,sift]
           resumable; sharded by --rank/--world-size (default: RANK/WORLD_SIZE, so it works
           under `accelerate launch -m annotator propose …` or torchrun)
  import   python -m mosaic_studio.annotator import --store DB --format semalign|synthetic|subjects200k --data DIR
  export   python -m mosaic_studio.annotator export --store DB --out DIR            (training format)
           python -m mosaic_studio.annotator export --store DB --out tasks.json --format label-studio
  compose  python -m mosaic_studio.annotator compose --data DIR --out DIR --num N
           multi-subject samples from single-subject ones; resumable and sharded like propose

Heavy modules (torch, diffusers, transformers) are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_EXTRACTORS = "dift,sift"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --- propose ----------------------------------------------------------------------------------


def add_propose_command(commands) -> None:
    from mosaic_studio.annotator.propose import PAPER_P_K, ProposalConfig
    from mosaic_studio.annotator.segment import SEGMENTERS

    defaults = ProposalConfig()
    parser = commands.add_parser("propose", help="propose correspondences for a data folder")
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of SemAlign-MS sample folders or request.json folders"
    )
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (resumable)")
    parser.add_argument("--segmenter", choices=sorted(SEGMENTERS), default=defaults.segmenter)
    parser.add_argument(
        "--extractors",
        default=DEFAULT_EXTRACTORS,
        help="comma-separated: dift, dinov2, sift, patch; two or more are intersected (default %(default)s)",
    )
    parser.add_argument(
        "--radius",
        type=int,
        default=defaults.radius,
        help="agreement radius in reference tokens; 0 = the authors' rule",
    )
    parser.add_argument("--p-k", type=int, default=PAPER_P_K, help="points per reference at most")
    parser.add_argument("--token-size", type=int, default=defaults.token_size)
    parser.add_argument("--candidate-grid", type=int, default=defaults.candidate_grid)
    parser.add_argument(
        "--no-mirror-test", action="store_true", help="do not also match against the mirrored reference"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    model = parser.add_argument_group("models")
    model.add_argument(
        "--model", default=None, help="FLUX/MOSAIC pipeline for dift and attention (default: the embedded one)"
    )
    model.add_argument("--lora", default="auto", help="'auto', 'none', or a LoRA file/folder/hub id")
    model.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    model.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    model.add_argument("--dift-block", default=None, help="default: the middle double block")
    model.add_argument("--dift-timestep", type=float, default=0.3)
    model.add_argument("--dift-copies", type=int, default=4)
    model.add_argument("--dift-resolution", type=int, default=512)
    model.add_argument("--dinov2", default=None, help="DINOv2 model id or folder")
    model.add_argument("--detector", default=None, help="GroundingDINO model id or folder")
    model.add_argument("--sam", default=None, help="SAM / SAM 2 model id or folder")
    model.add_argument("--box-threshold", type=float, default=None)
    model.add_argument("--text-threshold", type=float, default=None)
    parser.add_argument("--rank", type=int, default=_env_int("RANK", 0))
    parser.add_argument("--world-size", type=int, default=_env_int("WORLD_SIZE", 1))
    parser.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        default="stop",
        help="a sample that cannot be proposed stops the run, or is skipped",
    )
    parser.set_defaults(run=run_propose)


def _device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return f"cuda:{_env_int('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


def run_propose(args: argparse.Namespace) -> int:
    from mosaic_studio.annotator.propose import ProposalConfig, build_proposer
    from mosaic_studio.annotator.propose_run import manifest_of, run_proposals

    config = ProposalConfig(
        args.segmenter,
        tuple(n.strip() for n in args.extractors.split(",") if n.strip()),
        args.radius,
        args.p_k,
        args.token_size,
        args.candidate_grid,
        not args.no_mirror_test,
        args.seed,
    )
    device = _device(args.device)
    dift = {
        "block": args.dift_block,
        "timestep": args.dift_timestep,
        "copies": args.dift_copies,
        "resolution": args.dift_resolution,
    }
    extractor_options = {"dift": dift, "dinov2": {"device": device}}
    if args.dinov2:
        extractor_options["dinov2"]["model_id"] = args.dinov2
    segmenter_options = {}
    if args.segmenter == "grounded-sam":
        named = {
            "detector_id": args.detector,
            "sam_id": args.sam,
            "box_threshold": args.box_threshold,
            "text_threshold": args.text_threshold,
        }
        segmenter_options = {"device": device} | {k: v for k, v in named.items() if v is not None}
    pipe, model = None, None
    if "dift" in config.extractors or config.segmenter == "attention":
        from mosaic_studio import DEFAULT_MODEL_DIR
        from mosaic_studio.mosaic.loading import load_pipeline

        model = args.model or str(DEFAULT_MODEL_DIR)
        pipe = load_pipeline(model, None if args.lora == "none" else args.lora, device=device, dtype=args.dtype)
    proposer = build_proposer(config, pipe, segmenter_options, extractor_options)
    options = {
        "dift": dift if "dift" in config.extractors else None,
        "segmenter": {k: v for k, v in segmenter_options.items() if k != "device"},
    }
    done, present, failed = run_proposals(
        args.data,
        args.out,
        proposer,
        manifest_of(config, args.model, options),
        args.rank,
        args.world_size,
        args.on_error,
    )
    print(f"rank {args.rank}: proposed {done}, already done {present}, skipped {failed}")
    return 0


# --- import -----------------------------------------------------------------------------------


def add_import_command(commands) -> None:
    from mosaic_studio.annotator.imports import FORMATS
    from mosaic_studio.mosaic.data.semalign import DEFAULT_TOKEN_SIZE
    from mosaic_studio.mosaic.data.subjects200k import PANEL_PADDING, PANEL_SIZE

    parser = commands.add_parser("import", help="register samples in a review store")
    parser.add_argument("--store", required=True, help="review store (SQLite file); created if absent")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset folder (semalign, synthetic) or the Subjects200K root"
    )
    parser.add_argument(
        "--media", type=Path, default=None, help="subjects200k: folder for the converted sample folders"
    )
    parser.add_argument("--skip-existing", action="store_true", help="ignore ids already in the store")
    parser.add_argument("--token-size", type=int, default=DEFAULT_TOKEN_SIZE)
    parser.add_argument("--panel-size", type=int, default=PANEL_SIZE, help="subjects200k panel side")
    parser.add_argument("--padding", type=int, default=PANEL_PADDING, help="subjects200k padding")
    parser.add_argument(
        "--all-quality", action="store_true", help="subjects200k: keep rows the official quality filter drops"
    )
    parser.add_argument("--actor", default="cli", help="name for the audit log")
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from mosaic_studio.annotator.imports import SOURCES, import_folders, import_subjects200k, import_synthetic
    from mosaic_studio.annotator.store import ReviewStore

    if args.format == "subjects200k" and args.media is None:
        raise ValueError("--format subjects200k needs --media DIR for the converted samples")
    with ReviewStore(args.store) as store:
        if args.format == "semalign":
            added, present = import_folders(
                store, args.data, SOURCES["semalign"], args.skip_existing, args.token_size, args.actor
            )
        elif args.format == "synthetic":
            added, present = import_synthetic(store, args.data, args.skip_existing, args.token_size, args.actor)
        else:
            added, present = import_subjects200k(
                store,
                args.data,
                args.media,
                None,
                args.skip_existing,
                not args.all_quality,
                args.token_size,
                args.actor,
                panel_size=args.panel_size,
                padding=args.padding,
            )
    print(f"imported {added} samples into {args.store}" + (f"; {present} already there" if present else ""))
    return 0


# --- export -----------------------------------------------------------------------------------


def add_export_command(commands) -> None:
    from mosaic_studio.mosaic.data.semalign import DEFAULT_TOKEN_SIZE

    parser = commands.add_parser("export", help="accepted samples as training data or Label Studio JSON")
    parser.add_argument("--store", required=True, help="review store (SQLite file); must exist")
    parser.add_argument(
        "--out", type=Path, required=True, help="dataset folder (training) or .json file (label-studio)"
    )
    parser.add_argument("--format", choices=["training", "label-studio"], default="training")
    parser.add_argument(
        "--status",
        action="append",
        choices=["accepted", "pending", "rejected"],
        help="sample status to export, repeatable (default: accepted)",
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="training: leave out samples that break a format rule, and list them",
    )
    parser.add_argument("--token-size", type=int, default=DEFAULT_TOKEN_SIZE)
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mosaic_studio.annotator.export import export_label_studio, export_training
    from mosaic_studio.annotator.store import ReviewStore

    statuses = args.status or ["accepted"]
    with ReviewStore(args.store, create=False, read_only=True) as store:  # an export only reads the store
        if args.format == "label-studio":
            count = export_label_studio(store, args.out, statuses)
            print(f"wrote {count} Label Studio tasks to {args.out} (config: {args.out.with_suffix('.xml')})")
            return 0
        written, problems = export_training(store, args.out, statuses, args.token_size, args.skip_invalid)
    for problem in problems:
        print(f"left out: {problem}")
    print(f"exported {written} samples to {args.out}")
    return 0


# --- compose ----------------------------------------------------------------------------------


def _numbers(kind: type, count: int):
    """An argparse type: `count` comma-separated numbers, e.g. 0.4,0.8."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated {kind.__name__}s, got {text!r}")
        return values

    return parse


def add_compose_command(commands) -> None:
    from mosaic_studio.annotator.compose import BACKGROUNDS, RESAMPLING, ComposeConfig
    from mosaic_studio.mosaic.data.subjects200k import PANEL_PADDING, PANEL_SIZE

    defaults = ComposeConfig()
    parser = commands.add_parser("compose", help="multi-subject samples from single-subject ones")
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of single-subject sample folders, or the Subjects200K root"
    )
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (resumable)")
    parser.add_argument("--num", type=int, required=True, help="composed samples in the dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["semalign", "subjects200k"], default="semalign")
    parser.add_argument("--media", type=Path, default=None, help="subjects200k: folder for the converted samples")
    parser.add_argument("--panel-size", type=int, default=PANEL_SIZE, help="subjects200k panel side")
    parser.add_argument("--padding", type=int, default=PANEL_PADDING, help="subjects200k padding")
    parser.add_argument("--size", type=int, default=defaults.size, help="canvas side in pixels")
    parser.add_argument("--min-subjects", type=int, default=defaults.min_subjects)
    parser.add_argument("--max-subjects", type=int, default=defaults.max_subjects)
    parser.add_argument(
        "--scale",
        type=_numbers(float, 2),
        default=defaults.scale,
        metavar="LOW,HIGH",
        help="range of the factor on each source's pixels (default %(default)s)",
    )
    parser.add_argument(
        "--position",
        type=_numbers(float, 2),
        default=defaults.position,
        metavar="LOW,HIGH",
        help="range of a subject's box centre, fraction of the canvas side (default %(default)s)",
    )
    parser.add_argument("--background", choices=BACKGROUNDS, default=defaults.background)
    parser.add_argument("--plain-colour", type=_numbers(int, 3), default=defaults.plain_colour, metavar="R,G,B")
    parser.add_argument(
        "--resample",
        choices=RESAMPLING,
        default=defaults.resample,
        help="nearest keeps source pixels exactly at integer scales",
    )
    parser.add_argument(
        "--min-visible", type=float, default=defaults.min_visible, help="of a subject's pixels, after occlusion"
    )
    parser.add_argument("--min-points", type=int, default=defaults.min_points, help="visible points per subject")
    parser.add_argument("--token-size", type=int, default=defaults.token_size, help="Eq. 2 holds at this size")
    parser.add_argument("--rank", type=int, default=_env_int("RANK", 0))
    parser.add_argument("--world-size", type=int, default=_env_int("WORLD_SIZE", 1))
    parser.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        default="stop",
        help="a sample that cannot be composed stops the run, or is skipped",
    )
    parser.set_defaults(run=run_compose_command)


def run_compose_command(args: argparse.Namespace) -> int:
    from mosaic_studio.annotator.compose import ComposeConfig
    from mosaic_studio.annotator.compose_run import convert_subjects200k, run_compose

    config = ComposeConfig(
        size=args.size,
        min_subjects=args.min_subjects,
        max_subjects=args.max_subjects,
        scale=args.scale,
        position=args.position,
        background=args.background,
        plain_colour=args.plain_colour,
        resample=args.resample,
        min_visible=args.min_visible,
        min_points=args.min_points,
        token_size=args.token_size,
    )
    data = args.data
    if args.format == "subjects200k":
        if args.media is None:
            raise ValueError("--format subjects200k needs --media DIR for the converted samples")
        skipped = convert_subjects200k(
            args.data, args.media, token_size=args.token_size, panel_size=args.panel_size, padding=args.padding
        )
        for reason in skipped:
            print(f"skipped pair: {reason}")
        data = args.media
    counts, _ = run_compose(
        data,
        args.out,
        args.num,
        seed=args.seed,
        config=config,
        rank=args.rank,
        world_size=args.world_size,
        on_error=args.on_error,
    )
    print(f"rank {args.rank}: composed {counts.done}, already done {counts.present}, skipped {counts.failed}")
    return 0


# --- requests ---------------------------------------------------------------------------------


def add_requests_command(commands) -> None:
    from mosaic_studio.annotator.photos import DEFAULT_MAX_SIDE, PAIRINGS
    from mosaic_studio.mosaic.data.semalign import CATEGORIES

    parser = commands.add_parser("requests", help="proposal requests from folders of photos, one folder per subject")
    parser.add_argument("--photos", type=Path, required=True, help="one folder per subject, two or more photos each")
    parser.add_argument("--out", type=Path, required=True, help="folder of request folders for propose (resumable)")
    parser.add_argument(
        "--category", choices=CATEGORIES, default="object", help="where a subject.json does not say (default object)"
    )
    parser.add_argument(
        "--pairs",
        choices=PAIRINGS,
        default="all",
        help="all: every ordered pair of a subject's photos; next: each photo with the next as reference",
    )
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="longer side of the stored images")
    parser.set_defaults(run=run_requests)


def run_requests(args: argparse.Namespace) -> int:
    from mosaic_studio.annotator.photos import make_requests

    written, present = make_requests(
        args.photos, args.out, category=args.category, pairing=args.pairs, max_side=args.max_side
    )
    print(f"wrote {written} requests to {args.out}" + (f"; {present} already there" if present else ""))
    return 0
