"""The tokenize stage: label shards -> token shards `tok_<modality>/shard-N.tar` beside them in the same root.

Shard N's label members of a modality become `<key>.npy` rows of shape (1, n) in the modality's token dtype,
encoded by the tokenizer configured for it. Keys and order are read from the label shard itself, so token shards
are aligned with every other folder by construction. A tokenizer failing on a sample fails the shard loudly:
dropping the sample would misalign the folders.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import ray.data

from pipeline.data.output_checks import STATE_FILE, TokenizerMismatchError
from pipeline.data.pool_layout import tokenize_pool
from pipeline.data.progress import log_plan, log_unit, set_data_context
from pipeline.data.shard_writer import WritePlan
from pipeline.data.stages import Batch
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_token_shard, iterate_shard
from pipeline.tokenizers import Tokenizer, encode_members, tokenizer_from_files
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.shards import UnitRecord, shard_relpath


def load_tokenizer_from(uri: str, config: StorageConfig) -> Tokenizer:
    """A tokenizer directory on any storage (tessera.json + the files it names)."""
    storage = Storage(uri, config)
    files = {path.rsplit("/", 1)[-1]: storage.read_bytes(path) for path in storage.list()}
    if not files:
        raise FileNotFoundError(f"no tokenizer at {uri}")
    return tokenizer_from_files(files)


def on_assigned_gpu(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with its network moved to the GPU Ray gave this task, if it gave one (run_tokenize asks for a
    share of a GPU per task when the cluster has GPUs and the run a neural tokenizer); WordPiece has no network."""
    import ray
    import torch

    network = getattr(tokenizer, "network", None)
    if network is not None and ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        network.to("cuda")
    return tokenizer


def tokenizer_hashes(uris: dict[str, str], config: StorageConfig) -> dict[str, str]:
    """Modality -> content hash of the tokenizer at each URI (what the manifest rows it writes will record)."""
    return {modality: load_tokenizer_from(uri, config).content_hash for modality, uri in uris.items()}


class TokenizeShards:
    """Ray Data actor stage: tokenize shard N of every modality of the plan, then commit its record.

    Each actor loads the plan's tokenizers once, when it starts, instead of once per shard: a neural tokenizer's
    load (its files read from storage, its network built) cost about as much as encoding a small shard. The
    tokenizer's content hash is checked at that load against `expected_hashes` (what the run began with), so a
    tokenizer replaced on storage after the run began fails the run; an actor restarted after a node loss loads and
    checks it again.
    """

    def __init__(self, *, storage: Storage, plan: WritePlan, tokenizers: dict[str, str],
                 storage_config: StorageConfig, expected_hashes: dict[str, str] | None = None):
        self.storage, self.plan = storage, plan
        self.tokenizers = {}
        for modality in plan.modalities:
            tokenizer = on_assigned_gpu(load_tokenizer_from(tokenizers[modality], storage_config))
            expected = (expected_hashes or {}).get(modality, tokenizer.content_hash)
            if tokenizer.content_hash != expected:
                raise TokenizerMismatchError(
                    f"{tokenizers[modality]} changed while tokenizing {plan.run}: content hash "
                    f"{tokenizer.content_hash[:12]}, the run began with {expected[:12]}")
            self.tokenizers[modality] = tokenizer

    def __call__(self, shards: Batch) -> Batch:
        (index,) = (int(i) for i in shards["unit"])
        storage, manifest = self.storage, []
        for modality, tokenizer in self.tokenizers.items():
            members = list(iterate_shard(storage.read_bytes(shard_relpath(modality, index))))
            rows = encode_members(tokenizer, modality, [next(iter(fields.values())) for _, fields in members])
            manifest.append(commit_token_shard(
                storage, modality, index, [key for key, _ in members], rows, tokenizer_id=tokenizer.tokenizer_id,
                tokenizer_hash=tokenizer.content_hash, source_units=(shard_relpath(modality, index),),
            ))
        samples = manifest[-1].samples if manifest else 0
        record = UnitRecord(unit=index, source=f"shard {index}", samples_in=samples, samples_written=samples,
                            manifest=tuple(manifest))
        storage.write_atomic(self.plan.record_path(index), record.to_json())
        return {"unit": np.array([index]), "record": np.array([record.to_json().decode()], dtype=object)}


def run_tokenize(config: PreprocessConfig, plan: WritePlan, output: Storage, shards: int,
                 log: Callable[[str], None]) -> None:
    """Tokenize every shard of the plan's label folders that has no record yet, in an actor pool that loads the
    tokenizers once per actor."""
    done_before = plan.done(output)
    pending = [i for i in range(shards) if i not in done_before]
    log_plan(log, plan, shards, len(pending), output.root)
    if not pending:
        return
    made_by = {r["run"]: r.get("tokenizers", {}) for r in json.loads(output.read_bytes(STATE_FILE))["runs"]}
    set_data_context(single_operator=True)
    ds = ray.data.from_items([{"unit": i} for i in pending], override_num_blocks=len(pending))
    # A neural tokenizer encodes on a share of a GPU when the cluster has GPUs (pipeline/data/pool_layout.py).
    actors, gpus = tokenize_pool(plan.modalities, ray.cluster_resources(), len(pending))
    stage = ds.map_batches(TokenizeShards, batch_size=1, num_gpus=gpus, concurrency=(1, actors),
                           fn_constructor_kwargs=dict(storage=output, plan=plan, tokenizers=config.tokenizer_uris(),
                                                      storage_config=config.storage,
                                                      expected_hashes=made_by.get(plan.run, {})))
    for count, row in enumerate(stage.iter_rows(), start=1):
        log_unit(log, row, count, len(pending))
