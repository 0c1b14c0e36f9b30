"""Command lines built from dataclasses, with YAML config files the way Lightning's CLI does.

Every field of a config dataclass becomes an option (``--batch-size`` for ``batch_size``) whose
help text comes from the field's ``help`` metadata. ``--config FILE`` reads a YAML mapping of
field names to values; options given on the command line override it, and
``--print-config`` writes the resolved config as YAML, ready to be passed back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C")

# The precisions a config offers, typed as values of the Trainer's ``precision`` argument.
PrecisionName = Literal["32-true", "bf16-mixed", "16-mixed", "64-true"]
PRECISIONS: tuple[PrecisionName, ...] = ("32-true", "bf16-mixed", "16-mixed", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def default_data_dir() -> str:
    """The data folder: ``$DATA_DIR`` when set, else ``data`` in the working directory."""
    return os.environ.get("DATA_DIR", "data")


def option(default: Any, help: str, choices: Any = None) -> Any:
    """A dataclass field that becomes a command-line option with help text and choices."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """Returns the concrete type of an annotation and whether it admits ``None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that reads ``none`` as None and any other text with ``kind``."""
    return lambda s: None if s == "none" else kind(s)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Checks a YAML value against the field's type and converts lists to tuples."""
    hints = typing.get_type_hints(cls)
    kind, optional = _base_type(hints[name])
    if value is None and optional:
        return None
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
            raise ValueError(f"{name} must be a list of {item.__name__}, got {value!r}")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{name} must be of type {kind.__name__}, got {value!r}")
    return value


def load_config_file(cls: type[C], path: str | Path) -> dict[str, Any]:
    """Reads a YAML config into checked field values of ``cls``.

    Raises:
        ValueError: The file is not a mapping, names an unknown field or has a wrong type.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(
            f"config file {path} has unknown keys {unknown}; valid keys are {sorted(fields)}"
        )
    all_fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    choices = {f.name: f.metadata["choices"] for f in all_fields if "choices" in f.metadata}
    try:
        values = {name: _coerce(cls, name, value) for name, value in data.items()}
        for name, value in values.items():
            if name in choices and value not in choices[name]:
                raise ValueError(f"{name} must be one of {list(choices[name])}, got {value!r}")
    except ValueError as err:
        raise ValueError(f"config file {path}: {err}") from err
    return values


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """Builds an argument parser with one option per field of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of option values")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind, optional = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        options: dict[str, Any] = {
            "dest": field.name,
            "default": argparse.SUPPRESS,
            "help": f"{field.metadata.get('help', '')} (default: {field.default!r})",
        }
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, type=item, nargs="+", metavar=item.__name__.upper(),
                                **options)
        elif optional:
            parser.add_argument(flag, type=_none_or(kind), metavar=kind.__name__.upper(),
                                **options)
        else:
            # With choices, argparse's default metavar lists them: {sigmoid,relu,...}.
            metavar = None if "choices" in options else kind.__name__.upper()
            parser.add_argument(flag, type=kind, metavar=metavar, **options)
    return parser


def parse_config(cls: type[C], description: str, argv: Sequence[str] | None = None) -> C:
    """Resolves a config from defaults, then ``--config FILE``, then command-line options."""
    parser = build_parser(cls, description)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config")
    print_config = args.pop("print_config")
    if config_file:
        try:
            values.update(load_config_file(cls, config_file))
        except ValueError as err:
            parser.error(str(err))
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    try:
        config = cls(**values)
    except ValueError as err:
        parser.error(str(err))
    if print_config:
        yaml.safe_dump(to_dict(config), sys.stdout, sort_keys=False)
        raise SystemExit(0)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain YAML-friendly values (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def save_config(config: Any, path: str | Path) -> None:
    """Writes a config as YAML that ``--config`` reads back."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
