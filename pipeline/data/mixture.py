"""Dataset mixtures, as 4M trains on them: several preprocess outputs, each with its own modality set, sampled by
weight into the same batches.

`resolve_mixture` turns the config's entries into sources (which modalities each output gives the run),
`mixture_table` builds the run's ModalityTable as the union of theirs (a modality in two outputs must have the same
tokenizer and row length), and `MixtureLoader` yields batches whose samples come from the datasets by weight.

Each dataset is streamed by its own `TokenShardLoader` (its shards, shuffling, holdout split and read retries, its
own position; its epochs wrap on their own: an epoch of a dataset is its `samples_per_epoch`). Which dataset fills
batch slot j is drawn from a counter-based RNG seeded by (seed, epoch, batch number), never carried: a resumed
loader re-derives the schedule, and every rank draws the same one (equal per-rank mixes, whatever each rank holds).
A sample carries only its dataset's modalities; the masker splits its budgets over those, and the batch's `present`
field says which they were. The position is the mixture's counters, its masking RNG and every dataset's position.

`open_loader` and `run_table` are what the train job calls: a single output (a string) goes through the plain
`TokenShardLoader` and `modality_table_from_output`, exactly as before mixtures existed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.loader import Part, ResumableBatches, TokenShardLoader
from pipeline.data.manifest import manifest_folders, read_manifest
from pipeline.data.masking import Masker
from pipeline.data.output_checks import folder_tokenizer
from pipeline.data.storage import Storage
from pipeline.data.token_shards import modality_table_from_output
from schemas.batch import ModalityTable
from schemas.common import StorageConfig
from schemas.loading import DatasetEntry, LoaderConfig, MaskingConfig, check_mixture, mixture_weights
from schemas.modalities import get_modality
from schemas.shards import token_folder

MIXTURE_STATE_VERSION = 1
DataSource = str | Sequence[DatasetEntry]


@dataclass(frozen=True)
class MixtureSource:
    """One dataset of a mixture as the run reads it: its normalised weight and the run modalities it gives."""

    name: str
    path: str
    weight: float
    modalities: tuple[str, ...]


def resolve_mixture(entries: Sequence[DatasetEntry], run_modalities: Sequence[str],
                    storage_config: StorageConfig | None = None) -> list[MixtureSource]:
    """Each entry's modalities (its own list, else its token folders among the run's), checked against its manifest;
    every run modality must come from at least one dataset."""
    entries = check_mixture(entries)
    run = [get_modality(name).name for name in run_modalities]
    sources = []
    for entry, weight in zip(entries, mixture_weights(entries)):
        folders = manifest_folders(Storage(entry.path, storage_config or StorageConfig()))
        if entry.modalities is None:
            modalities = tuple(m for m in run if token_folder(m) in folders)
            if not modalities:
                raise ValueError(f"data: dataset {entry.label!r} ({entry.path}) has no token folder of the run's "
                                 f"modalities {run}")
        else:
            modalities = entry.modalities
            absent = [m for m in modalities if token_folder(m) not in folders]
            if absent:
                raise ValueError(f"data: dataset {entry.label!r} ({entry.path}) has no token folders for {absent}")
        sources.append(MixtureSource(entry.label, entry.path, weight, modalities))
    held = {m for source in sources for m in source.modalities}
    missing = [m for m in run if m not in held]
    if missing:
        raise ValueError(f"data: no dataset of the mixture holds {missing}; drop them from modalities or add a "
                         f"dataset that has them")
    return sources


def mixture_table(sources: Sequence[MixtureSource], run_modalities: Sequence[str],
                  storage_config: StorageConfig | None = None,
                  vocab_sizes: Mapping[str, int] | None = None) -> ModalityTable:
    """The run's table, in the order of `run_modalities`: each modality's spec from the datasets that hold it, which
    must agree on its tokenizer (the same ids must mean the same tokens) and its row length."""
    specs: dict[str, tuple] = {}  # modality -> (spec, tokenizer hash, dataset name)
    for source in sources:
        manifest = read_manifest(Storage(source.path, storage_config or StorageConfig()),
                                 [token_folder(get_modality(m).name) for m in source.modalities])
        table = modality_table_from_output(source.path, source.modalities, storage_config, vocab_sizes)
        for spec in table.specs:
            tokenizer = folder_tokenizer(manifest, token_folder(spec.name))
            if spec.name not in specs:
                specs[spec.name] = (spec, tokenizer, source.name)
                continue
            first, first_tokenizer, first_name = specs[spec.name]
            if tokenizer != first_tokenizer:
                raise ValueError(f"data: {spec.name} was tokenized by {first_tokenizer} in {first_name!r} and by "
                                 f"{tokenizer} in {source.name!r}; a mixture needs one tokenizer per modality")
            if spec != first:
                raise ValueError(f"data: {spec.name} rows are {first.max_tokens} tokens in {first_name!r} and "
                                 f"{spec.max_tokens} in {source.name!r}")
    return ModalityTable.of(specs[get_modality(name).name][0] for name in run_modalities)


def run_table(data: DataSource, run_modalities: Sequence[str], storage_config: StorageConfig | None = None,
              vocab_sizes: Mapping[str, int] | None = None) -> ModalityTable:
    """The run's ModalityTable, from one output or from a mixture's."""
    if isinstance(data, str):
        return modality_table_from_output(data, run_modalities, storage_config, vocab_sizes)
    return mixture_table(resolve_mixture(data, run_modalities, storage_config), run_modalities, storage_config,
                         vocab_sizes)


def open_loader(data: DataSource, table: ModalityTable, masking: MaskingConfig, config: LoaderConfig, rank: int = 0,
                world_size: int = 1, storage_config: StorageConfig | None = None, *, part: Part = "train"):
    """One rank's loader of `data`: a `TokenShardLoader` for one output, a `MixtureLoader` for a mixture."""
    if isinstance(data, str):
        return TokenShardLoader(data, table, masking, config, rank, world_size, storage_config, part=part)
    sources = resolve_mixture(data, table.names, storage_config)
    return MixtureLoader(sources, table, masking, config, rank, world_size, storage_config, part=part)


