"""Hyperparameter sweeps with Ray Tune over the assignments' data modules and networks.

Each trial builds its data module and :class:`ImageClassifier` from a config (the
assignment's defaults, the preset's fixed fields, then the sampled point) and trains them with
a Lightning ``Trainer`` whose ``TuneReportCheckpointCallback`` reports the validation loss and
accuracy at the end of every validation epoch. ASHA stops weak trials early; Optuna's TPE,
random or grid search picks the points. Every trial writes TensorBoard events into its own
folder of the sweep, so ``tensorboard --logdir <sweep folder>`` shows all trials side by side.

A sweep folder holds:

- ``sweep.yaml``: the settings, read back by ``resume``;
- ``trial_<id>/``: Lightning's TensorBoard events (scalars, and hparams whose metrics are
  the best validation figures so far), Ray's ``result.json`` and ``progress.csv``, and the
  latest checkpoint;
- ``trials.csv``: every trial's point, status, epochs and best validation metrics;
- ``best.yaml``: the best point as a config that the assignment's script reads with
  ``--config``, set to retrain for the full epochs on the full training split;
- after :func:`retrain_best`, ``retrain.md`` and the run under ``retrain/``.

Limitations: on a cluster of several machines the runs folder must be shared storage (every
trial writes its events there), and the data folder must exist at the same absolute path on
every machine. Optuna's suggestions depend on the order in which trials finish, so only
random and grid sweeps sample the same points for the same seed whatever the concurrency.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from assignments import assignment1, quiz14
from assignments.config import PrecisionName, default_data_dir, save_config, to_dict
from assignments.reporting import markdown_table
from assignments.search_spaces import (
    ASSIGNMENT1_PRESETS,
    QUIZ14_PRESETS,
    SearchSpace,
    config_fields,
)
from assignments.training import SMOKE_LIMITS, environment_summary
from data_modules.base import TensorImageDataModule
from lightning_modules.classifier import ImageClassifier

log = logging.getLogger(__name__)

# Tune's metric names and the keys ImageClassifier logs them under: the one place they meet.
TUNE_METRICS = {"val_loss": "val/loss", "val_acc": "val/acc", "val_acc_best": "val/acc_best"}
OBJECTIVE = "val_acc"
MODE = "max"
# Validation accuracy of the tutorial's best model (tanh, plain SGD, found by keras-tuner).
TUTORIAL_VAL_ACC = 0.9877
SEARCHERS = ("random", "grid", "optuna")
# Grids larger than this are refused: use random or Optuna search instead.
MAX_GRID = 512
CHECKPOINT_FILE = "checkpoint.ckpt"


class SweepError(Exception):
    """A sweep that cannot start or produced nothing, with the reason and how to fix it."""


class SweepInterrupted(SweepError):
    """A sweep stopped before all its trials finished; ``resume`` continues it."""


@dataclass(frozen=True)
class Assignment:
    """What a sweep needs to know about an assignment.

    Args:
        name: The assignment's name on the command line.
        config_cls: Its config dataclass; a sweep's best point is saved as one.
        build_datamodule: Builds the data module from a config.
        build_model: Builds the LightningModule from a config.
        train_and_test: Trains, tests and writes the figures of a config's run.
        presets: The named search spaces.
        script: The command line that reads ``best.yaml`` with ``--config``.
        precision: The Lightning precision of a config (resolving values such as ``auto``).
    """

    name: str
    config_cls: type
    build_datamodule: Callable[[Any], TensorImageDataModule]
    build_model: Callable[[Any], ImageClassifier]
    train_and_test: Callable[..., Any]
    presets: Mapping[str, SearchSpace]
    script: str
    precision: Callable[[Any], str] = lambda config: str(config.precision)


# A further assignment is one more entry: its config class, builders and presets.
ASSIGNMENTS: dict[str, Assignment] = {
    "quiz14": Assignment(
        name="quiz14",
        config_cls=quiz14.Quiz14Config,
        build_datamodule=quiz14.build_datamodule,
        build_model=quiz14.build_model,
        train_and_test=quiz14.train_and_test,
        presets=QUIZ14_PRESETS,
        script="scripts/quiz14.py",
    ),
    "assignment1": Assignment(
        name="assignment1",
        config_cls=assignment1.Assignment1Config,
        build_datamodule=assignment1.build_datamodule,
        build_model=assignment1.build_model,
        train_and_test=assignment1.train_and_test,
        presets=ASSIGNMENT1_PRESETS,
        script="scripts/assignment1.py",
        precision=lambda config: assignment1.resolve_precision(config.precision,
                                                               config.accelerator),
    ),
}


@dataclass
class SweepSettings:
    """Everything that defines a sweep.

    Args:
        assignment: Key of ``ASSIGNMENTS``.
        preset: Name of one of the assignment's search spaces.
        name: Folder of the sweep under ``runs_dir``; a new time-stamped one when ``None``.
        runs_dir: Root of all sweeps; made absolute.
        samples: Trials to run; for grid search, passes over the whole grid. ``None``: 20
            (random, Optuna) or 1 (grid).
        searcher: ``random``, ``grid`` or ``optuna`` (TPE, seeded).
        seed: Seed of the searcher and of every trial's weights and shuffling.
        early_stopping: Stop weak trials with ASHA; otherwise every trial runs all epochs.
        max_epochs: Epochs of a trial that is not stopped early.
        grace_period: Epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the best 1 / reduction_factor of the trials at each rung.
        cpus_per_trial: CPUs of each trial (fractions allowed); ``None`` derives it.
        gpus_per_trial: GPUs of each trial (fractions allowed); ``None`` derives it.
        num_cpus: CPUs of a local Ray; ``None``: all of this machine's.
        address: Address of a running Ray cluster to join; ``None`` starts a local Ray.
        data_dir: The dataset folder; made absolute and prepared before any trial starts.
        train_subset: Train each trial on only this many images (``None``: all).
        val_subset: Validate each trial on only this many images (``None``: all).
        batch_size: Images per training batch (``None``: the assignment's default).
        retrain_epochs: Epochs of the retraining that ``best.yaml`` asks for.
        smoke: A few batches per epoch: checks the pipeline in seconds.
        top: Trials listed in the printed summary.
    """

    assignment: str = "quiz14"
    preset: str = "quick"
    name: str | None = None
    runs_dir: str = "runs/sweeps"
    samples: int | None = None
    searcher: str = "optuna"
    seed: int = 0
    early_stopping: bool = True
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    num_cpus: int | None = None
    address: str | None = None
    data_dir: str = field(default_factory=default_data_dir)
    train_subset: int | None = None
    val_subset: int | None = None
    batch_size: int | None = None
    retrain_epochs: int = 10
    smoke: bool = False
    top: int = 5

    def __post_init__(self) -> None:
        self.runs_dir = str(Path(self.runs_dir).expanduser().resolve())
        self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        if self.name is None:
            self.name = f"{self.assignment}-{self.preset}-{datetime.now():%Y%m%d-%H%M%S}"
        if self.name in ("", ".", "..") or Path(self.name).name != self.name:
            raise SweepError(
                f"--name {self.name!r} must be a plain folder name inside --runs-dir, "
                "without '/' or '..'"
            )
        if self.samples is None:
            self.samples = 1 if self.searcher == "grid" else 20

    @property
    def sweep_dir(self) -> Path:
        return Path(self.runs_dir) / str(self.name)

    @property
    def space(self) -> SearchSpace:
        return ASSIGNMENTS[self.assignment].presets[self.preset]

    @property
    def trial_count(self) -> int:
        """Trials of the whole sweep: the samples, times the grid's points for grid search."""
        grid = self.space.grid_size() if self.searcher == "grid" else 1
        return (self.samples or 1) * grid


def validate(settings: SweepSettings) -> None:
    """Checks the settings before Ray starts.

    Raises:
        SweepError: An unknown assignment, preset or searcher, or a value out of range; the
            message names the option and its allowed values.
    """
    if settings.assignment not in ASSIGNMENTS:
        raise SweepError(f"unknown assignment {settings.assignment!r}; "
                         f"choose one of {sorted(ASSIGNMENTS)}")
    presets = ASSIGNMENTS[settings.assignment].presets
    if settings.preset not in presets:
        raise SweepError(f"unknown preset {settings.preset!r} of {settings.assignment}; "
                         f"choose one of {sorted(presets)}")
    if settings.searcher not in SEARCHERS:
        raise SweepError(f"unknown searcher {settings.searcher!r}; choose one of {SEARCHERS}")
    checks = [
        (settings.samples is not None and settings.samples >= 1, "samples must be at least 1"),
        (settings.max_epochs >= 1, "max epochs must be at least 1"),
        (settings.retrain_epochs >= 1, "retrain epochs must be at least 1"),
        (1 <= settings.grace_period <= settings.max_epochs,
         f"the grace period must lie in 1 ... max epochs ({settings.max_epochs}), "
         f"got {settings.grace_period}"),
        (settings.reduction_factor > 1,
         f"the reduction factor must exceed 1, got {settings.reduction_factor}"),
        (settings.cpus_per_trial is None or settings.cpus_per_trial > 0,
         f"CPUs per trial must be positive, got {settings.cpus_per_trial}"),
        (settings.gpus_per_trial is None or settings.gpus_per_trial >= 0,
         f"GPUs per trial must be 0 or more, got {settings.gpus_per_trial}"),
        (settings.num_cpus is None or settings.num_cpus >= 1,
         f"the local Ray needs at least 1 CPU, got {settings.num_cpus}"),
        (settings.top >= 1, "top must be at least 1"),
    ]
    for name in ("train_subset", "val_subset", "batch_size"):
        value = getattr(settings, name)
        checks.append((value is None or value >= 1, f"{name} must be at least 1, got {value}"))
    for ok, message in checks:
        if not ok:
            raise SweepError(message)
    if settings.searcher == "grid" and settings.space.grid_size() > MAX_GRID:
        raise SweepError(
            f"the grid of preset {settings.preset!r} has {settings.space.grid_size()} points "
            f"(more than {MAX_GRID}); use --searcher random or optuna"
        )
    check_space(settings.assignment, settings.space)


def check_space(assignment: str, space: SearchSpace) -> None:
    """Checks that every parameter of a space maps to a field of the assignment's config.

    Raises:
        SweepError: A parameter or fixed field names no config field.
    """
    fields = {f.name for f in dataclasses.fields(ASSIGNMENTS[assignment].config_cls)}
    point = {name: param.grid_values()[0] for name, param in space.params.items()}
    unknown = sorted(set(config_fields(point)) - fields) + sorted(set(space.fixed) - fields)
    if unknown:
        raise SweepError(f"preset {space.name!r} sets {unknown}, which are not fields of "
                         f"{assignment}'s config")


def trial_config(assignment: str, base: Mapping[str, Any], point: Mapping[str, Any]) -> Any:
    """The config of one trial: the base fields, then the sampled point.

    Args:
        assignment: Key of ``ASSIGNMENTS``.
        base: Config fields shared by all trials (the preset's fixed fields among them).
        point: The trial's sampled parameters.

    Returns:
        An instance of the assignment's config dataclass.
    """
    return ASSIGNMENTS[assignment].config_cls(**{**base, **config_fields(point)})


def base_fields(settings: SweepSettings, gpus_per_trial: float = 0.0) -> dict[str, Any]:
    """Config fields shared by every trial of a sweep.

    Args:
        settings: The sweep.
        gpus_per_trial: Each trial's share of a GPU; trials train on the GPU when positive.

    Returns:
        The fields, the preset's fixed ones included.
    """
    base: dict[str, Any] = {
        "data_dir": settings.data_dir,
        "download": False,
        "epochs": settings.max_epochs,
        "seed": settings.seed,
        "train_subset": settings.train_subset,
        "accelerator": "gpu" if gpus_per_trial > 0 else "cpu",
        "smoke": settings.smoke,
    }
    if settings.batch_size is not None:
        base["batch_size"] = settings.batch_size
    base.update(settings.space.fixed)
    return base


@dataclass(frozen=True)
class Resources:
    """What each trial gets and how many run at once."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int


def plan_resources(settings: SweepSettings, cpus: float, gpus: float) -> Resources:
    """Derives each trial's share of the machine or cluster, and the concurrency.

    Without a GPU each trial gets an equal share of the CPUs, at least one. With GPUs, up to
    four trials share each GPU, as small networks leave a GPU mostly idle.

    Args:
        settings: The sweep; explicit ``cpus_per_trial`` and ``gpus_per_trial`` win.
        cpus: CPUs of the machine or cluster.
        gpus: GPUs of the machine or cluster.

    Returns:
        The per-trial resources and the number of trials run at once.

    Raises:
        SweepError: GPUs are requested where there are none, or a trial asks for more than
            the machine or cluster has, so it would wait forever.
    """
    samples = settings.trial_count
    wanted_gpus = settings.gpus_per_trial
    if wanted_gpus and gpus == 0:
        raise SweepError(
            f"{wanted_gpus} GPU per trial was requested but no GPU is available "
            "(torch.cuda sees none, or the Ray cluster offers none); drop --gpus-per-trial "
            "or run where there is a GPU"
        )
    if wanted_gpus is None:
        concurrent = max(1, min(samples, int(cpus), 4 * int(gpus))) if gpus else 1
        wanted_gpus = min(1.0, gpus / concurrent) if gpus else 0.0
    wanted_cpus = settings.cpus_per_trial
    if wanted_cpus is None:
        per_gpu = math.floor(gpus / wanted_gpus) if wanted_gpus else samples
        concurrent = max(1, min(samples, int(cpus), per_gpu))
        wanted_cpus = float(max(1, int(cpus) // concurrent))
    if wanted_cpus > cpus:
        raise SweepError(f"{wanted_cpus} CPUs per trial requested but only {cpus} available")
    if wanted_gpus > gpus:
        raise SweepError(f"{wanted_gpus} GPUs per trial requested but only {gpus} available")
    limits = [math.floor(cpus / wanted_cpus + 1e-9)]
    if wanted_gpus:
        limits.append(math.floor(gpus / wanted_gpus + 1e-9))
    return Resources(wanted_cpus, wanted_gpus, max(1, min(limits)))


class _RandomBatches(L.LightningDataModule):
    def __init__(self, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        images = torch.randn(8, *image_shape)
        self.data = TensorDataset(images, torch.arange(8) % 2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)


def logged_metric_names(model: ImageClassifier, image_shape: tuple[int, ...]) -> set[str]:
    """Keys the model logs during a fit, found by one batch of training and validation.

    Args:
        model: A fresh LightningModule (it is trained one step on random images).
        image_shape: Shape (C, H, W) of one input image.

    Returns:
        The names in the trainer's ``callback_metrics`` after the fit.
    """
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=_RandomBatches(image_shape))
    return set(trainer.callback_metrics)


def check_metric_names(assignment: str, config: Any) -> None:
    """Checks that every Tune metric maps to a key the assignment's model logs.

    Raises:
        SweepError: A mapped key is never logged; the message lists the logged keys.
    """
    spec = ASSIGNMENTS[assignment]
    model = spec.build_model(dataclasses.replace(config, accelerator="cpu"))
    datamodule = spec.build_datamodule(config)
    logged = logged_metric_names(model, tuple(datamodule.image_shape))
    missing = {tune_name: key for tune_name, key in TUNE_METRICS.items() if key not in logged}
    if missing:
        raise SweepError(f"the Tune metrics {missing} are not logged by {type(model).__name__}; "
                         f"it logs {sorted(logged)}")


class HparamsWithMetrics(Callback):
    """Writes a trial's point to TensorBoard's HPARAMS tab with its best validation figures.

    The hyperparameters are written when training starts; the ``hp/val_acc`` and
    ``hp/val_loss`` scalars they point to are updated after every validation epoch. Tune may
    end a trial's process as soon as it reports, so this callback must come before the report
    callback: it flushes the events to disk, and a trial that ASHA stops still shows its
    real metrics. The training-set scalars of a stopped trial's last epoch, which Lightning
    writes after validation, can be missing.

    Args:
        point: The trial's sampled parameters.
    """

    def __init__(self, point: Mapping[str, Any]) -> None:
        self.point = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                      for k, v in point.items()}
        self.best_acc = -math.inf
        self.best_loss = math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None and trainer.current_epoch == 0:
            trainer.logger.log_hyperparams(self.point, {"hp/val_acc": 0.0, "hp/val_loss": 0.0})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.logger is None:
            return
        metrics = trainer.callback_metrics
        self.best_acc = max(self.best_acc, float(metrics[TUNE_METRICS["val_acc"]]))
        self.best_loss = min(self.best_loss, float(metrics[TUNE_METRICS["val_loss"]]))
        trainer.logger.log_metrics({"hp/val_acc": self.best_acc, "hp/val_loss": self.best_loss},
                                   step=trainer.global_step)
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "flush"):
            experiment.flush()


def report_callback() -> Callback:
    """Ray Tune's Lightning callback as every trial uses it.

    Returns:
        A ``TuneReportCheckpointCallback`` that reports ``TUNE_METRICS`` and saves a
        checkpoint at the end of every validation epoch (never during the sanity check).
    """
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    return TuneReportCheckpointCallback(metrics=TUNE_METRICS, filename=CHECKPOINT_FILE,
                                        on="validation_end")


def trial_dirname(trial: Any) -> str:
    """Folder name of a trial inside the sweep folder."""
    return f"trial_{trial.trial_id}"


def train_trial(
    config: dict[str, Any],
    *,
    assignment: str,
    base: dict[str, Any],
    sweep_dir: str,
    cpus: float,
    val_subset: int | None,
) -> None:
    """Trains one trial and reports to Tune after every validation epoch.

    Runs inside a Ray worker whose working directory Tune has changed, so every path it uses
    is absolute. Resumes from the trial's latest checkpoint when Tune restores it.

    Args:
        config: The trial's sampled point (Tune's name for it).
        assignment: Key of ``ASSIGNMENTS``.
        base: Config fields shared by all trials.
        sweep_dir: The sweep's folder; the trial writes into ``sweep_dir/trial_<id>``.
        cpus: The trial's CPUs, used as torch's thread count.
        val_subset: Validate on only this many images (``None``: all).
    """
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    spec = ASSIGNMENTS[assignment]
    point = config
    run = trial_config(assignment, base, point)
    L.seed_everything(run.seed, workers=True)
    datamodule = spec.build_datamodule(run)
    if val_subset is not None:
        datamodule.val_subset = val_subset
    model = spec.build_model(run)

    trial_dir = Path(sweep_dir) / f"trial_{tune.get_context().get_trial_id()}"
    logger = TensorBoardLogger(save_dir=str(trial_dir), name="", version="",
                               default_hp_metric=False)
    report = report_callback()
    trainer = L.Trainer(
        max_epochs=run.epochs,
        accelerator=run.accelerator,
        devices=1,
        precision=cast(PrecisionName, spec.precision(run)),
        deterministic=run.deterministic,
        logger=logger,
        # The events are written and flushed before the report that may end the process.
        callbacks=[HparamsWithMetrics(point), report],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        **(SMOKE_LIMITS if run.smoke else {}),
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer.fit(model, datamodule=datamodule)
        return
    with checkpoint.as_directory() as folder:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(Path(folder) / CHECKPOINT_FILE))


def _search_alg(settings: SweepSettings, max_concurrent: int = 0) -> Any:
    """The seeded searcher; ``max_concurrent`` (0: no limit) caps the trials run at once."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if settings.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=OBJECTIVE, mode=MODE, seed=settings.seed)
        return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher
    return BasicVariantGenerator(random_state=settings.seed, max_concurrent=max_concurrent)


