"""Assignment 1: train and test a CIFAR-10 classifier (the fast network or the baseline).

    python scripts/assignment1.py                          # the fast network, 10 epochs
    python scripts/assignment1.py --network convnet        # the Quiz 14 family baseline
    python scripts/assignment1.py --report-dir assignments/reports/assignment1
    python scripts/assignment1.py --widths 32 64 128 --stem-channels 16 --epochs 3
    python scripts/assignment1.py --config my_run.yaml --epochs 3
    python scripts/assignment1.py --smoke                  # seconds: checks the pipeline

Each run writes TensorBoard events, its best checkpoint, its figures and ``results.md`` under
``runs/assignment1/version_N``; open them with ``tensorboard --logdir runs``. The CIFAR-10
copy in ``../shared/data`` was JPEG-compressed, so its accuracies are close to, not equal to,
those on the official files.
"""

from __future__ import annotations

import logging
import sys

from assignments.assignment1 import Assignment1Config, train_and_test
from assignments.config import parse_config
from data_modules.errors import DataFileError, DatasetNotFoundError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_config(Assignment1Config, __doc__.split("\n")[0], argv)
    command = None
    if argv is not None:
        command = " ".join(["python", "scripts/assignment1.py", *argv])
    try:
        result = train_and_test(config, command=command)
    except (DataFileError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = result.metrics
    print(f"{config.network}: test accuracy {metrics['test/acc']:.4f}, test loss "
          f"{metrics['test/loss']:.4f}, best val accuracy {metrics['val/acc_best']:.4f}, fit "
          f"{result.fit_seconds:.0f} s, {result.train_images_per_second:.0f} train images/s "
          "(JPEG-compressed CIFAR-10 copy)")
    print(f"Run written to {result.run_dir} (tensorboard --logdir {config.runs_dir})")
    if "report_dir" in result.extras:
        print(f"Report written to {result.extras['report_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
