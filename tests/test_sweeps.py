"""Sweeps: settings checked before Ray starts, exact reports, and real sweeps on MNIST."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import ray
import torch
from ray.tune import Callback as TuneCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from assignments import sweeps
from assignments.config import parse_config
from assignments.quiz14 import Quiz14Config
from assignments.sweeps import (
    OBJECTIVE,
    TUNE_METRICS,
    SweepError,
    SweepInterrupted,
    SweepSettings,
    check_metric_names,
    plan_resources,
    preview_points,
    report_callback,
    run_sweep,
)
from lightning_modules.classifier import ImageClassifier
from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("tune_script", REPO_ROOT / "scripts" / "tune.py")
tune_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_script)

TINY = ["--preset", "quick", "--max-epochs", "2", "--train-subset", "1000",
        "--val-subset", "500", "--batch-size", "100", "--searcher", "random", "--seed", "3"]


def tiny_settings(tmp_path: Path, mnist_dir: Path, **changes) -> SweepSettings:
    values = dict(preset="quick", max_epochs=2, train_subset=1000, val_subset=500,
                  batch_size=100, searcher="random", seed=3, samples=2,
                  runs_dir=str(tmp_path), data_dir=str(mnist_dir), name="tiny")
    values.update(changes)
    return SweepSettings(**values)


@pytest.fixture
def local_ray():
    """One local Ray of 2 CPUs, shared by the tests that sweep on it."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False,
                 log_to_driver=False)
    yield
    # Left running for the next test; the session's end shuts it down.


@pytest.fixture(scope="module", autouse=True)
def _shutdown_ray():
    yield
    ray.shutdown()


# Settings and resources, checked before Ray starts.


@pytest.mark.parametrize(("changes", "message"), [
    ({"grace_period": 11}, "grace period"),
    ({"grace_period": 0}, "grace period"),
    ({"reduction_factor": 1.0}, "reduction factor"),
    ({"max_epochs": 0}, "max epochs"),
    ({"samples": 0}, "samples"),
    ({"preset": "huge"}, "unknown preset"),
    ({"searcher": "bayes"}, "unknown searcher"),
    ({"preset": "full", "searcher": "grid"}, "use --searcher random or optuna"),
], ids=["grace-above-max", "grace-zero", "reduction-one", "no-epochs", "no-samples",
        "unknown-preset", "unknown-searcher", "grid-too-large"])
def test_invalid_settings_fail_before_ray_starts(changes, message, tmp_path):
    settings = SweepSettings(runs_dir=str(tmp_path), name="bad", **changes)

    with pytest.raises(SweepError, match=message):
        run_sweep(settings)

    assert not ray.is_initialized()
    assert not (tmp_path / "bad").exists()


def test_gpu_request_without_gpu_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    start = time.perf_counter()

    code = tune_script.main(["--gpus-per-trial", "0.5", "--runs-dir", str(tmp_path),
                             "--name", "gpu"])

    assert code == 2
    assert "no GPU is available" in capsys.readouterr().err
    assert time.perf_counter() - start < 10
    assert not ray.is_initialized()
    assert not (tmp_path / "gpu").exists()


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    settings = SweepSettings(runs_dir="runs/sweeps", data_dir="data", name="rel")

    assert settings.runs_dir == str(tmp_path / "runs" / "sweeps")
    assert settings.data_dir == str(tmp_path / "data")
    assert settings.sweep_dir == tmp_path / "runs" / "sweeps" / "rel"


def _settings(argv: list[str]) -> SweepSettings:
    parser = tune_script.build_parser()
    return tune_script.settings_from_args(parser.parse_args(argv),
                                          tune_script.given_options(argv))


def test_smoke_mode_shrinks_only_the_options_not_given():
    plain = _settings(["--smoke"])
    chosen = _settings(["--smoke", "--max-epochs", "10", "--samples", "4"])
    graced = _settings(["--smoke", "--grace-period", "3"])

    assert (plain.samples, plain.max_epochs, plain.grace_period) == (2, 2, 1)
    # Given at its default value, an option still keeps it.
    assert (chosen.samples, chosen.max_epochs) == (4, 10)
    assert chosen.train_subset == plain.train_subset == tune_script.SMOKE["train_subset"]
    assert (graced.grace_period, graced.max_epochs) == (3, 3)


