"""The modality registry covers both research systems and refuses what Tessera cannot yet produce."""

import dataclasses

import numpy as np
import pytest

from pipeline.data.labelers import LABELERS
from pipeline.data.raw import RAW_READERS
from schemas.modalities import (
    Family,
    Modality,
    ModalityNotImplementedError,
    Source,
    TokenizerFamily,
    UnknownModalityError,
    all_modalities,
    get_modality,
    implemented_names,
    require_implemented,
)

FOURM21 = ["rgb", "caption", "t5_caption", "det", "semseg", "depth", "normal", "canny_edge", "sam_edge",
           "sam_instance", "human_poses", "color_palette", "metadata", "clip_feature", "dinov2_feature",
           "dinov2_global", "imagebind_feature", "imagebind_global"]
META_TRANSFORMER = ["text", "image", "point_cloud", "audio", "video", "infrared", "hyperspectral", "xray",
                    "tabular", "graph", "time_series", "imu"]


@pytest.mark.parametrize("name", FOURM21 + META_TRANSFORMER)
def test_every_research_modality_is_registered(name):
    assert get_modality(name).name


def test_sources_are_recorded():
    assert Source.META_TRANSFORMER in get_modality("imu").sources
    assert {Source.FOURM21, Source.META_TRANSFORMER} <= set(get_modality("image").sources)
    assert get_modality("text") is get_modality("caption")


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_modality("rgb").vocab_size = 3  # type: ignore[misc]


def test_4m21_token_facts():
    assert (get_modality("rgb").vocab_size, get_modality("rgb").num_tokens) == (16_384, 196)
    assert get_modality("dinov2_feature").num_tokens == 256
    assert get_modality("metadata").max_tokens == 40 and get_modality("color_palette").max_tokens == 23
    text_like = [m for m in all_modalities() if m.tokenizer is TokenizerFamily.WORDPIECE]
    assert len({m.vocab_size for m in text_like}) == 1, "4M-21 shares one WordPiece vocabulary"


def test_token_dtype_fits_vocabulary():
    for modality in all_modalities():
        assert np.iinfo(modality.token_dtype).max >= modality.vocab_size - 1


def test_unimplemented_is_refused_with_reason():
    with pytest.raises(ModalityNotImplementedError, match="not implemented yet"):
        require_implemented("point_cloud")
    with pytest.raises(UnknownModalityError, match="known modalities"):
        get_modality("rbg")


def test_implemented_means_a_labeler_exists():
    # A raw plug-in (pipeline/data/raw) makes its modality's label member, in place of a labeler.
    assert set(implemented_names()) == set(LABELERS) | set(RAW_READERS)


def test_invalid_records_are_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        Modality("x", Family.SIGNAL, TokenizerFamily.DATA2SEQ, 10, "npy", (Source.TESSERA,), "x")
    with pytest.raises(ValueError, match="dots"):
        Modality("a.b", Family.SIGNAL, TokenizerFamily.DATA2SEQ, 10, "npy", (Source.TESSERA,), "x", num_tokens=1)
