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
`read_retries` times, then skipped for the rest of the epoch with a warning naming it. Keys that differ between a
shard's modality tars are not a read error but a broken output: that raises `ShardAlignmentError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.inspect import iterate_shard, read_manifest
from pipeline.data.masking import Masker
from pipeline.data.storage import Storage
from schemas.batch import ModalitySpec, ModalityTable
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.modalities import get_modality
from schemas.preprocess import StorageConfig
from schemas.shards import REPORT_FILE, token_folder

log = logging.getLogger(__name__)

STATE_VERSION = 1
Sample = tuple[str, dict[str, np.ndarray]]  # key, modality -> token array (n_crops, n)


class ShardReadError(RuntimeError):
    """One shard could not be read whole; the loader retries it, then skips it."""


class ShardAlignmentError(RuntimeError):
    """The modality tars of one shard number hold different keys: the output itself is broken."""


@dataclass(frozen=True)
class TokenShard:
    """Shard N of every token folder a run reads, as the manifest lists it."""

    shard: int
    samples: int
    uris: tuple[tuple[str, str], ...]  # (modality, uri relative to the root)
    sha256: tuple[str, ...]


def list_token_shards(storage: Storage, modalities: Sequence[str]) -> list[TokenShard]:
    """Shards that hold every requested token folder, from the manifest (never a directory listing)."""
    folders = {token_folder(m): m for m in modalities}
    rows: dict[int, dict[str, dict]] = {}
    for row in read_manifest(storage):
        if row["folder"] in folders:
            rows.setdefault(row["shard"], {})[row["folder"]] = row
    shards = []
    for number, found in sorted(rows.items()):
        missing = sorted(set(folders) - set(found))
        if missing:
            raise ShardAlignmentError(f"{storage.uri()}: shard {number} has no manifest row for {missing}; "
                                      f"tokenize those modalities first")
        counts = {row["samples"] for row in found.values()}
        if len(counts) != 1:
            raise ShardAlignmentError(f"{storage.uri()}: shard {number} has different sample counts per token "
                                      f"folder: { {f: r['samples'] for f, r in found.items()} }")
        if counts.pop():
            shards.append(TokenShard(number, found[token_folder(modalities[0])]["samples"],
                                     tuple((m, found[token_folder(m)]["uri"]) for m in modalities),
                                     tuple(found[token_folder(m)]["sha256"] for m in modalities)))
    if not shards:
        raise ValueError(f"{storage.uri()}: the manifest lists no non-empty shards of {sorted(folders)}")
    return shards


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


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}  # header bytes -> shape, fortran, dtype


def decode_npy(payload: bytes) -> np.ndarray:
    """`np.load` of one .npy member, with its header's parse cached.

    numpy parses every header with `ast.literal_eval`, which costs ~10x the array copy for rows of a few hundred
    tokens; token members of one modality share a handful of headers, so each is parsed once. The array is a
    read-only view of `payload`.
    """
    if payload[:6] != _NPY_MAGIC or payload[6] not in (1, 2):
        return np.load(io.BytesIO(payload), allow_pickle=False)  # anything unusual: numpy decides (or raises)
    length, start = (struct.unpack_from("<H", payload, 8)[0], 10) if payload[6] == 1 else \
        (struct.unpack_from("<I", payload, 8)[0], 12)
    header = payload[start:start + length]
    if header not in _NPY_HEADERS:
        handle = io.BytesIO(payload)
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        if dtype.hasobject:
            raise ValueError("object arrays are not token rows")
        if len(_NPY_HEADERS) > 4096:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = (shape, fortran, dtype)
    shape, fortran, dtype = _NPY_HEADERS[header]
    data = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=start + length)
    return data.reshape(shape, order="F" if fortran else "C")


