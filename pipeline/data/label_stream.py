"""Label shards of one modality as an endless, shuffled stream of arrays per training rank (tokenizer training).

Each rank reads its own shards directly (as open_clip does): shards listed by the manifest, dealt round-robin
over ranks; with fewer shards than ranks every rank reads every shard and keeps every world-th sample. Shard order
is reshuffled every epoch and samples are drawn from a shuffle buffer. A stable hash of the key puts a fixed
fraction of samples in a held-out split that training never sees and evaluation reads alone. Training runs for a
number of steps rather than epochs, so ranks never need to agree on how many batches an epoch has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from pipeline.data.manifest import folder_rows, read_manifest
from pipeline.data.storage import Storage
from pipeline.data.tar_io import ShardReadError, iterate_shard, read_shard_bytes, read_with_retries
from schemas.keys import in_holdout
from schemas.loading import LoaderConfig
from schemas.modalities import get_modality

log = logging.getLogger(__name__)
Reader = Callable[[bytes], np.ndarray]
# Shard reads retry as the training loader's do, with its defaults (tokenizer training has no loader section).
_READS = LoaderConfig()


def label_shards(storage: Storage, modality: str) -> list[str]:
    """The modality's shard paths in shard order, from the manifest (never a directory listing)."""
    folder = get_modality(modality).name
    rows = folder_rows(read_manifest(storage, [folder]), folder)
    if not rows:
        raise FileNotFoundError(f"{storage.uri()} has no {folder} label shards in its manifest")
    return [r.uri for r in rows]


def _members(storage: Storage, path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The shard's members, or none (with a warning) when it cannot be read even after retries."""
    try:
        payload = read_with_retries(lambda: read_shard_bytes(storage, path), retries=_READS.read_retries,
                                    backoff_s=_READS.retry_backoff_s, what=f"reading {path}", log=log)
    except ShardReadError as exc:
        log.warning("skipping shard %s after %d failed reads: %s", path, _READS.read_retries + 1, exc)
        return iter(())
    return iterate_shard(payload)


def iter_split(storage: Storage, modality: str, read: Reader, *, holdout: float, held_out: bool,
               limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) of one split in shard order: the training split's first samples fit the normalisation, the
    held-out split is what evaluation scores."""
    count = 0
    for path in label_shards(storage, modality):
        for key, fields in _members(storage, path):
            if in_holdout(key, holdout) == held_out:
                yield key, read(next(iter(fields.values())))
                count += 1
                if limit is not None and count >= limit:
                    return


class LabelStream:
    def __init__(self, storage: Storage, modality: str, read: Reader, *, rank: int, world: int, seed: int,
                 holdout: float, buffer: int = 512):
        self.storage, self.modality, self.read = storage, modality, read
        self.rank, self.world, self.seed, self.holdout, self.buffer = rank, world, seed, holdout, buffer
        shards = label_shards(storage, modality)
        if len(shards) >= world:
            self.shards, self.stride = shards[rank::world], 1
        else:
            self.shards, self.stride = shards, world

    def _epoch(self, epoch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        index = 0
        for i in rng.permutation(len(self.shards)):
            for key, fields in _members(self.storage, self.shards[i]):
                mine = self.stride == 1 or index % self.stride == self.rank
                index += 1
                if mine and not in_holdout(key, self.holdout):
                    yield self.read(next(iter(fields.values())))

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.rank])
        pool: list[np.ndarray] = []
        epoch = 0
        while True:
            seen = 0
            for array in self._epoch(epoch, rng):
                seen += 1
                if len(pool) < self.buffer:
                    pool.append(array)
                    continue
                slot = int(rng.integers(len(pool)))
                yield pool[slot]
                pool[slot] = array
            if not seen:
                raise RuntimeError(f"rank {self.rank} found no {self.modality} training samples in "
                                   f"{len(self.shards)} shard(s) of {self.storage.uri()}")
            epoch += 1

    def batches(self, size: int) -> Iterator[list[np.ndarray]]:
        samples = iter(self)
        while True:
            yield [next(samples) for _ in range(size)]
