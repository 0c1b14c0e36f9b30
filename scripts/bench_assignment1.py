"""Assignment 1 benchmark: pipeline throughput ratio, and test accuracy under a time budget.

    python scripts/bench_assignment1.py                    # throughput: Lightning vs plain loop
    python scripts/bench_assignment1.py --batches 20 --repeats 3
    python scripts/bench_assignment1.py --no-throughput --budget-minutes 10 \\
        --report-dir assignments/reports/assignment1        # fast net and baseline, 10 min each

Both modes use the fast network with ``--widths``/``--stem-channels``/``--depth`` (defaults
sized for a 2-core CPU) and float32: on CPUs without AMX, bf16 autocast was measured about
nine times slower than float32. Run it with ``nice -n 10`` on a shared machine; the figures
depend on the machine's load, so quote them with the machine line this script prints.
The CIFAR-10 copy in ``../shared/data`` was JPEG-compressed before it reached us, so its
accuracies are close to, not equal to, those on the official files.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from assignments.assignment1 import JPEG_NOTE, Assignment1Config
from assignments.assignment1_benchmark import budget_run, compare_throughput
from assignments.config import default_data_dir
from assignments.reporting import markdown_table
from assignments.training import environment_summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=default_data_dir(),
                        help="folder holding cifar-10-batches-py")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128],
                        help="fast net: channels of each block")
    parser.add_argument("--stem-channels", type=int, default=16, help="fast net: stem channels")
    parser.add_argument("--depth", type=int, default=2, help="fast net: convolutions per block")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="fast net: training batch (the baseline keeps its preset)")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--precision", default="32-true", help="numeric precision")
    parser.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the Lightning / plain loop throughput ratio")
    parser.add_argument("--batches", type=int, default=12, help="batches per throughput run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per run")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs of each loop")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="train each of --networks for this long and report test accuracy")
    parser.add_argument("--networks", nargs="+", default=["fast", "convnet"],
                        choices=["fast", "convnet"], help="networks of the budget mode")
    parser.add_argument("--runs-dir", default="runs", help="folder of the budget runs")
    parser.add_argument("--report-dir", default=None, help="where budget runs copy their report")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    return parser.parse_args(argv)


def fast_config(args: argparse.Namespace, **overrides: object) -> Assignment1Config:
    options: dict[str, object] = {
        "network": "fast", "data_dir": args.data_dir, "download": False,
        "widths": tuple(args.widths), "stem_channels": args.stem_channels, "depth": args.depth,
        "batch_size": args.batch_size, "accelerator": args.accelerator,
        "precision": args.precision, "seed": args.seed}
    options.update(overrides)
    return Assignment1Config(**options)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/bench_assignment1.py",
                          *(sys.argv[1:] if argv is None else argv)])
    print(f"Machine and versions: {environment_summary()}")
    print(f"Command: {command}")
    if args.throughput:
        config = fast_config(args)
        result = compare_throughput(config, args.batches, args.warmup, args.repeats)
        print(f"Fast net {config.widths}, depth {config.depth}, batch {config.batch_size}, "
              f"{args.batches} batches ({args.warmup} untimed) x {args.repeats} runs each:")
        print("  plain PyTorch loop: " + ", ".join(f"{v:.1f}" for v in result["plain"])
              + f" images/s (median {result['plain_median']:.1f})")
        print("  Lightning pipeline: " + ", ".join(f"{v:.1f}" for v in result["lightning"])
              + f" images/s (median {result['lightning_median']:.1f})")
        print(f"  throughput ratio Lightning / plain: {result['ratio']:.3f}")
    if args.budget_minutes is not None:
        rows = []
        for network in args.networks:
            overrides: dict[str, object] = {
                "network": network, "val_subset": 1000, "runs_dir": args.runs_dir,
                "name": "assignment1_budget", "report_dir": args.report_dir}
            if network == "convnet":
                overrides["batch_size"] = None  # The baseline's own preset.
            outcome = budget_run(fast_config(args, **overrides), args.budget_minutes,
                                 command=command)
            rows.append((network, outcome["parameters"], outcome["epochs"],
                         outcome["train_images"], f"{outcome['fit_seconds']:.0f}",
                         f"{outcome['train_images_per_s']:.0f}", outcome["test_acc"],
                         outcome["val_acc_best"]))
            print(f"{network}: test accuracy {outcome['test_acc']:.4f} after "
                  f"{outcome['fit_seconds']:.0f} s of training (run {outcome['run_dir']})")
        table = markdown_table(["network", "weights", "epochs", "training images", "fit s",
                                "train images/s", "test accuracy", "best val accuracy"], rows)
        print(f"\nTime budget {args.budget_minutes:g} min per network:\n{table}")
        if args.report_dir:
            path = Path(args.report_dir) / "budget_results.md"
            path.write_text(f"# Test accuracy after {args.budget_minutes:g} min of training\n\n"
                            f"{table}\nMachine and versions: {environment_summary()}.\n\n"
                            f"Command: `{command}`\n\n{JPEG_NOTE}\n")
            print(f"Written to {path}")
    print(JPEG_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