def read_token_shard(storage: Storage, shard: TokenShard, verify_checksums: bool = True) -> list[Sample]:
    """All samples of one shard number: its modality tars read side by side, keys checked equal."""
    columns: list[list[tuple[str, dict]]] = []
    for (modality, uri), digest in zip(shard.uris, shard.sha256):
        try:
            payload = storage.read_bytes(uri)
            if verify_checksums and hashlib.sha256(payload).hexdigest() != digest:
                raise ShardReadError(f"{uri}: sha256 differs from the manifest")
            members = list(iterate_shard(payload))
        except ShardReadError:
            raise
        except Exception as exc:  # any failure to fetch or parse the tar: I/O, truncation, bad headers
            raise ShardReadError(f"{uri}: {type(exc).__name__}: {exc}") from exc
        if len(members) != shard.samples:
            raise ShardReadError(f"{uri}: {len(members)} samples, the manifest says {shard.samples}")
        columns.append(members)
    reference = [key for key, _ in columns[0]]
    for (modality, uri), members in zip(shard.uris[1:], columns[1:]):
        keys = [key for key, _ in members]
        if keys != reference:
            first = next(i for i, (a, b) in enumerate(zip(keys, reference)) if a != b)
            raise ShardAlignmentError(f"shard {shard.shard}: {uri} holds key {keys[first]!r} at position {first} "
                                      f"where {shard.uris[0][1]} holds {reference[first]!r}")
    samples = []
    for position, key in enumerate(reference):
        rows = {}
        for (modality, uri), members in zip(shard.uris, columns):
            try:
                array = decode_npy(members[position][1]["npy"])
            except Exception as exc:
                raise ShardReadError(f"{uri}: member {key}.npy: {type(exc).__name__}: {exc}") from exc
            rows[modality] = array.reshape(1, -1) if array.ndim == 1 else array
        samples.append((key, rows))
    return samples


def modality_table_from_output(root: str, modalities: Sequence[str],
                               storage_config: StorageConfig | None = None) -> ModalityTable:
    """The run's ModalityTable from a preprocess output.

    Fixed-length modalities (grids, global embeddings) take the row length the output actually has (e.g. 8x8 = 64
    tokens for 64 px images): from report.json's tokens -> longest, or, without a report, the first row of the
    folder's first shard. Variable-length ones (sequences) take the registry's bound, so a model trained on one
    output accepts another output's longer captions; a row longer than the bound is an error.
    """
    storage = Storage(root, storage_config or StorageConfig())
    longest: dict[str, int] = {}
    if storage.exists(REPORT_FILE):
        tokens = json.loads(storage.read_bytes(REPORT_FILE)).get("tokens", {})
        longest = {folder: int(stats["longest"]) for folder, stats in tokens.items()}
    specs = []
    for name in modalities:
        modality = get_modality(name)
        folder = token_folder(modality.name)
        length = longest.get(folder)
        if length is None:
            first = list_token_shards(storage, [modality.name])[0]
            length = read_token_shard(storage, first)[0][1][modality.name].shape[1]
        if modality.num_tokens is None:
            if length > modality.token_budget:
                raise ValueError(f"{folder}: rows of up to {length} tokens, the registry bounds {name} at "
                                 f"{modality.token_budget}")
            length = modality.token_budget
        specs.append(ModalitySpec.from_registry(modality.name, length))
    return ModalityTable.of(specs)


def to_torch(batch: dict[str, np.ndarray]) -> dict:
    """The batch as torch tensors (sharing memory with the numpy arrays)."""
    import torch

    return {name: torch.from_numpy(array) for name, array in batch.items()}


