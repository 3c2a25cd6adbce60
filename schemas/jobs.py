"""Which typed config each job reads; `configs/<job>/*.yaml` holds that job's recipes."""

from __future__ import annotations

from pathlib import PurePath

from schemas.config import ConfigModel
from schemas.evaluate import EvaluateConfig
from schemas.generate import GenerateConfig
from schemas.pretrain import PretrainConfig
from schemas.preprocess import PreprocessConfig
from schemas.study import StudySpec
from schemas.submit import SubmitConfig
from schemas.train_tokenizer import TrainTokenizerConfig

JOB_CONFIGS: dict[str, type[ConfigModel]] = {
    "preprocess": PreprocessConfig,
    "submit": SubmitConfig,
    "evaluate": EvaluateConfig,
    "generate": GenerateConfig,
    "pretrain": PretrainConfig,
    "train_tokenizer": TrainTokenizerConfig,
    "study": StudySpec,
}


def config_model_for(relpath: str | PurePath) -> type[ConfigModel]:
    """The config model of a recipe file, from its folder under configs/ (e.g. preprocess/default.yaml)."""
    job = PurePath(relpath).parts[0]
    if job not in JOB_CONFIGS:
        raise KeyError(f"configs/{job}/ belongs to no job; jobs with configs: {sorted(JOB_CONFIGS)}")
    return JOB_CONFIGS[job]
