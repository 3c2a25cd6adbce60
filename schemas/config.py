"""Typed job configs loaded from YAML with `--set a.b=value` overrides.

Every job config is a pydantic model built on `ConfigModel`: unknown keys are errors, values are type-checked,
and a failure names the offending key path and where it came from (the file, or `--set`). Nothing is silently
ignored, because a typo that silently keeps a default is how a week of GPU time gets wasted.

No message or dump shows a credential: values under secret-looking keys (`secret_access_key`, `HF_TOKEN`,
`password`, ...) and strings shaped like AWS access key ids are masked (`redact_value`, `redact_text`).
"""

from __future__ import annotations

import difflib
import re
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


MASK = "***"
# Words of a key (split at '_', '-', '.', camelCase) that mark its value as a credential, alone or after a qualifier:
# `password`, `aws_secret_access_key`, `HF_TOKEN`, `api_key`, not `source_key`, `key_column` or `token_count`.
_SECRET_WORDS = frozenset({"secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"})
_KEY_QUALIFIERS = frozenset({"access", "api", "private", "auth", "session", "signing", "account", "master"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# AWS access key ids (long-term AKIA..., temporary ASIA...), and the password of a user:password@host URL.
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@")


def is_secret_name(name: object) -> bool:
    """Whether a key's value is a credential, from the key's name alone."""
    words = [w.lower() for w in _WORD.findall(str(name))]
    if _SECRET_WORDS.intersection(words) or (words and words[-1] == "token"):
        return True
    return any(a in _KEY_QUALIFIERS and b in ("key", "token") for a, b in zip(words, words[1:]))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with AWS access key ids, URL passwords and the given secret values masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", _AWS_KEY_ID.sub(MASK, text))


def redact_value(value: Any) -> Any:
    """A copy of a config value (dicts, lists, scalars) with credentials masked: everything under a secret-looking
    key, and strings that look like credentials."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_name(k) and v is not None else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return redact_text(value) if isinstance(value, str) else value


def secret_values(value: Any) -> tuple[str, ...]:
    """The values found under secret-looking keys, at any depth, to mask in free text (not the 1-3 character
    ones, which would garble the text and guard nothing)."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_name(k) and isinstance(v, (str, int, float)) and len(str(v)) >= 4:
                found.append(str(v))
            else:
                found.extend(secret_values(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found.extend(secret_values(v))
    return tuple(found)


def _shown_override(text: str) -> str:
    """An override as an error message may show it: `key=***` when the key names a credential."""
    path, _, _ = text.partition("=")
    return f"{path}={MASK}" if is_secret_name(path.split(".")[-1]) else redact_text(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {redact_text(text)!r}: expected KEY.PATH=VALUE")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {_shown_override(text)!r}: empty key in path {path!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {_shown_override(text)!r}: value is not valid YAML ({_yaml_problem(exc)})") from None
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
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, without the snippet of the offending line it quotes (a credential's)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or type(exc).__name__}{where}"


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
    model: type[ConfigModel], exc: pydantic.ValidationError, origin: str, overridden: set[str],
    data: Any = None,
) -> str:
    """Every problem of `exc` on one line each, with its key path and origin; credentials masked (`data`, the
    input that failed, lends the secret values to mask wherever a validator's message repeats them)."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        where = "--set" if any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in overridden) else origin
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _known_fields(model, loc), n=1)
            message = "unknown key" + (f" (did you mean {'.'.join([*map(str, loc[:-1]), hint[0]])!r}?)" if hint else "")
        elif isinstance(error.get("input"), dict):  # a section's own check: its message says what is wrong
            message = error["msg"]
        else:
            shown = MASK if any(is_secret_name(part) for part in loc) else redact_value(error.get("input"))
            message = f"{error['msg']} (got {shown!r})"
        lines.append(f"  {key}: {message} [{where}]")
    return redact_text(f"invalid {model.__name__} from {origin}:\n" + "\n".join(lines), secret_values(data))


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
        raise ConfigError(format_validation_error(model, exc, origin, overridden, data)) from None


def dump_config(config: ConfigModel) -> str:
    """The config as YAML, e.g. to store beside a run's outputs, credentials masked."""
    return yaml.safe_dump(redact_value(config.model_dump(mode="json")), sort_keys=False)
