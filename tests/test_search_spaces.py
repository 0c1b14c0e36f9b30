"""Every value of every preset builds a network that runs forward: the whole space is valid."""

from __future__ import annotations

import pytest
import torch

from assignments.search_spaces import (
    Choice,
    LogUniform,
    SearchSpace,
    config_fields,
    is_shape_parameter,
)
from assignments.sweeps import ASSIGNMENTS, SweepSettings, base_fields, trial_config
from lightning_modules.classifier import classification_loss


def _cases() -> list:
    cases = []
    for assignment, spec in ASSIGNMENTS.items():
        for preset, space in spec.presets.items():
            for name, param in space.params.items():
                values = param.values if isinstance(param, Choice) else (param.low, param.high)
                cases.append(pytest.param(assignment, preset, name, values,
                                          id=f"{assignment}-{preset}-{name}"))
            cases.append(pytest.param(assignment, preset, "largest", (None,),
                                      id=f"{assignment}-{preset}-largest"))
    return cases


def _point(space: SearchSpace, name: str, value: object) -> dict:
    if name == "largest":
        # The deepest and widest network of the space.
        return {k: max(p.values) if isinstance(p, Choice) and k.endswith(("_layers", "_1",
                                                                         "_2", "_3", "_4"))
                else p.grid_values()[0] for k, p in space.params.items()}
    point = {k: p.grid_values()[0] for k, p in space.params.items()}
    point[name] = value
    return point


@pytest.mark.parametrize(("assignment", "preset", "name", "values"), _cases())
def test_every_preset_value_builds_a_network_that_runs(assignment, preset, name, values):
    spec = ASSIGNMENTS[assignment]
    space = spec.presets[preset]
    settings = SweepSettings(assignment=assignment, preset=preset, data_dir="unused")
    for value in values:
        config = trial_config(assignment, base_fields(settings), _point(space, name, value))
        model = spec.build_model(config)
        if name in model.hparams:
            assert model.hparams[name] == value
        if not (is_shape_parameter(name) or name in ("activation", "loss", "largest")):
            continue  # A training setting: the forward pass is covered by the other cases.
        shape = spec.build_datamodule(config).image_shape

        logits = model(torch.randn(2, *shape))
        loss = classification_loss(config.loss, logits, torch.tensor([0, 1]))

        assert logits.shape == (2, 10), f"{name}={value}"
        assert torch.isfinite(loss), f"{name}={value}"


def test_depth_picks_the_first_widths():
    point = {"conv_layers": 2, "conv_width_1": 8, "conv_width_2": 16, "conv_width_3": 32,
             "dense_layers": 1, "dense_width_1": 64, "dense_width_2": 128, "lr": 0.1}

    assert config_fields(point) == {"conv_channels": (8, 16), "dense_units": (64,), "lr": 0.1}


def test_a_depth_without_its_widths_is_refused():
    with pytest.raises(ValueError, match="conv_width_1 ... conv_width_3"):
        config_fields({"conv_layers": 3, "conv_width_1": 8, "conv_width_2": 8})


def test_grid_search_uses_the_grid_points_of_real_parameters():
    space = SearchSpace("s", "test", {"lr": LogUniform(1e-3, 1e-1, grid=(1e-2,)),
                                      "activation": Choice(("relu", "tanh"))})

    assert space.grid_size() == 2
    assert space.to_tune("grid")["lr"] == {"grid_search": [1e-2]}