class TokenShardLoader:
    """One training worker's stream of batches; `iter(loader)` runs (the rest of) the current epoch.

    `state_dict()` after any batch and `load_state_dict()` on a fresh loader with the same arguments resume exactly.
    """

    def __init__(self, root_uri: str, table: ModalityTable, masking: MaskingConfig, config: LoaderConfig,
                 rank: int = 0, world_size: int = 1, storage_config: StorageConfig | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.storage = Storage(root_uri, storage_config or StorageConfig())
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.modalities = config.modalities or table.names
        for name in self.modalities:
            table.index(name)  # fails clearly for a modality outside the run's table
        self.masker = Masker(table, masking)
        all_shards = list_token_shards(self.storage, self.modalities)
        assigned = assign_shards(all_shards, world_size)
        self.shards = assigned[rank]
        self.samples_per_epoch = max(sum(s.samples for s in ranked) for ranked in assigned)
        self.batches_per_epoch = math.ceil(self.samples_per_epoch / config.batch_size)
        self._fingerprint = hashlib.sha256(
            json.dumps([[s.shard, s.samples] for s in all_shards]).encode()).hexdigest()[:16]
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
    def state_dict(self) -> dict:
        """The position after the last batch handed out (JSON-serialisable)."""
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict) -> None:
        expected = {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                    "seed": self.config.seed, "batch_size": self.config.batch_size, "shards": self._fingerprint}
        differing = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differing:
            raise ValueError(f"loader state was saved under other settings (saved, now): {differing}")
        self._state = json.loads(json.dumps(state))

    def _epoch_start(self, epoch: int, mask_rng: np.random.Generator) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size, "seed": self.config.seed,
                "batch_size": self.config.batch_size, "shards": self._fingerprint, "epoch": epoch, "batches": 0,
                "pass": 0, "block": 0, "cursor": 0, "offset": 0, "taken": 0, "skipped": [],
                "mask_rng": mask_rng.bit_generator.state}

    # --- iteration ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _, batch in self.iter_keyed():
            yield batch

    def iter_keyed(self) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """(sample keys, batch) for the rest of the current epoch; the state advances as each batch is handed out."""
        produced = self._produce(json.loads(json.dumps(self._state)))
        if self.config.prefetch_batches:
            produced = _prefetched(produced, self.config.prefetch_batches)
        for keys, batch, state in produced:
            self._state = state
            yield keys, batch

    def _produce(self, state: dict) -> Iterator[tuple[list[str], dict[str, np.ndarray], dict]]:
        """Batches of one epoch from `state` on, each with the state after it; works on its own copy of the state."""
        mask_rng = np.random.default_rng()
        mask_rng.bit_generator.state = state["mask_rng"]
        samples = self._samples(state)
        size = self.config.batch_size
        for number in range(state["batches"] + 1, self.batches_per_epoch + 1):
            chunk = [next(samples) for _ in range(size)]
            rows = [self._pick_crop(rows, mask_rng) for _, rows in chunk]
            batch = self.masker.batch(rows, mask_rng)
            if number == self.batches_per_epoch:  # the last batch hands over to the next epoch's start
                after = self._epoch_start(state["epoch"] + 1, mask_rng)
            else:
                after = {**state, "batches": number, "mask_rng": mask_rng.bit_generator.state}
            yield [key for key, _ in chunk], batch, json.loads(json.dumps(after))

    @staticmethod
    def _pick_crop(rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
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
        if shard.shard in cache:
            return cache[shard.shard]
        attempts = self.config.read_retries + 1
        for attempt in range(attempts):
            try:
                cache[shard.shard] = read_token_shard(self.storage, shard, self.config.verify_checksums)
                return cache[shard.shard]
            except ShardReadError as exc:
                error = exc
                if attempt + 1 < attempts:
                    log.info("rank %d: reading shard %d failed (attempt %d of %d), retrying: %s",
                             self.rank, shard.shard, attempt + 1, attempts, exc)
                    time.sleep(self.config.retry_backoff_s * 2**attempt)
        log.warning("rank %d: skipping shard %d (%s) for the rest of epoch %d after %d failed reads: %s",
                    self.rank, shard.shard, ", ".join(self.storage.uri(uri) for _, uri in shard.uris),
                    state["epoch"], attempts, error)
        state["skipped"].append(shard.shard)
        return []


def _prefetched(produced: Iterator, depth: int) -> Iterator:
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
