"""Benchmark: the same sweep with ASHA early stopping and without it.

    python scripts/bench_tune.py --preset quick --samples 12 --max-epochs 9 --num-cpus 2 \\
        --report assignments/reports/sweeps/bench.md
    python scripts/bench_tune.py --smoke

Both sweeps use the same preset, trial count, seed and random searcher, so they try the same
points; they differ only in the scheduler. Printed per sweep: trials, epochs spent (and the
ratio of ASHA's to the full budget), wall time and the best validation accuracy, against the
tutorial's 0.9877. The goal is that ASHA reaches that accuracy with at most a third of the
epochs. This prints figures; it is not a timed test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from datetime import datetime
from pathlib import Path

import ray

from assignments.reporting import markdown_table
from assignments.sweeps import TUTORIAL_VAL_ACC, SweepError, SweepSettings, run_sweep
from assignments.training import environment_summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assignment", default="quiz14")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--val-subset", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--data-dir", default=SweepSettings().data_dir)
    parser.add_argument("--runs-dir", default="runs/bench_tune")
    parser.add_argument("--report", help="also write the figures as markdown to this file")
    parser.add_argument("--smoke", action="store_true", help="2 trials of 2 short epochs")
    args = parser.parse_args(argv)

    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    base = SweepSettings(
        assignment=args.assignment, preset=args.preset, samples=args.samples,
        searcher="random", seed=args.seed, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        train_subset=args.train_subset, val_subset=args.val_subset,
        batch_size=args.batch_size, num_cpus=args.num_cpus, data_dir=args.data_dir,
        runs_dir=args.runs_dir, name=f"asha-{stamp}", smoke=args.smoke,
    )
    if args.smoke:
        base = dataclasses.replace(base, samples=2, max_epochs=2, train_subset=256,
                                   val_subset=128)
    runs = {"ASHA": base,
            "no early stopping": dataclasses.replace(base, early_stopping=False,
                                                     name=f"full-{stamp}")}
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             log_to_driver=False)
    try:
        results = {label: run_sweep(settings) for label, settings in runs.items()}
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()

    budget = base.trial_count * base.max_epochs
    rows = []
    for label, result in results.items():
        best = result.best
        rows.append((label, len(result.trials), result.epochs_spent,
                     f"{result.epochs_spent / budget:.2f}", f"{result.wall_seconds:.0f}",
                     best.val_acc, best.point, str(result.sweep_dir)))
    table = markdown_table(["scheduler", "trials", "epochs", "epochs / full budget", "wall s",
                            "best val acc", "best point", "sweep folder"], rows)
    asha = results["ASHA"]
    goal = (asha.best.val_acc >= TUTORIAL_VAL_ACC and asha.epochs_spent * 3 <= budget)
    subset = (f"train subset {base.train_subset}, val subset {base.val_subset}"
              if base.train_subset or base.val_subset else "full training split")
    text = (
        f"{table}\nPreset {base.preset}, {base.samples} trials, up to {base.max_epochs} "
        f"epochs, grace {base.grace_period}, reduction factor {base.reduction_factor}, seed "
        f"{base.seed}, random search, {subset}.\n"
        f"Goal (ASHA at least {TUTORIAL_VAL_ACC} with at most a third of the epochs): "
        f"{'met' if goal else 'not met'}.\n"
        f"Machine and versions: {environment_summary()}, ray {ray.__version__}.\n"
        f"Command: `{shlex.join(['python', 'scripts/bench_tune.py', *(argv or sys.argv[1:])])}`\n"
    )
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
