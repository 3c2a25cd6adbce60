"""A mixture of sample corpora: the image-text corpus plus one corpus per raw modality, each in its own folder
(`<out>/image_text`, `<out>/<modality>`), each to be preprocessed on its own (`primary: <modality>`) and mixed
at pretraining. Every writer works offline and takes (folder, seed=...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.data.sample_corpus.audio import write_audio_corpus
from pipeline.data.sample_corpus.graph import write_graph_corpus
from pipeline.data.sample_corpus.imu import write_imu_corpus
from pipeline.data.sample_corpus.tabular import write_tabular_corpus
from pipeline.data.sample_corpus.time_series import write_time_series_corpus
from pipeline.data.sample_corpus.writer import write_corpus
from schemas.corpus import SampleCorpusConfig

IMAGE_TEXT = "image_text"
# Keyed by the primary modality of each corpus (its folder name).
RAW_CORPORA: dict[str, Callable[..., list[Path]]] = {
    "time_series": write_time_series_corpus,
    "imu": write_imu_corpus,
    "audio": write_audio_corpus,
    "tabular": write_tabular_corpus,
    "graph": write_graph_corpus,
}


def write_mixture(config: SampleCorpusConfig, log: Callable[[str], None] = print) -> dict[str, str]:
    """Write every corpus of the mixture under `config.out` (a local folder); returns folder name -> path."""
    if "://" in config.out:
        raise ValueError(f"a mixture is written to a local folder (its raw corpora are files); got {config.out}")
    root = Path(config.out)
    written = {IMAGE_TEXT: str(root / IMAGE_TEXT)}
    description = write_corpus(config.model_copy(update={"out": written[IMAGE_TEXT]}))
    log(f"{IMAGE_TEXT}: {config.samples} samples in {len(description['shards'])} shards -> {written[IMAGE_TEXT]}")
    for modality, write in RAW_CORPORA.items():
        paths = write(root / modality, seed=config.seed)
        written[modality] = str(root / modality)
        log(f"{modality}: {len(paths)} files -> {written[modality]}")
    return written
