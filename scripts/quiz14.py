"""Quiz 14: train and test the specified MNIST network, or compare activations.

    python scripts/quiz14.py                              # the specified (sigmoid) network
    python scripts/quiz14.py --activation relu            # the same network with relu
    python scripts/quiz14.py --compare sigmoid relu --report-dir assignments/reports/quiz14
    python scripts/quiz14.py --config my_run.yaml --epochs 3
    python scripts/quiz14.py --smoke                      # seconds: checks the pipeline

Each run writes TensorBoard events, its best checkpoint and its figures under
``runs/quiz14/version_N``; open them with ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from assignments.config import parse_config
from assignments.quiz14 import Quiz14Config, compare_activations, train_and_test
from data_modules.errors import DataFileError, DatasetNotFoundError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_config(Quiz14Config, __doc__.split("\n")[0], argv)
    try:
        if config.compare:
            out_dir = Path(config.report_dir or Path(config.runs_dir) / config.name / "compare")
            results = compare_activations(config, out_dir)
            for activation, result in results.items():
                print(f"{activation}: test accuracy {result.metrics['test/acc']:.4f}, "
                      f"run {result.run_dir}")
            print(f"Comparison written to {out_dir.resolve()}")
        else:
            result = train_and_test(config)
            print(f"{config.activation}: test accuracy {result.metrics['test/acc']:.4f}, "
                  f"test loss {result.metrics['test/loss']:.4f}, best val accuracy "
                  f"{result.metrics['val/acc_best']:.4f}, fit {result.fit_seconds:.0f} s, "
                  f"{result.train_images_per_second:.0f} train images/s")
            print(f"Run written to {result.run_dir} (tensorboard --logdir {config.runs_dir})")
    except (DataFileError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
