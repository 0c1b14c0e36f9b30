"""Named search spaces of the hyperparameter sweeps, kept beside the assignments they tune.

A search space is a flat mapping of parameter names to value sets, so that every searcher
(random, grid and Optuna's TPE) can sample it. A name is either a field of the assignment's
config dataclass (``activation``, ``loss``, ``optimizer``, ``lr``, ...) or describes the
network's shape:

- ``conv_layers`` and ``conv_width_1`` ... ``conv_width_N``: the number of convolutions and
  the filters of each; only the first ``conv_layers`` widths are used. Without
  ``conv_layers`` every listed width is used, so the depth is fixed.
- ``dense_layers`` and ``dense_width_1`` ... ``dense_width_N``: the same for the hidden fully
  connected layers.

:func:`config_fields` turns a sampled point into config fields (``conv_channels`` and
``dense_units`` tuples), which is also how the best point becomes a config file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray import tune

_WIDTH = re.compile(r"^(conv|dense)_width_(\d+)$")
_SHAPE_FIELDS = {"conv": "conv_channels", "dense": "dense_units"}


@dataclass(frozen=True)
class Choice:
    """A categorical parameter: one of ``values``."""

    values: tuple[Any, ...]

    def grid_values(self) -> tuple[Any, ...]:
        return self.values

    def to_tune(self) -> Any:
        return tune.choice(list(self.values))


@dataclass(frozen=True)
class LogUniform:
    """A positive real parameter sampled log-uniformly in ``[low, high]``.

    Grid search cannot enumerate a real interval, so it tries the points of ``grid``.
    """

    low: float
    high: float
    grid: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"need 0 < low < high, got [{self.low}, {self.high}]")
        if not self.grid or not all(self.low <= g <= self.high for g in self.grid):
            raise ValueError(f"grid points {self.grid} must lie in [{self.low}, {self.high}]")

    def grid_values(self) -> tuple[float, ...]:
        return self.grid

    def to_tune(self) -> Any:
        return tune.loguniform(self.low, self.high)


Parameter = Choice | LogUniform


@dataclass(frozen=True)
class SearchSpace:
    """A documented search space.

    Args:
        name: The preset's name on the command line.
        description: What the space explores and why, shown by ``scripts/tune.py --help``.
        params: The sampled parameters by name.
        fixed: Config fields set for every trial of this space before the sampled ones, so
            that the parameters outside the space hold sensible values.
    """

    name: str
    description: str
    params: Mapping[str, Parameter]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def to_tune(self, searcher: str) -> dict[str, Any]:
        """The Ray Tune ``param_space``: sampled domains, or grids when ``searcher`` is grid."""
        if searcher == "grid":
            return {k: tune.grid_search(list(p.grid_values())) for k, p in self.params.items()}
        return {k: p.to_tune() for k, p in self.params.items()}

    def grid_size(self) -> int:
        """Number of points of the full grid."""
        return math.prod(len(p.grid_values()) for p in self.params.values())


def config_fields(point: Mapping[str, Any]) -> dict[str, Any]:
    """Turns a point of a search space into config fields.

    Args:
        point: Sampled values by parameter name (``conv_layers``, ``conv_width_1``, ...,
            ``activation``, ``lr``, ...).

    Returns:
        The config fields: the shape parameters become ``conv_channels`` and ``dense_units``
        tuples, every other parameter is passed on under its own name.

    Raises:
        ValueError: A depth exceeds the widths given for it, or a depth comes without widths.
    """
    fields: dict[str, Any] = {}
    widths: dict[str, dict[int, int]] = {"conv": {}, "dense": {}}
    for name, value in point.items():
        match = _WIDTH.match(name)
        if match:
            widths[match.group(1)][int(match.group(2))] = int(value)
        elif name not in ("conv_layers", "dense_layers"):
            fields[name] = value
    for kind, field_name in _SHAPE_FIELDS.items():
        given = widths[kind]
        depth = point.get(f"{kind}_layers", len(given))
        if depth and sorted(given)[:depth] != list(range(1, depth + 1)):
            raise ValueError(
                f"{kind}_layers={depth} needs {kind}_width_1 ... {kind}_width_{depth}, "
                f"got widths for layers {sorted(given)}"
            )
        if given or f"{kind}_layers" in point:
            fields[field_name] = tuple(given[i] for i in range(1, int(depth) + 1))
    return fields


def is_shape_parameter(name: str) -> bool:
    """Whether ``name`` sets the network's depth or a layer's width."""
    return name in ("conv_layers", "dense_layers") or bool(_WIDTH.match(name))


def _widths(kind: str, layers: int, values: tuple[int, ...]) -> dict[str, Choice]:
    return {f"{kind}_width_{i}": Choice(values) for i in range(1, layers + 1)}


QUIZ14_PRESETS: dict[str, SearchSpace] = {
    space.name: space
    for space in (
        SearchSpace(
            name="full",
            description=(
                "The tutorial's space: activation, one to four convolutions of 8 to 64 "
                "filters, one to three dense layers of 32 to 256 units, the loss, the "
                "optimizer with or without momentum, and a log-uniform learning rate. Large: "
                "use ASHA and 20 or more samples; its grid is too big to enumerate."
            ),
            params={
                "activation": Choice(("relu", "tanh", "sigmoid", "elu")),
                "conv_layers": Choice((1, 2, 3, 4)),
                **_widths("conv", 4, (8, 16, 32, 64)),
                "dense_layers": Choice((1, 2, 3)),
                **_widths("dense", 3, (32, 64, 128, 256)),
                "loss": Choice(("cross_entropy", "mse", "multi_margin")),
                "optimizer": Choice(("sgd", "adam", "rmsprop")),
                "momentum": Choice((0.0, 0.9)),
                "lr": LogUniform(1e-4, 1e-1, grid=(1e-3, 1e-2, 1e-1)),
            },
        ),
        SearchSpace(
            name="widths",
            description=(
                "Only the widths of the Quiz 14 network (four convolutions, two dense "
                "layers) with tanh and plain SGD at lr 0.05, the tutorial's winning "
                "recipe: which layer sizes matter at a fixed depth."
            ),
            params={
                **_widths("conv", 4, (8, 16, 32, 64)),
                **_widths("dense", 2, (64, 128, 256)),
            },
            fixed={"activation": "tanh", "optimizer": "sgd", "momentum": 0.0, "lr": 0.05},
        ),
        SearchSpace(
            name="quick",
            description=(
                "A small pooled network (convolutions of 16 and 32 filters, each followed by "
                "2 x 2 max pooling, one dense layer of 128) with two activations, two "
                "optimizers and the learning rate: an epoch of the full split takes about half "
                "a minute on one CPU core and good points reach about 0.987 in five; its grid "
                "has 8 points."
            ),
            params={
                "activation": Choice(("relu", "tanh")),
                "optimizer": Choice(("sgd", "adam")),
                "lr": LogUniform(1e-3, 1e-1, grid=(3e-3, 3e-2)),
            },
            fixed={"conv_channels": (16, 32), "pool": True, "dense_units": (128,),
                   "momentum": 0.9},
        ),
    )
}


ASSIGNMENT1_PRESETS: dict[str, SearchSpace] = {
    space.name: space
    for space in (
        SearchSpace(
            name="full",
            description=(
                "The tutorial's space on CIFAR-10's baseline network (no pooling, no batch "
                "norm): activation, one to four convolutions, one to three dense layers, the "
                "loss, the optimizer with or without momentum and the learning rate."
            ),
            params=QUIZ14_PRESETS["full"].params,
            fixed={"network": "convnet"},
        ),
        SearchSpace(
            name="widths",
            description=(
                "Only the widths of the baseline network (four convolutions, two dense "
                "layers), trained with its default SGD with momentum."
            ),
            params={
                **_widths("conv", 4, (16, 32, 64, 128)),
                **_widths("dense", 2, (64, 128, 256)),
            },
            fixed={"network": "convnet"},
        ),
        SearchSpace(
            name="quick",
            description=(
                "The fast network's training recipe: peak learning rate, weight decay and "
                "label smoothing, at its default widths; every point is a strong network."
            ),
            params={
                "lr": LogUniform(0.05, 0.5, grid=(0.1, 0.2)),
                "weight_decay": Choice((1e-4, 5e-4)),
                "label_smoothing": Choice((0.0, 0.2)),
            },
            fixed={"network": "fast"},
        ),
    )
}
