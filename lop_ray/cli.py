"""`lop-ray`: the command line. Bad input exits with status 2 and a message naming file and key,
before Ray starts."""

from __future__ import annotations

import argparse
import sys

from lop_ray.schema import SweepError, load_sweep

EXIT_BAD_INPUT = 2
EXIT_TRIALS_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lop-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="validate and run a sweep file")
    sweep.add_argument("file", help="sweep YAML (see sweeps/)")
    sweep.add_argument("--storage", help="results location, overriding the file's `storage`")
    sweep.add_argument("--check", action="store_true", help="validate and list the trials; run nothing")
    sweep.add_argument("--quiet", action="store_true", help="no progress display (for job logs)")

    resume = commands.add_parser("resume", help="continue an interrupted sweep from its checkpoints")
    resume.add_argument("results_dir", help="the sweep's results directory (<storage>/<name>)")
    resume.add_argument("--quiet", action="store_true", help="no progress display (for job logs)")

    report = commands.add_parser("report", help="figures (PNG, SVG) and curves.csv from a sweep's results")
    report.add_argument("results_dir", help="the sweep's results directory (<storage>/<name>)")
    report.add_argument("--out", help="where the figures go (default: the results directory)")
    report.add_argument("--export", metavar="OUT_DIR", help="also write OUT_DIR/curves.csv")

    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return _report(args.results_dir, args.out, args.export)
        if args.command == "sweep":
            spec = load_sweep(args.file, storage=args.storage)
            if args.check:
                print(f"{args.file}: valid; {len(spec.trials)} trials × {spec.steps_per_trial} steps")
                return 0
            from lop_ray.sweep import run_sweep  # imports Ray: only once the input is known good

            outcome = run_sweep(spec, quiet=args.quiet)
        else:
            from lop_ray.sweep import resume_sweep

            outcome = resume_sweep(args.results_dir, quiet=args.quiet)
    except SweepError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_TRIALS_FAILED if outcome.errors else 0


def _report(results_dir: str, out: str | None, export: str | None) -> int:
    from pathlib import Path

    from lop_ray import report

    records = report.load_trial_records(results_dir)
    if not records:
        print(f"{results_dir}: no trial has logged a step yet", file=sys.stderr)
        return EXIT_BAD_INPUT
    problem = records[0].trial["problem"]
    name = records[0].trial["sweep"]
    figure, _ = report.headline_figure(results_dir, problem, f"{name}: {problem}", Path(out or results_dir))
    if figure is None:
        print(
            f"{results_dir}: no trial has reported {report.HEADLINE[problem]['metric']} yet", file=sys.stderr
        )
    else:
        print(f"figure: {figure} and {figure.with_suffix('.svg')}")
    if export:
        print(f"curves: {report.export_curves(results_dir, export)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
