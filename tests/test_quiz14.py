import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from assignments.config import parse_config
from assignments.quiz14 import Quiz14Config, build_datamodule, build_model, train_and_test
from scripts import bench_quiz14, quiz14

FIGURES = ["curves.png", "confusion_matrix.png", "samples.png", "per_class_accuracy.md",
           "history.csv", "config.yaml"]


def _events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_smoke_run_writes_events_checkpoint_and_figures(mnist_dir, tmp_path, capsys):
    code = quiz14.main(["--smoke", "--data-dir", str(mnist_dir), "--runs-dir", str(tmp_path),
                        "--activation", "relu"])

    run_dir = tmp_path / "quiz14" / "version_0"
    assert code == 0
    assert str(run_dir) in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    for name in FIGURES:
        assert (run_dir / name).stat().st_size > 0, name
    events = _events(run_dir)
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "hp/test_acc"):
        assert tag in scalars, tag
    # TensorBoard's HPARAMS tab reads the session summary, which names the real metrics.
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin
    assert b"hp/test_acc" in plugin["_hparams_/experiment"]
    assert b"-1" not in plugin["_hparams_/session_start_info"].split(b"hp_metric")[0][-4:]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["activation"] == "relu"
    header, row = (run_dir / "history.csv").read_text().splitlines()
    assert header.split(",")[0] == "epoch" and "val/acc" in header.split(",")
    assert row.split(",")[0] == "1"


def test_compare_smoke_writes_the_hand_in_figure_and_table(mnist_dir, tmp_path):
    report = tmp_path / "report"
    code = quiz14.main(["--smoke", "--data-dir", str(mnist_dir), "--runs-dir", str(tmp_path),
                        "--compare", "sigmoid", "relu", "--report-dir", str(report)])

    table = (report / "comparison.md").read_text()
    assert code == 0
    assert (report / "comparison.png").stat().st_size > 0
    assert "| sigmoid |" in table and "| relu |" in table and "torch" in table
    assert (tmp_path / "quiz14_sigmoid" / "version_0").is_dir()


def _val_accuracy(config: Quiz14Config) -> float:
    L.seed_everything(config.seed, workers=True)
    dm = build_datamodule(config)
    dm.val_subset = 1000
    model = build_model(config)
    trainer = L.Trainer(max_epochs=config.epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=True)
    trainer.fit(model, datamodule=dm)
    return float(trainer.callback_metrics["val/acc"])


def test_relu_learns_clearly_above_chance_and_beats_sigmoid(mnist_dir):
    config = Quiz14Config(data_dir=str(mnist_dir), train_subset=3000, epochs=2, download=False)
    relu = _val_accuracy(dataclasses.replace(config, activation="relu"))
    sigmoid = _val_accuracy(dataclasses.replace(config, activation="sigmoid"))

    assert relu > 0.8, relu
    assert relu > sigmoid + 0.3, (relu, sigmoid)


def test_same_seed_same_metrics_and_weights(mnist_dir, tmp_path):
    config = Quiz14Config(data_dir=str(mnist_dir), activation="relu", smoke=True,
                          download=False, runs_dir=str(tmp_path))
    first = train_and_test(config, progress_bar=False)
    second = train_and_test(config, progress_bar=False)
    other = train_and_test(dataclasses.replace(config, seed=1), progress_bar=False)

    def weights(result):
        return torch.load(result.checkpoint, weights_only=True)["state_dict"]

    assert first.run_dir != second.run_dir
    assert first.metrics == second.metrics
    assert torch.equal(first.predictions, second.predictions)
    for name, tensor in weights(first).items():
        assert torch.equal(tensor, weights(second)[name]), name
    assert not torch.equal(weights(first)["net.fc1.weight"], weights(other)["net.fc1.weight"])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_config(Quiz14Config, "quiz14", ["--help"])
    text = capsys.readouterr().out

    for field in dataclasses.fields(Quiz14Config):
        assert "--" + field.name.replace("_", "-") in text, field.name


def test_yaml_config_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("activation: relu\nlr: 0.01\nconv_channels: [8, 8]\nepochs: 3\n")
    config = parse_config(Quiz14Config, "quiz14", ["--config", str(path), "--epochs", "5"])

    assert (config.activation, config.lr, config.conv_channels) == ("relu", 0.01, (8, 8))
    assert config.epochs == 5


def test_a_network_that_does_not_fit_the_image_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quiz14.main(["--conv-channels", "8", "8", "8", "8", "--pool", "--runs-dir",
                     str(tmp_path / "runs")])

    assert exit_info.value.code == 2
    assert "nothing is left after convolution 4" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_pool_option_reaches_the_network(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("conv_channels: [16, 32]\ndense_units: [128]\npool: true\n")
    config = parse_config(Quiz14Config, "quiz14", ["--config", str(path)])
    net = build_model(config).net

    assert [type(m) for m in net if isinstance(m, torch.nn.MaxPool2d)] == [torch.nn.MaxPool2d] * 2
    assert net.fc1.in_features == 32 * 5 * 5
    assert not parse_config(Quiz14Config, "quiz14", []).pool


@pytest.mark.parametrize(
    ("text", "message"),
    [("activations: relu\n", "unknown keys \\['activations'\\]"),
     ("epochs: ten\n", "epochs must be of type int"),
     ("- relu\n", "must hold a mapping")],
    ids=["unknown-key", "wrong-type", "not-a-mapping"],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        parse_config(Quiz14Config, "quiz14", ["--config", str(path)])

    err = capsys.readouterr().err
    assert str(path) in err
    assert pytest.importorskip("re").search(message, err)


def test_bad_option_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(Quiz14Config, "quiz14", ["--epochs", "0"])
    assert "epochs must be at least 1" in capsys.readouterr().err


def test_missing_data_is_a_clear_exit(tmp_path, capsys):
    code = quiz14.main(["--smoke", "--no-download", "--data-dir", str(tmp_path / "none")])

    assert code == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_benchmark_smoke(mnist_dir, capsys):
    bench_quiz14.main(["--smoke", "--data-dir", str(mnist_dir)])
    assert "ratio Lightning / plain (median over rounds):" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--lr", "nan"], "lr must be a positive number"),
     (["--weight-decay", "-1"], "weight_decay must be 0 or more"),
     (["--train-subset", "0"], "train_subset must be at least 1"),
     (["--conv-channels", "6", "0"], "conv_channels must all be at least 1"),
     (["--accelerator", "tpu"], "invalid choice: 'tpu'")],
    ids=["lr-nan", "weight-decay", "train-subset", "conv-width", "accelerator"],
)
def test_out_of_range_values_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        parse_config(Quiz14Config, "quiz14", args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_config_file_values_must_be_among_the_choices(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("activation: bogus\n")
    with pytest.raises(SystemExit):
        parse_config(Quiz14Config, "quiz14", ["--config", str(path)])
    assert "activation must be one of" in capsys.readouterr().err


def test_a_data_directory_that_is_a_file_is_a_clear_exit(tmp_path, capsys):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    code = quiz14.main(["--smoke", "--data-dir", str(not_a_folder), "--runs-dir",
                        str(tmp_path / "runs")])

    assert code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
