"""Hyperparameter sweeps with Ray Tune: search, stop weak trials early, retrain the best.

    python scripts/tune.py --preset quick --samples 8               # Quiz 14, ASHA, Optuna
    python scripts/tune.py --preset full --samples 40 --name full40
    python scripts/tune.py --preset widths --searcher grid --no-early-stopping
    python scripts/tune.py --name full40 --resume                   # continue an interrupted one
    python scripts/tune.py --address 10.0.0.5:6379 --gpus-per-trial 0.25
    python scripts/tune.py --retrain-only runs/sweeps/full40         # retrain and test the best
    python scripts/tune.py --smoke                                   # seconds: checks the pipeline

Every sweep writes into ``runs/sweeps/<name>``: one TensorBoard run per trial (open them with
``tensorboard --logdir runs/sweeps/<name>``), ``trials.csv`` and ``best.yaml``, which the
assignment's script (``scripts/quiz14.py`` or ``scripts/assignment1.py``) reads with
``--config``. Presets:

{presets}
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Collection

from assignments.config import default_data_dir
from assignments.sweeps import (
    ASSIGNMENTS,
    SEARCHERS,
    TUTORIAL_VAL_ACC,
    SweepError,
    SweepInterrupted,
    SweepSettings,
    preview_points,
    retrain_best,
    run_sweep,
    top_table,
)
from data_modules.errors import DataFileError, DatasetNotFoundError

SMOKE = {"samples": 2, "max_epochs": 2, "grace_period": 1, "train_subset": 256,
         "val_subset": 128, "retrain_epochs": 1}


def _presets_help() -> str:
    lines = []
    for assignment in ASSIGNMENTS.values():
        for preset in assignment.presets.values():
            text = f"{assignment.name} {preset.name}: {preset.description}"
            lines.append(textwrap.fill(text, 95, initial_indent="- ", subsequent_indent="  "))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = SweepSettings.__dataclass_fields__
    parser = argparse.ArgumentParser(
        description=__doc__.format(presets=_presets_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--assignment", choices=sorted(ASSIGNMENTS), default="quiz14")
    add("--preset", default=defaults["preset"].default, help="search space (see above)")
    add("--name", help="sweep folder under --runs-dir (default: a new time-stamped one)")
    add("--runs-dir", default=defaults["runs_dir"].default, help="root folder of all sweeps")
    add("--samples", type=int, help="trials (grid: passes over the grid); default 20 (grid 1)")
    add("--searcher", choices=SEARCHERS, default=defaults["searcher"].default)
    add("--seed", type=int, default=0, help="seed of the searcher and of every trial")
    add("--no-early-stopping", dest="early_stopping", action="store_false",
        help="run every trial for all epochs instead of stopping weak ones with ASHA")
    add("--max-epochs", type=int, default=defaults["max_epochs"].default,
        help="epochs of a trial that runs to the end")
    add("--grace-period", type=int, default=defaults["grace_period"].default,
        help="epochs before ASHA may stop a trial")
    add("--reduction-factor", type=float, default=defaults["reduction_factor"].default,
        help="ASHA keeps the best 1/factor of the trials at each rung")
    add("--cpus-per-trial", type=float, help="CPUs of each trial (default: an equal share)")
    add("--gpus-per-trial", type=float,
        help="GPUs of each trial, fractions allowed (default: up to 4 trials per GPU, 0 without)")
    add("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    add("--address", help="join this running Ray cluster instead of starting a local Ray")
    add("--data-dir", default=default_data_dir(),
        help="dataset folder (default: $DATA_DIR or ./data)")
    add("--train-subset", type=int, help="train each trial on only this many images")
    add("--val-subset", type=int, help="validate each trial on only this many images")
    add("--batch-size", type=int, help="images per training batch (default: the assignment's)")
    add("--retrain-epochs", type=int, default=defaults["retrain_epochs"].default,
        help="epochs of the retraining of the best config")
    add("--top", type=int, default=defaults["top"].default, help="trials in the summary")
    add("--resume", action="store_true", help="continue the interrupted sweep --name")
    add("--retrain", action="store_true", help="after the sweep, retrain and test the best")
    add("--retrain-only", metavar="SWEEP_DIR",
        help="only retrain and test the best config of this finished sweep")
    add("--dry-run", action="store_true",
        help="print the points the searcher would try first, then exit without training")
    add("--smoke", action="store_true",
        help="2 trials of 2 epochs of a few batches on a subset: checks the pipeline; "
             "options given on the command line keep their values")
    return parser


def given_options(argv: list[str]) -> set[str]:
    """The destinations of the options that ``argv`` sets explicitly."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def settings_from_args(args: argparse.Namespace,
                       given: Collection[str] = ()) -> SweepSettings:
    """The sweep settings of parsed command-line options.

    Smoke mode shrinks the options that are not in ``given``; those keep their values, and
    its epochs grow to a given grace period.
    """
    values = {k: v for k, v in vars(args).items()
              if k not in ("resume", "retrain", "retrain_only", "dry_run")}
    if args.smoke:
        for key, value in SMOKE.items():
            if key not in given:
                values[key] = value
        if "max_epochs" not in given:
            values["max_epochs"] = max(values["max_epochs"], values["grace_period"])
    if args.resume and not args.name:
        raise SweepError("--resume needs the --name of the sweep to continue")
    return SweepSettings(**values)


def _print_retrain(config, result) -> None:
    metrics = result.metrics
    print(f"Retrained best config for {config.epochs} epochs: test accuracy "
          f"{metrics['test/acc']:.4f}, best val accuracy {metrics['val/acc_best']:.4f} "
          f"(tutorial: {TUTORIAL_VAL_ACC}); run {result.run_dir}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.retrain_only:
            config, result = retrain_best(args.retrain_only, smoke=args.smoke)
            _print_retrain(config, result)
            return 0
        settings = settings_from_args(args, given_options(argv))
        if args.dry_run:
            for point in preview_points(settings, settings.trial_count):
                print(point)
            return 0
        result = run_sweep(settings, resume=args.resume)
        print(top_table(result, settings.top))
        count = len(result.trials)
        budget = count * result.settings.max_epochs  # a resumed sweep keeps its own
        print(f"{count} trial{'s' * (count != 1)}, {result.epochs_spent} of {budget} epochs "
              f"({result.epochs_spent / budget:.2f} of running every trial to the end), "
              f"{result.wall_seconds:.0f} s; best val accuracy {result.best.val_acc:.4f} "
              f"(tutorial: {TUTORIAL_VAL_ACC})")
        print(f"Sweep written to {result.sweep_dir} "
              f"(tensorboard --logdir {result.sweep_dir}); best config: "
              f"{result.sweep_dir / 'best.yaml'}")
        if args.retrain:
            config, run = retrain_best(result.sweep_dir, smoke=args.smoke)
            _print_retrain(config, run)
    except SweepInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except (SweepError, DataFileError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
