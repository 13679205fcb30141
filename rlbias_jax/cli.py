"""`rlbias` — the command line.

    rlbias run CONFIG       probe extractability, run the RL sweep, evaluate, report
    rlbias train CONFIG     the RL sweep only (no probing)
    rlbias probe CONFIG     extractability (MDL) only
    rlbias report RUN_DIR…  (re)write report.md/report.html from run directories
    rlbias validate CONFIG  check a config and print the resolved values
    rlbias reproduce RUN_DIR  re-run a finished run from its saved config and compare results.csv

User errors (bad config, existing run directory, missing files) print one line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="a TOML config, e.g. configs/toy_default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override, metavar="SECTION.KEY=VALUE",
                        help="override one config field (TOML value syntax), e.g. --set sweep.seeds=3; repeatable")
    parser.add_argument("--out-dir", default=None, help="parent folder of run directories (default: run.out_dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlbias", description="Is RL fine-tuning biased towards more extractable features? (Cruz et al. 2023, in JAX)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (("run", "probe extractability, run the RL sweep, evaluate and write the report"),
                            ("train", "run the RL sweep and evaluation only (no MDL probing)")):
        command = commands.add_parser(name, help=help_text, description=help_text)
        _add_config_arguments(command)
        command.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
        command.add_argument("--overwrite", action="store_true", help="replace an existing run directory of the same name")
        command.add_argument("--no-report", action="store_true", help="skip writing report.md/report.html")

    probe = commands.add_parser("probe", help="measure extractability (MDL online code) only", description="measure extractability (MDL online code) only")
    _add_config_arguments(probe)
    probe.add_argument("--overwrite", action="store_true", help="replace an existing run directory of the same name")

    report = commands.add_parser("report", help="write report.md/report.html from run directories", description="write report.md/report.html from run directories")
    report.add_argument("run_dirs", nargs="+", type=Path, help="one or more runs/<name> directories")
    report.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first run directory)")
    report.add_argument("--include-censored", action="store_true",
                        help="H1 includes tasks whose extractability is censored (flagged), as eval.h1_include_censored = true")

    reproduce = commands.add_parser("reproduce", help="re-run a finished run from its saved config and compare its results.csv",
                                    description="re-run a finished run from its saved config and compare its results.csv "
                                                "(bitwise on the same platform and package versions, else against the seed "
                                                "standard error); writes RUN_DIR/reproduce.json (docs/reproduce.md)")
    reproduce.add_argument("run_dir", type=Path, help="a finished runs/<name> directory")
    reproduce.add_argument("--runs", type=int, default=None, metavar="K",
                           help="re-run only K runs, chosen deterministically (evenly spaced in task, rate, seed order)")
    reproduce.add_argument("--keep", action="store_true", help="keep the re-run's directory (a hidden sibling of RUN_DIR)")

    validate = commands.add_parser("validate", help="check a config and print the resolved values", description="check a config and print the resolved values")
    _add_config_arguments(validate)
    return parser


def _load(args):
    from rlbias_jax.config import load_config

    return load_config(args.config, dict(args.overrides))


def _user_errors() -> tuple[type, ...]:
    from rlbias_jax.checkpoints import CheckpointError
    from rlbias_jax.config import ConfigError
    from rlbias_jax.runs import RunDirError

    errors: list[type] = [ConfigError, RunDirError, CheckpointError, FileNotFoundError]
    try:
        from rlbias_jax.analysis import ReportError

        errors.append(ReportError)
    except ImportError:
        pass
    try:
        from rlbias_jax.models.loading import ModelLoadError

        errors.append(ModelLoadError)
    except ImportError:
        pass
    try:
        from rlbias_jax.tasks.corpus import NLDataError

        errors.append(NLDataError)
    except ImportError:
        pass
    return tuple(errors)


def _dispatch(args) -> int:
    if args.command == "validate":
        from rlbias_jax.experiments.runner import check_inputs

        config = _load(args)
        check_inputs(config)
        print(json.dumps(config.to_dict(), indent=2, default=list))
        return 0
    if args.command in ("run", "train"):
        from rlbias_jax.experiments.runner import run_experiment

        config = _load(args)
        run_experiment(config, resume=args.resume, overwrite=args.overwrite, out_dir=args.out_dir,
                       probe=False if args.command == "train" else None, report=False if args.no_report else None)
        return 0
    if args.command == "probe":
        from rlbias_jax.experiments.runner import probe_only

        run_dir = probe_only(_load(args), overwrite=args.overwrite, out_dir=args.out_dir)
        print(f"extractability table: {run_dir / 'extractability.csv'}")
        return 0
    if args.command == "report":
        from rlbias_jax.analysis import write_report

        path = write_report(list(args.run_dirs), args.out, include_censored=True if args.include_censored else None)
        print(f"report: {path}")
        return 0
    if args.command == "reproduce":
        from rlbias_jax.experiments.reproduce import reproduce, verdict_lines

        document = reproduce(args.run_dir, args.runs, keep=args.keep)
        for line in verdict_lines(document):
            print(line)
        print(f"written: {args.run_dir / 'reproduce.json'}")
        return 0 if document["verdict"] == "reproduced" else 1
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except _user_errors() as error:
        message = " ".join(str(error).split())  # one line, whatever the exception carried
        print(f"rlbias: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlbias: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
