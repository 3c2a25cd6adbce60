"""Typed configs: every mistake names its key path and its origin; nothing is silently ignored."""

from pathlib import Path

import pytest

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