def preview_points(settings: SweepSettings, count: int) -> list[dict[str, Any]]:
    """The first points the sweep's searcher suggests, without Ray or any training.

    Random and grid search suggest exactly these points in a sweep with the same seed; the
    first points of Optuna's TPE are its seeded random start-up samples.

    Args:
        settings: The sweep (its searcher, preset and seed).
        count: Points to draw.

    Returns:
        The sampled points, in the order the sweep would start them.
    """
    import tempfile

    from ray.tune.experiment import Experiment

    validate(settings)
    space = settings.space.to_tune(settings.searcher)
    searcher = _search_alg(settings)
    if settings.searcher == "optuna":
        searcher.set_search_properties(OBJECTIVE, MODE, space)
        return [searcher.suggest(f"preview_{i}") for i in range(count)]
    def never_run(config: dict[str, Any]) -> None:
        raise RuntimeError("a preview trains nothing")

    with tempfile.TemporaryDirectory() as scratch:
        searcher.add_configurations([Experiment("preview", never_run, config=space,
                                                num_samples=settings.samples or 1,
                                                storage_path=scratch)])
        points = []
        for _ in range(count):
            trial = searcher.next_trial()
            if trial is None:
                break
            points.append(dict(trial.config))
    return points


def _scheduler(settings: SweepSettings) -> Any:
    if not settings.early_stopping:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs,
                         grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


