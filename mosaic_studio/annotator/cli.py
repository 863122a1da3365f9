"""Command line of the annotator: `python -m mosaic_studio.annotator COMMAND`.

  requests proposal requests from folders of photos of one's own subjects
  propose  propose correspondences for a data folder (resumable, sharded by rank)
  import   register samples in a review store (project format, synthetic world, Subjects200K)
  sample   mark the stratified verification sample in a review store
  report   point error rate per stratum and overall, and inter-annotator agreement
  export   accepted samples as training data, or Label Studio JSON
  compose  multi-subject samples from single-subject ones (resumable, sharded by rank)

Each command is a function that adds its subparser and sets `run`; a new command is one more
entry in COMMANDS (requests, propose, import, export and compose live in annotator.cli_data).
An unknown command gets argparse's usual error.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Sequence

from mosaic_studio.annotator.cli_data import (
    add_compose_command,
    add_export_command,
    add_import_command,
    add_propose_command,
    add_requests_command,
)
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.annotator.verify import (
    DEFAULT_FRACTION,
    ErrorRate,
    ErrorReport,
    cohens_kappa,
    error_report,
    format_stratum,
    observed_agreement,
    stratified_sample,
)
from mosaic_studio.annotator.weights import MissingWeightsError

DEFAULT_ACTOR = "cli"  # who the audit log says marked the sample, unless --actor says
EXIT_ERROR = 1  # a usage error is argparse's 2


def _add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="review store (SQLite file); must exist")


# --- sample -----------------------------------------------------------------------------------


def add_sample_command(commands) -> None:
    parser = commands.add_parser("sample", help="mark the stratified verification sample")
    _add_store_argument(parser)
    parser.add_argument(
        "--fraction",
        type=float,
        default=DEFAULT_FRACTION,
        help="share of each stratum, rounded up (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--actor", default=DEFAULT_ACTOR, help="name for the audit log")
    parser.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    with ReviewStore(args.store, create=False) as store:
        population = store.sample_strata()
        chosen = set(stratified_sample(population, args.fraction, args.seed))
        store.mark_sampled(sorted(chosen), actor=args.actor, params={"fraction": args.fraction, "seed": args.seed})
    sizes = Counter(stratum for _, stratum in population)
    picked = Counter(stratum for sample_id, stratum in population if sample_id in chosen)
    print(f"{'stratum':<40} {'samples':>8} {'chosen':>7}")
    for stratum in sorted(sizes):
        print(f"{format_stratum(stratum):<40} {sizes[stratum]:>8} {picked[stratum]:>7}")
    print(f"{'total':<40} {len(population):>8} {len(chosen):>7}")
    return 0


# --- report -----------------------------------------------------------------------------------


def add_report_command(commands) -> None:
    parser = commands.add_parser("report", help="error rates per stratum and agreement")
    _add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--all", action="store_true", help="use every reviewed sample, not only the stratified sample")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    with ReviewStore(args.store, create=False, read_only=True) as store:  # reads: works on a read-only store
        report = error_report(store.verdict_rows(sampled_only=not args.all))
        pairs = store.verdict_pairs(sampled_only=not args.all)
    agreement = None
    if pairs:  # κ only where two annotators judged the same points
        kappa = cohens_kappa(pairs)
        agreement = {
            "pairs": len(pairs),
            "observed": observed_agreement(pairs),
            "kappa": None if math.isnan(kappa) else kappa,
        }
    scope = "all reviewed samples" if args.all else "stratified sample"
    if args.json:
        print(json.dumps(_report_json(report, agreement, scope), indent=2, ensure_ascii=False))
    else:
        print(_report_table(report, agreement, scope))
    return 0


def _report_json(report: ErrorReport, agreement: dict | None, scope: str) -> dict:
    return {
        "scope": scope,
        "strata": [
            {"subjects": stratum[0], "categories": list(stratum[1]), **rate.as_dict()}
            for stratum, rate in report.strata.items()
        ],
        "overall": report.overall.as_dict(),
        "agreement": agreement,
    }


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.2f}%"


def _table_row(label: str, rate: ErrorRate) -> str:
    interval = f"[{_percent(rate.low)}, {_percent(rate.high)}]"
    return (
        f"{label:<40} {rate.samples:>7} {rate.judged:>7} {rate.wrong:>6} {rate.unsure:>6} "
        f"{_percent(rate.rate):>8}  {interval}"
    )


def _report_table(report: ErrorReport, agreement: dict | None, scope: str) -> str:
    lines = [
        f"Point error rate = wrong / judged (unsure not judged), Wilson 95% CI; {scope}",
        f"{'stratum':<40} {'samples':>7} {'judged':>7} {'wrong':>6} {'unsure':>6} {'rate':>8}  95% CI",
    ]
    lines += [_table_row(format_stratum(stratum), rate) for stratum, rate in report.strata.items()]
    lines.append(_table_row("overall", report.overall))
    if agreement is not None:
        kappa = "undefined (one label throughout)" if agreement["kappa"] is None else (f"{agreement['kappa']:.3f}")
        lines.append(
            f"Agreement on {agreement['pairs']} doubly-judged points: Cohen's κ = "
            f"{kappa}, observed agreement {_percent(agreement['observed'])}"
        )
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------

COMMANDS: list[Callable] = [
    add_requests_command,
    add_propose_command,
    add_import_command,
    add_sample_command,
    add_report_command,
    add_export_command,
    add_compose_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_studio.annotator", description="MOSAIC correspondence annotation tools"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, sqlite3.Error, MissingWeightsError) as error:  # a message, not a traceback
        # One line: store and sample errors name what is wrong; an OSError or SQLite error
        # (a read-only store given to a writing command, a full disk) says so itself.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
