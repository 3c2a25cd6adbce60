"""The training-side loader: token shards -> masked, packed, fixed-shape batches for one training worker.

Stages, each a small function or method: list the shards from the manifest (`list_token_shards`), give each rank a
disjoint, sample-balanced subset (`assign_shards`), read the `tok_<modality>` tars of one shard number together
(`read_token_shard`, keys checked equal), shuffle shard order per epoch and samples within blocks, mask and pack
(`pipeline/data/masking.py`).

Equal batch counts: every rank yields `ceil(max_rank_samples / batch_size)` batches per epoch, computed from the
manifest alone, so all ranks agree without talking and no collective ever waits on a rank that ran dry. A rank
with fewer samples (or one that lost a shard to read errors) starts another pass over its own shards, in a new
order, to fill its count; every sample is seen at least once per epoch and a few twice.

Shuffling: each epoch (and each extra pass) visits the rank's shards in an order drawn from (seed, epoch, pass,
rank); the stream is cut into blocks of `shuffle_buffer` samples and each block is yielded in a random order drawn
from (seed, epoch, pass, block, rank). Because block orders are re-derived rather than carried, the position is a
handful of integers: a resumed loader re-reads the current block and skips what was already yielded, so it
yields exactly the batches an uninterrupted one would (the masking RNG's state is saved with it).

Read errors: a shard whose read fails (I/O error, bad tar, sha256 not the manifest's) is retried
`read_retries` times; then it is lost, which fails the run (`LostShardsError`) unless the rank's lost shards stay
within `max_lost_shard_fraction` of its shards, in which case it is skipped for the rest of the epoch with a warning
naming it. Keys that differ between a shard's modality tars are not a read error but a broken output: that raises
`ShardAlignmentError`.

Before reading, the manifest is checked against the output (`pipeline/data/output_checks.py`): one row per shard
the folders hold, and one tokenizer per token folder, whose hash joins the saved position (a resume onto data
retokenized since is refused).

Held-out samples: with `holdout_fraction` f > 0, the keys `in_holdout(key, f)` picks (no salt) are the validation
part. A loader of part "train" drops them as it reads each shard, so no held-out sample ever reaches a training
batch; a loader of part "holdout" keeps only them. Which keys a shard holds is not in the manifest, so a rank's
count of its part is bounded instead: n*s + 3*sqrt(n*s*(1 - s)) for n samples and the part's share s (1 - f or f),
which a key hash exceeds about once in 700. Batch counts come from the largest bound, equal on every rank as
before; every sample of the part is seen once per epoch and some twice (with f = 0 the bound is n, as before).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from pipeline.data.manifest import read_manifest
from pipeline.data.masking import Masker
from pipeline.data.output_checks import folder_tokenizer, verify_shard_listing
from pipeline.data.storage import Storage
from pipeline.data.tar_io import ShardReadError, read_with_retries
from pipeline.data.token_shards import Sample, TokenShard, list_token_shards, read_token_shard
from schemas.batch import ModalityTable
from schemas.keys import in_holdout
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.common import StorageConfig
from schemas.shards import token_folder

log = logging.getLogger(__name__)

STATE_VERSION = 1
Part = Literal["train", "holdout"]


class LostShardsError(ShardReadError):
    """More of a rank's shards could not be read than `LoaderConfig.max_lost_shard_fraction` allows."""