class MixtureLoader(ResumableBatches):
    """One training worker's batches drawn from several datasets by weight; the interface of `TokenShardLoader`
    (`iter`, `iter_keyed`, `len`, `epoch`, `state_dict`, `load_state_dict`). Keys are `<dataset>/<key>`.

    An epoch is as many batches as the datasets' epochs hold samples together; it is a unit of iteration and
    reporting only, since each dataset wraps its own epochs as the weights consume it."""

    def __init__(self, sources: Sequence[MixtureSource], table: ModalityTable, masking: MaskingConfig,
                 config: LoaderConfig, rank: int = 0, world_size: int = 1,
                 storage_config: StorageConfig | None = None, *, part: Part = "train"):
        self.sources, self.config, self.rank, self.world_size = list(sources), config, rank, world_size
        self.weights = np.array([source.weight for source in sources])
        self.loaders = []
        for source in sources:
            modalities = tuple(m for m in source.modalities if not config.modalities or m in config.modalities)
            if not modalities:
                raise ValueError(f"loader.modalities {list(config.modalities)} leave dataset {source.name!r} "
                                 f"nothing to read")
            # Reading is sequential here: the mixture's own prefetch thread overlaps it with the step.
            settings = config.model_copy(update={"modalities": modalities, "prefetch_batches": 0})
            self.loaders.append(TokenShardLoader(source.path, table, masking, settings, rank, world_size,
                                                 storage_config, part=part))
        self.masker = Masker(table, masking)
        total = sum(loader.samples_per_epoch for loader in self.loaders)
        self.batches_per_epoch = max(1, math.ceil(total / config.batch_size))
        self._fingerprint = hashlib.sha256(json.dumps(
            [[s.name, s.weight, list(s.modalities)] for s in self.sources]).encode()).hexdigest()[:16]
        self._state = self._epoch_start(0, np.random.default_rng([config.seed, rank, 0x4D4958]),
                                        [loader.state_dict() for loader in self.loaders])

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    def dataset_epochs(self) -> dict[str, int]:
        """Each dataset's own epoch: how often the mixture has wrapped it."""
        return {s.name: state["epoch"] for s, state in zip(self.sources, self._state["datasets"])}

    # --- state ----------------------------------------------------------------------------------------------------
    def load_state_dict(self, state: dict) -> None:
        expected = {"version": MIXTURE_STATE_VERSION, "seed": self.config.seed, "batch_size": self.config.batch_size,
                    "mixture": self._fingerprint, "rank": self.rank, "world_size": self.world_size}
        differing = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differing:
            raise ValueError(f"mixture loader state was saved under other settings (saved, now): {differing}")
        for loader, saved in zip(self.loaders, state["datasets"]):
            loader.load_state_dict(saved)  # each dataset checks its own shards and tokenizers
        self._state = json.loads(json.dumps(state))

    def _epoch_start(self, epoch: int, mask_rng: np.random.Generator, datasets: list[dict]) -> dict:
        return {"version": MIXTURE_STATE_VERSION, "seed": self.config.seed, "batch_size": self.config.batch_size,
                "mixture": self._fingerprint, "rank": self.rank, "world_size": self.world_size, "epoch": epoch,
                "batches": 0, "mask_rng": mask_rng.bit_generator.state, "datasets": datasets}

    def schedule(self, epoch: int, number: int) -> np.ndarray:
        """The dataset of each slot of batch `number` (1-based) of `epoch`: i.i.d. by weight, from a counter-based
        seed, so it is the same on every rank and after any resume."""
        rng = np.random.default_rng([self.config.seed, epoch, number, 0x4D4958])
        return rng.choice(len(self.weights), size=self.config.batch_size, p=self.weights)

    # --- iteration ------------------------------------------------------------------------------------------------
    def _produce(self, state: dict) -> Iterator[tuple[list[str], dict[str, np.ndarray], dict]]:
        mask_rng = np.random.default_rng()
        mask_rng.bit_generator.state = state["mask_rng"]
        positions = state["datasets"]  # updated in place by the streams, sample by sample
        streams = [loader.stream(position) for loader, position in zip(self.loaders, positions)]
        for number in range(state["batches"] + 1, self.batches_per_epoch + 1):
            chosen = self.schedule(state["epoch"], number)
            chunk = [(index, next(streams[index])) for index in chosen.tolist()]
            rows = [TokenShardLoader.pick_crop(rows, mask_rng) for _, (_, rows) in chunk]
            batch = self.masker.batch(rows, mask_rng)
            keys = [f"{self.sources[index].name}/{key}" for index, (key, _) in chunk]
            if number == self.batches_per_epoch:
                after = self._epoch_start(state["epoch"] + 1, mask_rng, positions)
            else:
                after = {**state, "batches": number, "mask_rng": mask_rng.bit_generator.state, "datasets": positions}
            yield keys, batch, json.loads(json.dumps(after))
