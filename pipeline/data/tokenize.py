"""The tokenize stage: label shards -> token shards `tok_<modality>/shard-N.tar` beside them in the same root.

Shard N's label members of a modality become `<key>.npy` rows of shape (1, n) in the modality's token dtype,
encoded by the tokenizer configured for it. Keys and order are read from the label shard itself, so token shards
are aligned with every other folder by construction. A tokenizer failing on a sample fails the shard loudly:
dropping the sample would misalign the folders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from pipeline.data.encoding import encode_npy
from pipeline.data.inspect import iterate_shard
from pipeline.data.shard_writer import WritePlan
from pipeline.data.stages import Batch
from pipeline.data.storage import Storage
from pipeline.data.tar_io import tar_bytes
from pipeline.tokenizers import Tokenizer, encode_members, tokenizer_from_files
from schemas.preprocess import StorageConfig
from schemas.shards import ManifestRow, member_name, shard_relpath, token_folder


def load_tokenizer_from(uri: str, config: StorageConfig) -> Tokenizer:
    """A tokenizer directory on any storage (tessera.json + the files it names)."""
    storage = Storage(uri, config)
    files = {path.rsplit("/", 1)[-1]: storage.read_bytes(path) for path in storage.list()}
    if not files:
        raise FileNotFoundError(f"no tokenizer at {uri}")
    return tokenizer_from_files(files)


def tokenize_shard(shards: Batch, *, storage: Storage, plan: WritePlan, tokenizers: dict[str, str],
                   storage_config: StorageConfig) -> Batch:
    """Ray Data stage: tokenize shard N of every modality of the plan, then commit its record."""
    (index,) = (int(i) for i in shards["unit"])
    manifest, longest = [], {}
    samples = 0
    for modality in plan.modalities:
        tokenizer = load_tokenizer_from(tokenizers[modality], storage_config)
        members = list(iterate_shard(storage.read_bytes(shard_relpath(modality, index))))
        rows = encode_members(tokenizer, modality, [next(iter(fields.values())) for _, fields in members])
        payload = tar_bytes((member_name(key, "npy"), encode_npy(row[None, :])) for (key, _), row in zip(members, rows))
        relpath = shard_relpath(token_folder(modality), index)
        storage.write_atomic(relpath, payload)
        manifest.append(ManifestRow(
            folder=token_folder(modality), modality=modality, shard=index, uri=relpath, samples=len(rows),
            bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
            source_units=(shard_relpath(modality, index),), token_count=int(sum(len(r) for r in rows)),
            tokenizer_id=tokenizer.tokenizer_id, tokenizer_hash=tokenizer.content_hash,
        ))
        longest[token_folder(modality)] = max((len(r) for r in rows), default=0)
        samples = len(rows)
    record = {
        "unit": index, "source": f"shard {index}", "samples_in": samples, "samples_written": samples,
        "manifest": [{**asdict(row), "source_units": list(row.source_units)} for row in manifest],
        "quarantine": [], "longest_row": longest,
    }
    storage.write_atomic(plan.record_path(index), json.dumps(record, sort_keys=True).encode())
    return {"unit": np.array([index]), "record": np.array([json.dumps(record)], dtype=object)}