def assign_shards(shards: Sequence[TokenShard], world_size: int) -> list[list[TokenShard]]:
    """Disjoint per-rank shard lists with sample totals as even as whole shards allow (largest first, each to the
    lightest rank). Deterministic, so every rank computes the same split on its own."""
    if len(shards) < world_size:
        raise ValueError(f"{len(shards)} shards cannot feed {world_size} workers: each needs at least one shard; "
                         f"write smaller shards or train on fewer workers")
    loads = [0] * world_size
    assigned: list[list[TokenShard]] = [[] for _ in range(world_size)]
    for shard in sorted(shards, key=lambda s: (-s.samples, s.shard)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        assigned[rank].append(shard)
        loads[rank] += shard.samples
    return [sorted(ranked, key=lambda s: s.shard) for ranked in assigned]


def _part_bound(samples: int, share: float) -> int:
    """At most how many of `samples` keys fall in a part of expected share `share` (mean + 3 sigma of the binomial
    count, capped at `samples`); exactly `samples` for share 1."""
    mean = samples * share
    # round() first: 30 x 0.7 is 21.000000000000004 in floating point, which must not ceil to 22
    return min(samples, math.ceil(round(mean + 3 * math.sqrt(mean * (1 - share)), 6)))


def to_torch(batch: dict[str, np.ndarray]) -> dict:
    """The batch as torch tensors (sharing memory with the numpy arrays)."""
    import torch

    return {name: torch.from_numpy(array) for name, array in batch.items()}


class ResumableBatches(abc.ABC):
    """Iteration and state shared by TokenShardLoader and the mixture's loader (pipeline/data/mixture.py).

    `_produce(state)` yields (keys, batch, the state after that batch), working on its own copy of the state; the
    loader's `_state` moves on only as each batch is handed out, so `state_dict()` is the position after the last
    batch the caller got even while later batches are being prefetched."""

    config: LoaderConfig
    _state: dict

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _, batch in self.iter_keyed():
            yield batch

    def iter_keyed(self) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """(sample keys, batch) for the rest of the current epoch; the state advances as each batch is handed out."""
        produced = self._produce(json.loads(json.dumps(self._state)))
        if self.config.prefetch_batches:
            produced = prefetched(produced, self.config.prefetch_batches)
        for keys, batch, state in produced:
            self._state = state
            yield keys, batch

    def state_dict(self) -> dict:
        """The position after the last batch handed out (JSON-serialisable)."""
        return json.loads(json.dumps(self._state))

    @abc.abstractmethod
    def _produce(self, state: dict) -> Iterator[tuple[list[str], dict[str, np.ndarray], dict]]:
        """Batches of one epoch from `state` on, each with the state after it."""


class TokenShardLoader(ResumableBatches):
    """One training worker's stream of batches; `iter(loader)` runs (the rest of) the current epoch.

    `state_dict()` after any batch and `load_state_dict()` on a fresh loader with the same arguments resume exactly.
    """

    def __init__(self, root_uri: str, table: ModalityTable, masking: MaskingConfig, config: LoaderConfig,
                 rank: int = 0, world_size: int = 1, storage_config: StorageConfig | None = None, *,
                 part: Part = "train"):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        if part not in ("train", "holdout"):
            raise ValueError(f"part must be 'train' or 'holdout', got {part!r}")
        if part == "holdout" and config.holdout_fraction == 0:
            raise ValueError("the holdout part is empty: set loader.holdout_fraction above 0")
        self.part = part
        self.storage = Storage(root_uri, storage_config or StorageConfig())
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.modalities = config.modalities or table.names
        for name in self.modalities:
            table.index(name)  # fails clearly for a modality outside the run's table
        self.masker = Masker(table, masking)
        manifest = read_manifest(self.storage, [token_folder(m) for m in self.modalities])
        verify_shard_listing(self.storage, manifest, [token_folder(m) for m in self.modalities], sizes=False)
        self.tokenizers = {m: folder_tokenizer(manifest, token_folder(m)) for m in self.modalities}
        all_shards = list_token_shards(self.storage, self.modalities, manifest)
        assigned = assign_shards(all_shards, world_size)
        self.shards = assigned[rank]
        share = config.holdout_fraction if part == "holdout" else 1.0 - config.holdout_fraction
        self.samples_per_epoch = max(_part_bound(sum(s.samples for s in ranked), share) for ranked in assigned)
        self.batches_per_epoch = max(1, math.ceil(self.samples_per_epoch / config.batch_size))
        # A saved position is only valid for the same sample stream: the split joins the fingerprint (only when
        # there is one, so states saved before holdouts existed still load).
        split = [part, config.holdout_fraction] if config.holdout_fraction else []
        self._fingerprint = hashlib.sha256(
            json.dumps([[s.shard, s.samples] for s in all_shards] + split).encode()).hexdigest()[:16]
        self._state = self._epoch_start(0, np.random.default_rng([config.seed, rank, 0x4D41534B]))

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    @property
    def skipped_shards(self) -> list[int]:
        """Shards of this rank skipped after read errors in the current epoch."""
        return list(self._state["skipped"])

    # --- state ----------------------------------------------------------------------------------------------------
    def load_state_dict(self, state: dict) -> None:
        expected = {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                    "seed": self.config.seed, "batch_size": self.config.batch_size, "shards": self._fingerprint}
        differing = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differing:
            raise ValueError(f"loader state was saved under other settings (saved, now): {differing}")
        if state.get("tokenizers", self.tokenizers) != self.tokenizers:  # states saved before hashes were kept load
            raise ValueError(f"the data was retokenized since this loader state was saved: tokenizer hashes "
                             f"{state['tokenizers']} then, {self.tokenizers} now")
        self._state = json.loads(json.dumps(state))

    def _epoch_start(self, epoch: int, mask_rng: np.random.Generator) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size, "seed": self.config.seed,
                "batch_size": self.config.batch_size, "shards": self._fingerprint, "tokenizers": self.tokenizers,
                "epoch": epoch, "batches": 0, "pass": 0, "block": 0, "cursor": 0, "offset": 0, "taken": 0,
                "skipped": [], "mask_rng": mask_rng.bit_generator.state}

    # --- iteration ------------------------------------------------------------------------------------------------
    def _produce(self, state: dict) -> Iterator[tuple[list[str], dict[str, np.ndarray], dict]]:
        """Batches of one epoch from `state` on, each with the state after it; works on its own copy of the state."""
        mask_rng = np.random.default_rng()
        mask_rng.bit_generator.state = state["mask_rng"]
        samples = self._samples(state)
        size = self.config.batch_size
        for number in range(state["batches"] + 1, self.batches_per_epoch + 1):
            chunk = [next(samples) for _ in range(size)]
            rows = [self.pick_crop(rows, mask_rng) for _, rows in chunk]
            batch = self.masker.batch(rows, mask_rng)
            if number == self.batches_per_epoch:  # the last batch hands over to the next epoch's start
                after = self._epoch_start(state["epoch"] + 1, mask_rng)
            else:
                after = {**state, "batches": number, "mask_rng": mask_rng.bit_generator.state}
            yield [key for key, _ in chunk], batch, json.loads(json.dumps(after))

    def stream(self, state: dict) -> Iterator[Sample]:
        """Samples one at a time from `state`'s position on, epoch after epoch (an epoch is `samples_per_epoch`
        samples), for a mixture that batches several loaders' samples itself (pipeline/data/mixture.py). `state`
        (a `state_dict()`) is updated in place as each sample is handed out, so a copy of it taken between two
        samples resumes exactly there."""
        while True:
            samples = self._samples(state)
            while state.get("drawn", 0) < self.samples_per_epoch:
                sample = next(samples)
                state["drawn"] = state.get("drawn", 0) + 1
                yield sample
            samples.close()
            unused = np.random.default_rng()  # the mixture masks; this loader's masking RNG is carried unchanged
            unused.bit_generator.state = state["mask_rng"]
            next_epoch = self._epoch_start(state["epoch"] + 1, unused)
            state.clear()
            state.update(next_epoch)

    @staticmethod
    def pick_crop(rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One token row per modality; with several crops, the same random crop for every modality of the sample."""
        crops = min(array.shape[0] for array in rows.values())
        crop = int(rng.integers(crops)) if crops > 1 else 0
        return {name: array[crop] for name, array in rows.items()}

    def _samples(self, state: dict) -> Iterator[Sample]:
        """The rank's endless sample stream from `state`'s position, updating it as samples are taken."""
        cache: dict[int, list[Sample]] = {}
        while True:
            order = self._shard_order(state["epoch"], state["pass"])
            yielded_this_pass = state["block"] > 0 or state["taken"] > 0
            while state["cursor"] < len(order):
                block, cursor, offset = self._read_block(order, state, cache)
                rng = np.random.default_rng([self.config.seed, state["epoch"], state["pass"], state["block"],
                                             self.rank])
                permutation = rng.permutation(len(block))
                for index in permutation[state["taken"]:]:
                    state["taken"] += 1
                    yielded_this_pass = True
                    yield block[index]
                state.update(block=state["block"] + 1, cursor=cursor, offset=offset, taken=0)
            if not yielded_this_pass and len(state["skipped"]) < len(self.shards):
                raise ValueError(f"rank {self.rank}: shards {[s.shard for s in self.shards]} hold no sample of the "
                                 f"{self.part} part at holdout_fraction {self.config.holdout_fraction}")
            if not yielded_this_pass:
                raise ShardReadError(f"rank {self.rank}: no shard of {[s.shard for s in self.shards]} could be read "
                                     f"(skipped: {state['skipped']})")
            state.update({"pass": state["pass"] + 1, "block": 0, "cursor": 0, "offset": 0, "taken": 0})

    def _shard_order(self, epoch: int, pass_index: int) -> list[TokenShard]:
        rng = np.random.default_rng([self.config.seed, epoch, pass_index, self.rank, 0x5348])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def _read_block(self, order: list[TokenShard], state: dict, cache: dict[int, list[Sample]]
                    ) -> tuple[list[Sample], int, int]:
        """Up to `shuffle_buffer` samples from (cursor, offset) on, and the position right after them."""
        block: list[Sample] = []
        cursor, offset = state["cursor"], state["offset"]
        while cursor < len(order) and len(block) < self.config.shuffle_buffer:
            shard = order[cursor]
            samples = [] if shard.shard in state["skipped"] else self._read_with_retries(shard, state, cache)
            take = samples[offset:offset + self.config.shuffle_buffer - len(block)]
            block += take
            offset += len(take)
            if offset >= len(samples):
                cursor, offset = cursor + 1, 0
        # Keep only the shard the next block starts in: a block never needs more than one shard from before it.
        keep = order[cursor].shard if cursor < len(order) else None
        for number in [n for n in cache if n != keep]:
            del cache[number]
        return block, cursor, offset

    def _read_with_retries(self, shard: TokenShard, state: dict, cache: dict[int, list[Sample]]) -> list[Sample]:
        """The shard's samples of this loader's part; [] (and the shard skipped this epoch) if it cannot be read."""
        if shard.shard in cache:
            return cache[shard.shard]
        try:
            samples = read_with_retries(
                lambda: read_token_shard(self.storage, shard, self.config.verify_checksums),
                retries=self.config.read_retries, backoff_s=self.config.retry_backoff_s,
                what=f"rank {self.rank}: reading shard {shard.shard}", log=log)
        except ShardReadError as error:
            lost = len(state["skipped"]) + 1
            if lost > self.config.max_lost_shard_fraction * len(self.shards):
                raise LostShardsError(
                    f"rank {self.rank}: shard {shard.shard} ({', '.join(self.storage.uri(u) for _, u in shard.uris)}) "
                    f"could not be read after {self.config.read_retries + 1} tries ({error}); {lost} of the rank's "
                    f"{len(self.shards)} shards lost, more than loader.max_lost_shard_fraction="
                    f"{self.config.max_lost_shard_fraction} allows") from None
            log.warning("rank %d: skipping shard %d (%s) for the rest of epoch %d after %d failed reads: %s",
                        self.rank, shard.shard, ", ".join(self.storage.uri(uri) for _, uri in shard.uris),
                        state["epoch"], self.config.read_retries + 1, error)
            state["skipped"].append(shard.shard)
            return []
        fraction = self.config.holdout_fraction
        if fraction:
            samples = [s for s in samples if in_holdout(s[0], fraction) == (self.part == "holdout")]
        cache[shard.shard] = samples
        return samples


def prefetched(produced: Iterator, depth: int) -> Iterator:
    """Run a generator in a background thread, `depth` items ahead (reads overlap the training step)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in produced:
                if not put(item):
                    return  # the consumer left early
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it in its own thread
            put(exc)

    thread = threading.Thread(target=work, name="token-shard-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
