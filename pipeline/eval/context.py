"""What an eval task gets to work with: the model handle, tokenizers and its data, all loaded lazily on the worker.

A task that needs no model (an external-data smoke test) never loads one; a task's split is read once per task.
Samples are split into a fit set and a score set by a hash of their key (`schemas.keys.in_holdout`, no salt), so
the split is the same for every checkpoint and every task, and never depends on shard order. Being the same split
as pretraining's validation holdout at a larger fraction, the score set holds every key pretraining held out and the
probe never fits on one.

With several datasets (`EvaluateConfig.data` as a mixture), a task reads the one `task_data` names for it, else the
first whose manifest holds every folder the task reads (`dataset_for`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.manifest import folder_rows, manifest_folders, read_manifest
from pipeline.data.output_checks import folder_tokenizer, require_tokenizer
from pipeline.data.storage import Storage
from pipeline.data.tar_io import iterate_shard
from pipeline.data.token_shards import list_token_shards, read_token_shard
from pipeline.eval.registry import ExternalDataset, Task, TokenSplit
from schemas.evaluate import EvaluateConfig
from schemas.keys import in_holdout
from schemas.shards import token_folder


@dataclass
class EvalSample:
    """One sample of a token split: token rows per modality and the raw members of its aux folders."""

    key: str
    tokens: dict[str, np.ndarray]  # modality -> (n_crops, n) ids
    aux: dict[str, dict[str, bytes]] = field(default_factory=dict)  # folder -> {ext: bytes}


@dataclass
class TaskContext:
    task: Task
    checkpoint: str | None
    config: EvaluateConfig

    @functools.cached_property
    def model(self) -> Any:
        """The checkpoint's model (eval mode, on the task's device), loaded on first use."""
        if self.checkpoint is None:
            raise ValueError(f"task {self.task.name!r} needs a model but no checkpoint was given")
        from pipeline.eval.checkpoint import load_model

        return load_model(self.checkpoint, self.config.storage, self.device)

    @property
    def device(self) -> str:
        """'cuda' when the task reserved a GPU (Ray then sets CUDA_VISIBLE_DEVICES to it), else 'cpu'."""
        import torch

        wants_gpu = self.config.resources_of(self.task.name, self.task.resources).num_gpus > 0
        return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"

    def tokenizer(self, modality: str) -> Any:
        """The configured tokenizer of `modality`, refused unless it is the one that wrote the data's token folder
        (another one would decode the ids with another vocabulary and still report a score)."""
        from pipeline.data.tokenize import load_tokenizer_from

        directory = self.config.tokenizers.get(modality)
        if directory is None:
            raise ValueError(f"task {self.task.name!r} needs the {modality} tokenizer: set tokenizers.{modality} "
                             f"in the evaluate config")
        tokenizer = load_tokenizer_from(directory, self.config.storage)
        for path in self.config.datasets().values():  # every dataset holding the modality must have used it
            storage = Storage(path, self.config.storage)
            require_tokenizer(read_manifest(storage, [token_folder(modality)]), modality, tokenizer.content_hash,
                              storage.uri())
        return tokenizer

    @functools.cached_property
    def storage(self) -> Storage:
        """The dataset this task reads."""
        return Storage(dataset_for(self.config, self.task), self.config.storage)

    @functools.cached_property
    def samples(self) -> list[EvalSample]:
        """The task's token split, up to probe.max_samples samples in manifest order."""
        split = self.task.data
        if not isinstance(split, TokenSplit):
            raise TypeError(f"task {self.task.name!r} reads no token split")
        return read_split(self.storage, split, self.config.probe.max_samples)

    def fit_and_score(self) -> tuple[list[EvalSample], list[EvalSample]]:
        """The task's samples split by key into the fit set and the score set; refused if either is empty."""
        probe = self.config.probe
        score = [s for s in self.samples if in_holdout(s.key, probe.test_fraction)]
        fit = [s for s in self.samples if not in_holdout(s.key, probe.test_fraction)]
        if not fit or not score:
            split = self.task.data  # a TokenSplit: `samples` reads no other kind
            folders = ", ".join([*map(token_folder, split.modalities), *split.aux])
            empty = " and ".join(name for name, part in (("fit", fit), ("score", score)) if not part)
            raise ValueError(
                f"task {self.task.name!r}: the {empty} set of its split ({folders}) is empty: {len(self.samples)} "
                f"samples read, {len(fit)} to fit and {len(score)} to score at probe.test_fraction="
                f"{probe.test_fraction:g}; give it more samples (a larger dataset, or probe.max_samples above "
                f"{probe.max_samples} if it capped them) or a probe.test_fraction nearer 0.5")
        return fit, score

    def external(self) -> Any:
        if not isinstance(self.task.data, ExternalDataset):
            raise TypeError(f"task {self.task.name!r} has no external dataset")
        return self.task.data.load()


def dataset_for(config: EvaluateConfig, task: Task) -> str:
    """The path of the dataset `task` reads: the one `task_data` names, the only one, or the first whose manifest
    holds the task's token folders and aux folders."""
    datasets = config.datasets()
    if not datasets:
        raise ValueError(f"task {task.name!r} reads token shards: give --data (a preprocess output)")
    if task.name in config.task_data:
        return datasets[config.task_data[task.name]]
    if len(datasets) == 1:
        return next(iter(datasets.values()))
    split = task.data
    wanted = [token_folder(m) for m in split.modalities] + list(split.aux) if isinstance(split, TokenSplit) else []
    held = {}
    for name, path in datasets.items():
        held[name] = set(manifest_folders(Storage(path, config.storage)))
        if set(wanted) <= held[name]:
            return path
    raise ValueError(f"task {task.name!r} reads {wanted}, which no dataset of data holds whole: "
                     f"{ {name: sorted(folders) for name, folders in held.items()} }; set task_data.{task.name}")


def read_split(storage: Storage, split: TokenSplit, max_samples: int) -> list[EvalSample]:
    """Token rows of `split.modalities` plus the aux folders' members, shard by shard, keys aligned."""
    manifest = read_manifest(storage, [*map(token_folder, split.modalities), *split.aux])
    for modality in split.modalities:
        folder_tokenizer(manifest, token_folder(modality))  # one tokenizer per folder, or refused
    aux_rows = {(folder, row.shard): row for folder in split.aux for row in folder_rows(manifest, folder)}
    samples: list[EvalSample] = []
    for shard in list_token_shards(storage, list(split.modalities), manifest):
        aux_members = {}
        for folder in split.aux:
            row = aux_rows.get((folder, shard.shard))
            if row is None:
                raise ValueError(f"{storage.uri()}: shard {shard.shard} has no {folder}/ folder in the manifest")
            aux_members[folder] = dict(iterate_shard(storage.read_bytes(row.uri)))
        for key, tokens in read_token_shard(storage, shard):
            missing = [folder for folder in split.aux if key not in aux_members[folder]]
            if missing:
                raise ValueError(f"{storage.uri()}: sample {key} is missing from {missing}")
            samples.append(EvalSample(key, tokens, {folder: aux_members[folder][key] for folder in split.aux}))
            if len(samples) >= max_samples:
                return samples
    return samples