def _trainable(settings: SweepSettings, resources: Resources) -> Any:
    from ray import tune

    trainable = tune.with_parameters(
        train_trial, assignment=settings.assignment,
        base=base_fields(settings, resources.gpus_per_trial),
        sweep_dir=str(settings.sweep_dir), cpus=resources.cpus_per_trial,
        val_subset=settings.val_subset,
    )
    return tune.with_resources(trainable, {"cpu": resources.cpus_per_trial,
                                           "gpu": resources.gpus_per_trial})


@contextmanager
def _ray_session(settings: SweepSettings) -> Iterator[tuple[float, float]]:
    """Joins ``settings.address`` or starts a local Ray, unless one is already running.

    Yields:
        The CPUs and GPUs the sweep may use.
    """
    import ray

    if ray.is_initialized():
        resources = ray.cluster_resources()
        yield resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        return
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=settings.num_cpus or os.cpu_count(),
                 num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        yield resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    finally:
        ray.shutdown()


# Lightning writes each trial's TensorBoard events, so Ray's own would duplicate them; a
# checkpoint every epoch is the design here, not a reason to warn.
_TUNE_ENVIRONMENT = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                     "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


@contextmanager
def _tune_environment() -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in _TUNE_ENVIRONMENT}
    os.environ.update(_TUNE_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def space_record(space: SearchSpace) -> dict[str, Any]:
    """The search space as plain text, saved with a sweep to notice a preset changed since."""
    return {"fixed": repr(dict(space.fixed)),
            "params": {name: repr(param) for name, param in space.params.items()}}


def save_settings(settings: SweepSettings, path: Path) -> None:
    record = {**dataclasses.asdict(settings), "space": space_record(settings.space)}
    path.write_text(yaml.safe_dump(record, sort_keys=False))


def _read_sweep_yaml(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir).expanduser().resolve() / "sweep.yaml"
    if not path.is_file():
        raise SweepError(f"{path.parent} is not a sweep folder: it has no sweep.yaml")
    return dict(yaml.safe_load(path.read_text()))


def load_settings(sweep_dir: str | Path) -> SweepSettings:
    """Reads the settings a sweep was started with.

    Raises:
        SweepError: The folder holds no ``sweep.yaml``.
    """
    record = _read_sweep_yaml(sweep_dir)
    record.pop("space", None)
    # The folder may have been copied or moved since: it is where the sweep lives now.
    folder = Path(sweep_dir).expanduser().resolve()
    record.update(runs_dir=str(folder.parent), name=folder.name)
    return SweepSettings(**record)


def check_same_space(settings: SweepSettings) -> None:
    """Refuses to resume a sweep whose preset has changed since it started.

    Trials rebuilt from a changed preset would train other networks than their checkpoints
    hold. Sweeps saved without a record of their space are accepted as they are.

    Raises:
        SweepError: The preset's parameters or fixed fields differ from the saved ones.
    """
    saved = _read_sweep_yaml(settings.sweep_dir).get("space")
    if saved is not None and saved != space_record(settings.space):
        raise SweepError(
            f"the {settings.assignment} preset {settings.preset!r} has changed since the sweep "
            f"in {settings.sweep_dir} started (saved in its sweep.yaml: {saved}), so its "
            "trials cannot be continued; start a new sweep with another --name"
        )


@dataclass
class TrialSummary:
    """One trial's point, fate and best validation figures."""

    trial_id: str
    status: str
    epochs: int
    val_acc: float
    val_loss: float
    best_epoch: int
    point: dict[str, Any]
    error: str = ""


@dataclass
class SweepResult:
    """What a sweep produced: its folder, every trial sorted best first, and its timing."""

    sweep_dir: Path
    trials: list[TrialSummary]
    best_config: Any
    wall_seconds: float
    settings: SweepSettings

    @property
    def epochs_spent(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def best(self) -> TrialSummary:
        return self.trials[0]


def _check_finished(settings: SweepSettings) -> None:
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(settings.sweep_dir)).trials
    expected = settings.trial_count
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished or len(trials) < expected:
        raise SweepInterrupted(
            f"the sweep in {settings.sweep_dir} stopped with {len(unfinished)} unfinished and "
            f"{max(0, expected - len(trials))} unstarted trials; continue it with --resume "
            f"--name {settings.name} --runs-dir {settings.runs_dir}"
        )


def run_sweep(settings: SweepSettings, resume: bool = False,
              callbacks: list[Any] | None = None) -> SweepResult:
    """Runs (or resumes) a sweep and writes its CSV, best config and TensorBoard events.

    Args:
        settings: The sweep. When resuming, the settings saved in the sweep folder are used
            and only ``address`` is taken from here.
        resume: Restore the sweep in ``settings.sweep_dir``: finished trials are kept,
            unfinished ones continue from their latest checkpoint, errored ones rerun.
        callbacks: Further Ray Tune callbacks of a new sweep (a resumed one keeps its own).

    Returns:
        The trials, best first, and the best config.

    Raises:
        SweepError: Invalid settings, an existing folder without ``resume`` (or a missing one
            with it), GPUs requested where there are none, or no trial that reported.
        SweepInterrupted: The sweep stopped (Ctrl-C, ``SIGUSR1``) before all trials ended.
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    sweep_dir = settings.sweep_dir
    if resume:
        address = settings.address
        settings = load_settings(sweep_dir)
        settings.address = address
        check_same_space(settings)
        if not tune.Tuner.can_restore(str(sweep_dir)):
            raise SweepError(f"{sweep_dir} holds no sweep state to resume; start it again "
                             "without --resume")
    elif sweep_dir.exists():
        raise SweepError(f"{sweep_dir} already exists; pass --resume to continue that sweep, "
                         "or choose another --name")
    validate(settings)
    spec = ASSIGNMENTS[settings.assignment]
    if not settings.address:
        plan_resources(settings, float(settings.num_cpus or os.cpu_count() or 1),
                       float(torch.cuda.device_count()))

    first = trial_config(settings.assignment, base_fields(settings),
                         {k: p.grid_values()[0] for k, p in settings.space.params.items()})
    check_metric_names(settings.assignment, first)
    # Download and check the data once, here, before trials that only read it.
    spec.build_datamodule(dataclasses.replace(first, download=True)).prepare_data()

    start = time.perf_counter()
    with _ray_session(settings) as (cpus, gpus):
        resources = plan_resources(settings, cpus, gpus)
        log.info("Each trial gets %s CPUs and %s GPUs; %d run at once",
                 resources.cpus_per_trial, resources.gpus_per_trial, resources.max_concurrent)
        trainable = _trainable(settings, resources)
        if resume:
            tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            sweep_dir.mkdir(parents=True)
            save_settings(settings, sweep_dir / "sweep.yaml")
            tuner = tune.Tuner(
                trainable,
                param_space=settings.space.to_tune(settings.searcher),
                tune_config=tune.TuneConfig(
                    metric=OBJECTIVE, mode=MODE,
                    search_alg=_search_alg(settings, resources.max_concurrent),
                    scheduler=_scheduler(settings), num_samples=settings.samples or 1,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=settings.name, storage_path=settings.runs_dir,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), *(callbacks or [])],
                    verbose=1,
                ),
            )
        with _tune_environment():
            results = tuner.fit()
    wall = time.perf_counter() - start
    _check_finished(settings)

    trials = summarize(results, settings.max_epochs)
    if not trials or math.isnan(trials[0].val_acc):
        errors = [t.error for t in trials if t.error]
        raise SweepError(f"no trial of {sweep_dir} reported a validation accuracy"
                         + (f"; first error: {errors[0]}" if errors else ""))
    write_trials_csv(trials, sweep_dir / "trials.csv")
    best_config = dataclasses.replace(
        trial_config(settings.assignment, base_fields(settings), trials[0].point),
        epochs=settings.retrain_epochs, train_subset=None, download=True, smoke=False,
        accelerator="auto", runs_dir=str(sweep_dir), name="retrain",
    )
    save_config(best_config, sweep_dir / "best.yaml")
    return SweepResult(sweep_dir, trials, best_config, wall, settings)


def summarize(results: Any, max_epochs: int) -> list[TrialSummary]:
    """Each trial of a ``ResultGrid``, sorted by best validation accuracy, best first.

    A trial that ran fewer than ``max_epochs`` without an error was stopped early.
    """
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        error = str(result.error).splitlines()[0] if result.error else ""
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name[6:]
        if frame is None or OBJECTIVE not in frame or frame[OBJECTIVE].isna().all():
            trials.append(TrialSummary(trial_id, "error" if error else "no report", 0,
                                       math.nan, math.nan, 0, dict(result.config), error))
            continue
        best_row = frame.loc[frame[OBJECTIVE].idxmax()]
        epochs = int(frame["training_iteration"].max())
        status = "error" if error else "completed" if epochs >= max_epochs else "stopped early"
        trials.append(TrialSummary(
            trial_id=str(trial_id), status=status, epochs=epochs,
            val_acc=float(best_row[OBJECTIVE]), val_loss=float(best_row["val_loss"]),
            best_epoch=int(best_row["training_iteration"]), point=dict(result.config),
            error=error,
        ))
    return sorted(trials, key=lambda t: -t.val_acc if not math.isnan(t.val_acc) else math.inf)


def write_trials_csv(trials: list[TrialSummary], path: Path) -> Path:
    """Writes one row per trial: id, status, epochs, best validation figures, its point."""
    names = sorted({name for t in trials for name in t.point})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", "status", "epochs", "best_epoch", "val_acc", "val_loss",
                         *names, "error"])
        for t in trials:
            writer.writerow([t.trial_id, t.status, t.epochs, t.best_epoch, t.val_acc,
                             t.val_loss, *(t.point.get(n, "") for n in names), t.error])
    return path


def top_table(result: SweepResult, count: int) -> str:
    """The ``count`` best trials as a markdown table."""
    names = sorted({name for t in result.trials for name in t.point})
    rows = [(t.trial_id, t.status, t.epochs, t.val_acc, t.val_loss,
             *(t.point.get(n, "") for n in names)) for t in result.trials[:count]]
    return markdown_table(["trial", "status", "epochs", "val acc", "val loss", *names], rows)


def retrain_best(sweep_dir: str | Path, epochs: int | None = None,
                 smoke: bool = False) -> tuple[Any, Any]:
    """Retrains a sweep's best config on the full training split and tests it.

    Runs the assignment's ``train_and_test`` on ``best.yaml`` (so the run folder receives
    the same figures as the assignment's script) and writes ``retrain.md`` into the sweep
    folder, comparing the result with the tutorial's validation accuracy.

    Args:
        sweep_dir: The sweep's folder.
        epochs: Training epochs; ``None`` keeps those of ``best.yaml``.
        smoke: A few batches of everything, to test the pipeline.

    Returns:
        The config that was trained and the assignment's run result.

    Raises:
        SweepError: The folder holds no ``best.yaml``.
    """
    from assignments.config import load_config_file

    sweep_dir = Path(sweep_dir).expanduser().resolve()
    settings = load_settings(sweep_dir)
    spec = ASSIGNMENTS[settings.assignment]
    if not (sweep_dir / "best.yaml").is_file():
        raise SweepError(f"{sweep_dir} has no best.yaml: the sweep has not finished")
    config = spec.config_cls(**load_config_file(spec.config_cls, sweep_dir / "best.yaml"))
    config = dataclasses.replace(config, epochs=epochs or config.epochs, smoke=smoke,
                                 runs_dir=str(sweep_dir), name="retrain")
    result = spec.train_and_test(config, progress_bar=False)
    metrics = result.metrics
    trained = ("a smoke run of a few batches" if smoke else
               f"{config.epochs} epoch{'s' * (config.epochs != 1)} on the full training split")
    verdict = "reaches" if metrics["val/acc_best"] >= TUTORIAL_VAL_ACC else "falls short of"
    rows = [("validation accuracy (best epoch)", metrics["val/acc_best"], TUTORIAL_VAL_ACC),
            ("test accuracy", metrics["test/acc"], "")]
    (sweep_dir / "retrain.md").write_text(
        markdown_table(["metric", "retrained best config", "tutorial"], rows)
        + f"\nThe retrained config {verdict} the tutorial's {TUTORIAL_VAL_ACC} validation "
        f"accuracy after {trained}.\n"
        f"Config: {to_dict(config)}\nRun: {result.run_dir}\n"
        f"Machine and versions: {environment_summary()}.\n"
    )
    return config, result
