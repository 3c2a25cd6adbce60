"""Typed job configs loaded from YAML with `--set a.b=value` overrides.

Every job config is a pydantic model built on `ConfigModel`: unknown keys are errors, values are type-checked,
and a failure names the offending key path and where it came from (the file, or `--set`). Nothing is silently
ignored, because a typo that silently keeps a default is how a week of GPU time gets wasted.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml


class ConfigModel(pydantic.BaseModel):
    """Base of every config section: frozen, no unknown keys, defaults validated too."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


C = TypeVar("C", bound=ConfigModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message lists every problem with its key path and origin."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {text!r}: empty key in path {path!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    # YAML 1.1 reads 3e-4 (no dot) as a string; a number-looking string is almost surely meant as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return keys, value


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[: depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _known_fields(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that `loc` points into, for 'did you mean' hints."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(
    model: type[ConfigModel], exc: pydantic.ValidationError, origin: str, overridden: set[str]
) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        where = "--set" if any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in overridden) else origin
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _known_fields(model, loc), n=1)
            message = "unknown key" + (f" (did you mean {'.'.join([*map(str, loc[:-1]), hint[0]])!r}?)" if hint else "")
        else:
            message = f"{error['msg']} (got {error.get('input')!r})"
        lines.append(f"  {key}: {message} [{where}]")
    return f"invalid {model.__name__} from {origin}:\n" + "\n".join(lines)


def load_config(model: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Build `model` from a YAML file (or its defaults when path is None) plus `--set` overrides."""
    data = read_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "defaults"
    overridden = set()
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
        overridden.add(".".join(keys))
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(model, exc, origin, overridden)) from None


def dump_config(config: ConfigModel) -> str:
    """The config as YAML, e.g. to store beside a run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
