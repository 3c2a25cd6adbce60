"""Cut the sample corpus into shards and write them: `corpus-000000.tar, ...` plus `corpus.json`.

Shard N holds samples [N * samples_per_shard, (N + 1) * samples_per_shard); each shard is built in memory by
`tar_bytes` (fixed headers) and committed atomically, so a reader never sees a half-written tar and equal configs
give byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from pipeline.data.sample_corpus.photos import PHOTOS
from pipeline.data.sample_corpus.samples import build_sample
from pipeline.data.sample_corpus.scenes import BACKGROUNDS, COLORS, SHAPES, SIZES
from pipeline.data.storage import Storage
from pipeline.data.tar_io import tar_bytes
from schemas.corpus import CORPUS_SHARD_DIGITS, SampleCorpusConfig
from schemas.common import StorageConfig

CORPUS_FILE = "corpus.json"
CORPUS_FORMAT = "tessera-sample-corpus"
CORPUS_VERSION = 1
_SHARD_RE = re.compile(rf"^corpus-(\d{{{CORPUS_SHARD_DIGITS}}})\.tar$")


def corpus_shard_name(index: int) -> str:
    return f"corpus-{index:0{CORPUS_SHARD_DIGITS}d}.tar"


def shard_samples(config: SampleCorpusConfig, shard: int) -> range:
    start = shard * config.samples_per_shard
    return range(start, min(start + config.samples_per_shard, config.samples))


@dataclass(frozen=True)
class ShardSummary:
    index: int
    name: str
    samples: int
    counts: dict[str, int]  # samples per kind
    bytes: int
    sha256: str


def build_shard(config: SampleCorpusConfig, shard: int) -> tuple[bytes, Counter]:
    """The tar of one shard and its sample count per kind."""
    members = []
    counts: Counter = Counter()
    for index in shard_samples(config, shard):
        kind, sample_members = build_sample(config, index)
        counts[kind] += 1
        members.extend(sample_members)
    return tar_bytes(members), counts


def write_shard(config: SampleCorpusConfig, shard: int) -> ShardSummary:
    """Build shard `shard` and commit it under config.out; runs in a worker process or inline."""
    payload, counts = build_shard(config, shard)
    name = corpus_shard_name(shard)
    Storage(config.out, StorageConfig()).write_atomic(name, payload)
    return ShardSummary(
        index=shard,
        name=name,
        samples=sum(counts.values()),
        counts={kind: counts[kind] for kind in ("scene", "photo")},
        bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
    )


def corpus_description(config: SampleCorpusConfig, shards: list[ShardSummary]) -> dict:
    """Contents of corpus.json: what was generated, from which arguments, and the label vocabularies."""
    return {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "seed": config.seed,
        "samples": config.samples,
        "image_size": config.image_size,
        "samples_per_shard": config.samples_per_shard,
        "real_fraction": config.real_fraction,
        "counts": {kind: sum(s.counts[kind] for s in shards) for kind in ("scene", "photo")},
        "classes": ["background", *SHAPES],  # semseg.png value -> name
        "colors": list(COLORS),
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "photos": [f"skimage.data.{p.name}" for p in PHOTOS],
        "shards": [
            {"name": s.name, "samples": s.samples, "counts": s.counts, "bytes": s.bytes, "sha256": s.sha256}
            for s in shards
        ],
    }


def _remove_stale_shards(storage: Storage, num_shards: int) -> None:
    """Delete corpus shards beyond this run's last one, left by an earlier, larger run into the same directory,
    so the directory holds exactly the corpus that corpus.json describes."""
    for relpath in storage.list():
        match = _SHARD_RE.match(relpath)
        if match and int(match.group(1)) >= num_shards:
            storage.remove(relpath)


def write_corpus(
    config: SampleCorpusConfig, on_shard: Callable[[ShardSummary], None] = lambda summary: None
) -> dict:
    """Write every shard (in `config.workers` processes), then corpus.json; returns corpus.json's contents.

    `on_shard` is called in the driver as each shard lands, in completion order (for progress output only).
    """
    shards = range(config.num_shards)
    summaries: list[ShardSummary] = []
    if config.workers == 1 or config.num_shards == 1:
        for shard in shards:
            summaries.append(write_shard(config, shard))
            on_shard(summaries[-1])
    else:
        with ProcessPoolExecutor(max_workers=min(config.workers, config.num_shards)) as pool:
            futures = [pool.submit(write_shard, config, shard) for shard in shards]
            for future in as_completed(futures):
                summaries.append(future.result())
                on_shard(summaries[-1])
    summaries.sort(key=lambda s: s.index)

    storage = Storage(config.out, StorageConfig())
    _remove_stale_shards(storage, config.num_shards)
    description = corpus_description(config, summaries)
    # Written last: its presence says every shard it lists is complete.
    storage.write_atomic(CORPUS_FILE, (json.dumps(description, indent=2) + "\n").encode("utf-8"))
    return description