def test_resuming_after_the_preset_changed_is_refused(tmp_path, monkeypatch):
    started = SweepSettings(runs_dir=str(tmp_path), name="old", preset="quick")
    started.sweep_dir.mkdir(parents=True)
    sweeps.save_settings(started, started.sweep_dir / "sweep.yaml")
    # A moved sweep is checked (and resumed) where it lies now, not where it started.
    started.sweep_dir.rename(tmp_path / "moved")
    again = SweepSettings(runs_dir=str(tmp_path), name="moved")
    # Unchanged, the check passes and the resume fails later for want of Ray's state.
    with pytest.raises(SweepError, match="holds no sweep state"):
        run_sweep(again, resume=True)

    presets = sweeps.ASSIGNMENTS["quiz14"].presets
    monkeypatch.setitem(presets, "quick", dataclasses.replace(
        presets["quick"], fixed={**presets["quick"].fixed, "pool": False}))
    with pytest.raises(SweepError, match="preset 'quick' has changed since the sweep"):
        run_sweep(again, resume=True)


def test_an_existing_sweep_name_is_a_clear_error(tmp_path):
    (tmp_path / "taken").mkdir()

    with pytest.raises(SweepError, match="already exists; pass --resume"):
        run_sweep(SweepSettings(runs_dir=str(tmp_path), name="taken"))


@pytest.mark.parametrize(("cpus", "gpus", "samples", "given", "expected"), [
    (2, 0, 20, {}, (1.0, 0.0, 2)),
    (16, 0, 2, {}, (8.0, 0.0, 2)),
    (16, 1, 20, {}, (4.0, 0.25, 4)),
    (16, 2, 20, {"gpus_per_trial": 0.5}, (4.0, 0.5, 4)),
    (2, 0, 5, {"cpus_per_trial": 0.5}, (0.5, 0.0, 4)),
], ids=["laptop", "few-samples", "one-gpu", "half-gpus", "fractional-cpus"])
def test_resources_fit_the_machine(cpus, gpus, samples, given, expected):
    settings = SweepSettings(samples=samples, **given)

    plan = plan_resources(settings, cpus, gpus)

    assert (plan.cpus_per_trial, plan.gpus_per_trial, plan.max_concurrent) == expected


def test_a_trial_larger_than_the_machine_is_refused():
    with pytest.raises(SweepError, match="only 2"):
        plan_resources(SweepSettings(cpus_per_trial=4), 2, 0)


@pytest.mark.parametrize("searcher", ["random", "grid", "optuna"])
def test_seeded_sampling_reproduces(searcher):
    def points(seed):
        return preview_points(SweepSettings(preset="full" if searcher != "grid" else "quick",
                                            searcher=searcher, seed=seed, samples=4), 4)

    assert points(7) == points(7)
    if searcher != "grid":
        assert points(7) != points(8)


# Metric names and the Lightning callback.


def test_the_mapped_metric_names_are_logged_by_the_module():
    check_metric_names("quiz14", Quiz14Config(conv_channels=(4,), dense_units=(8,)))

    # TuneConfig and ASHA rank trials by OBJECTIVE, once per reported (validation) epoch.
    assert OBJECTIVE in TUNE_METRICS
    assert sweeps._scheduler(SweepSettings())._time_attr == "training_iteration"


def test_an_unlogged_metric_name_is_caught(monkeypatch):
    monkeypatch.setitem(TUNE_METRICS, "val_f1", "val/f1")

    with pytest.raises(SweepError, match="val/f1"):
        check_metric_names("quiz14", Quiz14Config(conv_channels=(4,), dense_units=(8,)))


class ConstantClassifier(ImageClassifier):
    """Predicts the same logits for every image, so loss and accuracy are known exactly."""

    def forward(self, images):
        return self.net(images) * 0.0


def test_callback_reports_once_per_validation_epoch_and_not_for_the_sanity_check(monkeypatch):
    reports = []
    monkeypatch.setattr(ray.tune, "report",
                        lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    # Labels 0, 0, 1, 2: constant logits predict class 0, so accuracy is exactly 1/2.
    data = TensorDataset(torch.randn(4, 1, 28, 28), torch.tensor([0, 0, 1, 2]))
    model = ConstantClassifier(network={"conv_channels": (2,), "dense_units": (4,)})
    trainer = L.Trainer(max_epochs=3, num_sanity_val_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[report_callback()])

    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))

    assert len(reports) == 3
    for metrics, checkpoint in reports:
        assert set(metrics) == set(TUNE_METRICS)
        assert metrics["val_acc"] == pytest.approx(0.5)
        assert metrics["val_acc_best"] == pytest.approx(0.5)
        assert metrics["val_loss"] == pytest.approx(math.log(10), rel=1e-6)
        assert checkpoint is not None


# Real sweeps on a small subset of MNIST.


