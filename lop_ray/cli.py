"""`lop-ray`: the command line. Bad input exits with status 2 and a message naming file and key,
before Ray starts."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from lop_ray.data.idx import DataFormatError
from lop_ray.data.shards import DATASETS
from lop_ray.schema import Sweep, SweepError, load_sweep

EXIT_BAD_INPUT = 2
EXIT_TRIALS_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lop-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="validate and run a sweep file")
    sweep.add_argument(
        "files",
        nargs="+",
        metavar="file",
        help="sweep YAML (see sweeps/); several run one after another, all validated before the first starts",
    )
    sweep.add_argument("--storage", help="results location, overriding the file's `storage`")
    sweep.add_argument("--check", action="store_true", help="validate and list the trials; run nothing")
    sweep.add_argument("--quiet", action="store_true", help="no progress display (for job logs)")

    resume = commands.add_parser("resume", help="continue an interrupted sweep from its checkpoints")
    resume.add_argument("results_dir", help="the sweep's results directory (<storage>/<name>)")
    resume.add_argument("--quiet", action="store_true", help="no progress display (for job logs)")

    report = commands.add_parser("report", help="figures (PNG, SVG) and curves.csv from a sweep's results")
    report.add_argument(
        "results_dir",
        nargs="+",
        help="a sweep's results directory (<storage>/<name>); several: drawn together",
    )
    report.add_argument("--out", help="where the figures go (default: the results directory)")
    report.add_argument(
        "--panels",
        action="store_true",
        help="one panel per results directory (its headline curves), all in OUT/panels.png: a suite "
        "of sweeps side by side (default OUT: the directories' common parent)",
    )
    report.add_argument("--export", metavar="OUT_DIR", help="also write OUT_DIR/curves.csv")
    report.add_argument(
        "--figure",
        action="append",
        metavar="NAME",
        help="draw only this paper figure (repeatable; default: every figure of the problem and the "
        "headline curve); an unknown name lists the allowed ones",
    )

    data = commands.add_parser("data", help="prepare datasets from their official files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="raw files → checksummed shards + manifest.json, read by the trials"
    )
    prepare.add_argument("dataset", choices=DATASETS)
    prepare.add_argument(
        "--src",
        help="the official files: mnist, the directory holding MNIST/raw/; cifar100, the one holding "
        "cifar-100-python/; imagenet32, the one holding classes/<c>.npy or train_data_batch_*",
    )
    prepare.add_argument("--dest", required=True, help="directory to write the shards into")

    server = commands.add_parser(
        "mlflow-server", help="the MLflow tracking server for a cluster's sweeps (binds 127.0.0.1)"
    )
    server.add_argument("--dir", help="where the default sqlite store and artifacts go (~/lop-ray-mlflow)")
    server.add_argument("--backend-store-uri", help="e.g. postgresql://user@host/db (default: sqlite)")
    server.add_argument("--artifact-root", help="a directory or s3://bucket/prefix (default: in --dir)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1 only)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--workers", type=int, default=4, help="server processes")

    status = commands.add_parser("status", help="per trial: state, progress, checkpoint, MLflow run, errors")
    status.add_argument("results_dir", help="the sweep's results directory or s3:// URI")

    args = parser.parse_args(argv)
    if args.command == "data":
        return _prepare(args.dataset, args.src, args.dest)
    if args.command == "mlflow-server":
        from lop_ray.mlflow_server import serve

        serve(args.dir, args.backend_store_uri, args.artifact_root, args.host, args.port, args.workers)
    try:
        if args.command == "report":
            if args.panels:
                return _panels(args.results_dir, args.out)
            return _report(args.results_dir, args.out, args.export, args.figure)
        if args.command == "status":
            from lop_ray.status import print_status

            return print_status(args.results_dir)
        if args.command == "sweep":
            specs = _load_all(args.files, args.storage)
            if args.check:
                for spec in specs:
                    print(f"{spec.path}: valid; {trial_count(spec)}")
                return 0
            from lop_ray.sweep import run_sweeps  # imports Ray: only once the input is known good

            outcomes = run_sweeps(specs, quiet=args.quiet)
            return EXIT_TRIALS_FAILED if any(outcome.errors for outcome in outcomes) else 0
        else:
            from lop_ray.sweep import resume_sweep

            outcome = resume_sweep(args.results_dir, quiet=args.quiet)
    except SweepError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_TRIALS_FAILED if outcome.errors else 0


def _load_all(files: list[str], storage: str | None) -> list[Sweep]:
    """Every file validated; a SweepError lists the problems of all of them."""
    specs, problems = [], []
    for file in files:
        try:
            specs.append(load_sweep(file, storage=storage))
        except SweepError as error:
            problems += error.problems
    if problems:
        raise SweepError(files[0], problems)
    return specs


def trial_count(sweep: Sweep) -> str:
    """`N trials × K steps`, and where seeds are batched the Tune trials that carry them: `300 trials ×
    100 steps in 3 Tune trials × 100 seeds`, or with a short last group `250 trials × 100 steps in
    3 Tune trials: 2 × 100 seeds + 1 × 50` (Ray-free: `--check` prints it too)."""
    text = f"{len(sweep.trials)} trial{'s' if len(sweep.trials) > 1 else ''} × {sweep.steps_per_trial} steps"
    if sweep.seeds_per_trial == 1:
        return text
    groups = sweep.groups
    tune_trials = f"{len(groups)} Tune trial{'s' if len(groups) > 1 else ''}"
    sizes = sorted(Counter(len(group) for group in groups).items(), reverse=True)  # (seeds, trials)
    if len(sizes) == 1:
        [(seeds, _)] = sizes
        return f"{text} in {tune_trials} × {seeds} seed{'s' if seeds > 1 else ''}"
    parts = [f"{count} × {seeds}" for seeds, count in sizes]
    return f"{text} in {tune_trials}: {parts[0]} seeds + {' + '.join(parts[1:])}"


def _prepare(dataset: str, src: str | None, dest: str) -> int:
    from lop_ray.data.shards import prepare_dataset, read_manifest

    try:
        manifest_path = prepare_dataset(dataset, src, dest)
    except DataFormatError as error:
        print(str(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    manifest = read_manifest(dest)
    for split, arrays in manifest["splits"].items():
        shape = arrays["images"]["shape"]
        print(
            f"{dataset} {split}: {shape[0]:,} images {tuple(shape[1:])}, {len(arrays['images']['shards'])} shard(s)"
        )
    print(f"manifest: {manifest_path}")
    return 0


def _report(results_dirs: list[str], out: str | None, export: str | None, names: list[str] | None) -> int:
    from pathlib import Path

    from lop_ray import figures, report
    from lop_ray.sweep_record import read_sweep_record

    sweep_records = [read_sweep_record(results_dir) for results_dir in results_dirs]
    records = report.load_results(sweep_records)
    if not records:
        print(f"{', '.join(results_dirs)}: no trial has logged a step yet", file=sys.stderr)
        return EXIT_BAD_INPUT
    problems = sorted({r.trial["problem"] for r in records})
    if len(problems) > 1:
        print(
            f"{', '.join(results_dirs)}: sweeps of different problems ({problems}) share no axes",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    problem = problems[0]
    try:
        figures.select(problem, names)
    except ValueError as error:
        print(str(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    names_title = " vs ".join(dict.fromkeys(r.trial["sweep"] for r in records))
    title = f"{names_title}: {problem}"
    from lop_ray.storage import driver_dir

    out_dir = Path(out) if out else driver_dir(results_dirs[0])  # an S3 sweep's: a local directory
    written: list[tuple[Path, str | None]] = []  # (file, MLflow artifact folder)
    if not names:  # the headline curve, as the sweep's end draws it
        figure, _ = report.headline_figure(records, problem, title, out_dir)
        if figure is None:
            print(
                f"{results_dirs[0]}: no trial has reported {report.HEADLINE[problem]['metric']} yet",
                file=sys.stderr,
            )
        else:
            print(f"figure: {figure} and {figure.with_suffix('.svg')}")
            written += [(figure, None), (figure.with_suffix(".svg"), None)]
    for message in figures.unlogged([r.sweep for r in sweep_records], records):
        print(f"missing: {message}", file=sys.stderr)
    for data, paths in figures.draw_figures(records, problem, out_dir / "figures", title, names):
        for message in data.missing:
            print(f"missing: {message}", file=sys.stderr)
        if paths:
            print(f"figure {data.figure.name}: {' and '.join(str(p) for p in paths)}")
            written += [(path, "figures") for path in paths]
        else:
            print(f"figure {data.figure.name}: skipped, no trial has its data", file=sys.stderr)
    _log_figures([r.tracking for r in sweep_records], written)
    if export:
        print(f"curves: {report.export_curves(records, export)}")
    return 0


def _panels(results_dirs: list[str], out: str | None) -> int:
    import os
    from pathlib import Path

    from lop_ray import report

    if out is None and any("://" in d for d in results_dirs):
        print("--panels of remote results needs --out (a local directory)", file=sys.stderr)
        return EXIT_BAD_INPUT
    out_dir = Path(out) if out else Path(os.path.commonpath([os.path.abspath(d) for d in results_dirs]))
    path = report.panels_figure(results_dirs, out_dir / "panels.png")
    if path is None:
        print(f"{', '.join(results_dirs)}: no trial has logged a step yet", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"figure: {path} and {path.with_suffix('.svg')}")
    return 0


def _log_figures(trackings: list[dict], written: list) -> None:
    """Every file drawn, as an artifact of each sweep's parent MLflow run (beside the headline figure
    the sweep's end logs there)."""
    from mlflow.tracking import MlflowClient

    for tracking in trackings:
        client = MlflowClient(tracking["uri"])
        for path, folder in written:
            client.log_artifact(tracking["parent_run_id"], str(path), folder)


if __name__ == "__main__":
    sys.exit(main())
