"""Typed configs: every mistake names its key path and its origin; nothing is silently ignored."""

import copy
from pathlib import Path

import pytest
import yaml

from schemas.config import ConfigError, dump_config, load_config, parse_override
from schemas.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_default_recipe_loads():
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml")
    assert config.image.resolution == 224
    assert "rgb" in config.modalities


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "trian:\n  lr: 0.001\n")
    with pytest.raises(ConfigError) as info:
        load_config(PreprocessConfig, path)
    message = str(info.value)
    assert "trian" in message and str(path) in message and "unknown key" in message


def test_unknown_nested_key_gets_full_path_and_hint(tmp_path):
    path = write(tmp_path, "image:\n  resolutoin: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(PreprocessConfig, path)
    assert "image.resolutoin" in str(info.value)
    assert "did you mean 'image.resolution'" in str(info.value)


def test_ill_typed_value_is_refused(tmp_path):
    path = write(tmp_path, "image:\n  resolution: large\n")
    with pytest.raises(ConfigError, match=r"image\.resolution"):
        load_config(PreprocessConfig, path)


def test_override_typo_is_attributed_to_set(tmp_path):
    path = write(tmp_path, "image:\n  resolution: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(PreprocessConfig, path, ["trian.lr=3e-4"])
    assert "trian" in str(info.value) and "[--set]" in str(info.value)


def test_override_sets_nested_value_with_yaml_typing(tmp_path):
    path = write(tmp_path, "image:\n  resolution: 64\n")
    config = load_config(PreprocessConfig, path, ["image.resolution=32", "caption.required=true"])
    assert config.image.resolution == 32 and config.caption.required is True


def test_override_parsing():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_unimplemented_modality_is_refused_clearly():
    with pytest.raises(ConfigError) as info:
        load_config(PreprocessConfig, None, ["modalities=[rgb, point_cloud]"])
    assert "point_cloud" in str(info.value) and "not implemented" in str(info.value)


def test_unknown_modality_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown modality 'rbg'"):
        load_config(PreprocessConfig, None, ["modalities=[rbg]"])


def test_configs_are_frozen_and_dump_without_secrets():
    config = load_config(PreprocessConfig, None, ["storage.access_key_id=AKIAEXAMPLE",
                                                  "storage.secret_access_key=very-secret"])
    with pytest.raises(Exception):
        config.image = None  # type: ignore[misc]
    assert "very-secret" not in dump_config(config) and "very-secret" not in repr(config)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    from schemas.jobs import config_model_for

    load_config(config_model_for(path.relative_to(REPO / "configs")), path)


def _leaf_paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in data.items():
        nested = isinstance(value, dict) and value
        paths += _leaf_paths(value, (*prefix, key)) if nested else [(*prefix, key)]
    return paths


def _without(data: dict, path: tuple) -> dict:
    data = copy.deepcopy(data)
    parents = [data]
    for key in path[:-1]:
        parents.append(parents[-1][key])
    del parents[-1][path[-1]]
    for parent, key in zip(reversed(parents[:-1]), reversed(path[:-1])):  # drop sections left empty
        if not parent[key]:
            del parent[key]
    return data


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if "study" not in p.parts),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_state_only_what_differs_from_the_defaults(path, tmp_path):
    """No key of a recipe restates the job's default: a key whose value is the default and whose removal leaves the
    loaded config the same is noise that drifts when the default changes. (A key equal to the default can still be
    needed: a section given in a file starts from its own class's defaults, not the job's.)"""
    from schemas.jobs import config_model_for

    model = config_model_for(path.relative_to(REPO / "configs"))
    data = yaml.safe_load(path.read_text()) or {}
    loaded, defaults = load_config(model, path).model_dump(mode="json"), model().model_dump(mode="json")
    for leaf in _leaf_paths(data):
        default = defaults
        for key in leaf:
            default = default.get(key) if isinstance(default, dict) else None
        if _plain(_get(data, leaf)) != _plain(default):
            continue
        trimmed = write(tmp_path, yaml.safe_dump(_without(data, leaf)))
        assert load_config(model, trimmed).model_dump(mode="json") != loaded, f"{'.'.join(leaf)} restates the default"


def _get(data: dict, path: tuple):
    for key in path:
        data = data[key]
    return data


def _plain(value):
    """YAML lists and schema tuples compare alike; ints and floats too."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