def _event_scalars(trial_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    return {tag: [s.value for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_tiny_sweep_writes_csv_best_config_and_events(local_ray, mnist_dir, tmp_path, capsys):
    code = tune_script.main([*TINY, "--samples", "2", "--runs-dir", str(tmp_path),
                             "--name", "tiny", "--data-dir", str(mnist_dir)])

    assert code == 0
    sweep_dir = tmp_path / "tiny"
    rows = _rows(sweep_dir / "trials.csv")
    assert len(rows) == 2
    assert all(0 < float(r["val_acc"]) <= 1 for r in rows)
    # The trials ran exactly the points the seeded searcher previews.
    expected = preview_points(tiny_settings(tmp_path, mnist_dir, name="x"), 2)
    ran = [{"activation": r["activation"], "optimizer": r["optimizer"], "lr": float(r["lr"])}
           for r in rows]
    assert sorted(ran, key=str) == sorted(expected, key=str)
    config = parse_config(Quiz14Config, "", ["--config", str(sweep_dir / "best.yaml")])
    best = rows[0]
    assert (config.activation, config.optimizer) == (best["activation"], best["optimizer"])
    assert config.train_subset is None
    # The preset's fixed fields travel into best.yaml, so retraining builds the same network.
    assert (config.conv_channels, config.dense_units, config.pool) == ((16, 32), (128,), True)
    for row in rows:
        scalars = _event_scalars(sweep_dir / f"trial_{row['trial_id']}")
        assert len(scalars["val/acc"]) == int(row["epochs"])
        assert max(scalars["hp/val_acc"]) == pytest.approx(float(row["val_acc"]))
    assert "best val accuracy" in capsys.readouterr().out


class InterruptAfterFirstTrial(TuneCallback):
    """Sends the driver SIGUSR1, as Ctrl-C would, once the first trial has finished."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_finished_trials(
        local_ray, mnist_dir, tmp_path):
    settings = tiny_settings(tmp_path, mnist_dir, samples=2, cpus_per_trial=2,
                             early_stopping=False)
    marker = tmp_path / "first_trial"

    with pytest.raises(SweepInterrupted, match="--resume"):
        run_sweep(settings, callbacks=[InterruptAfterFirstTrial(marker)])
    first = marker.read_text()
    first_progress = (settings.sweep_dir / f"trial_{first}" / "progress.csv").read_text()
    assert not (settings.sweep_dir / "trials.csv").exists()
    result = run_sweep(tiny_settings(tmp_path, mnist_dir), resume=True)

    assert len(result.trials) == 2
    assert all(t.status == "completed" and t.epochs == 2 for t in result.trials)
    assert (settings.sweep_dir / f"trial_{first}" / "progress.csv").read_text() == first_progress
    assert len(_rows(settings.sweep_dir / "trials.csv")) == 2


def test_smoke_sweep_then_retrain_writes_the_quiz14_figures(local_ray, mnist_dir, tmp_path,
                                                            capsys):
    code = tune_script.main(["--smoke", "--samples", "1", "--retrain", "--runs-dir",
                             str(tmp_path), "--name", "smoke", "--data-dir", str(mnist_dir)])

    assert code == 0
    (run_dir,) = (tmp_path / "smoke" / "retrain").iterdir()
    for name in ("curves.png", "confusion_matrix.png", "per_class_accuracy.md", "samples.png",
                 "config.yaml"):
        assert (run_dir / name).is_file()
    assert "0.9877" in (tmp_path / "smoke" / "retrain.md").read_text()
    out = capsys.readouterr().out
    assert "Retrained best config" in out
    # One trial of two epochs: ASHA cannot stop a lone trial, so it spends the whole budget.
    assert "1 trial, 2 of 2 epochs (1.00 of running every trial to the end)" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_sweep_through_address_joins_a_running_head(mnist_dir, tmp_path):
    ray.shutdown()
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # --block keeps the head's processes children of this one, so stopping it stops them all.
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = tune_script.main([*TINY, "--samples", "2", "--max-epochs", "1",
                                 "--address", f"127.0.0.1:{port}", "--runs-dir", str(tmp_path),
                                 "--name", "remote", "--data-dir", str(mnist_dir)])

        assert code == 0
        assert len(_rows(tmp_path / "remote" / "trials.csv")) == 2
        assert not ray.is_initialized()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_a_sweep_name_cannot_leave_the_runs_dir(name, tmp_path):
    with pytest.raises(SweepError, match="plain folder name"):
        SweepSettings(name=name, runs_dir=str(tmp_path))
