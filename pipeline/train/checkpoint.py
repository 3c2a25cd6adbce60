"""Checkpoints of the training jobs, reported to Ray Train as one directory each; a restarted worker group, or a
rerun with the same run name, resumes from the latest.

`report_checkpoint` and `restored_checkpoint` are what every job's loop shares (a scratch directory handed to Ray
Train; the directory Ray Train restores). `PretrainCheckpointer` is the pretrain job's layout: DeepSpeed's own (every
rank calls `save_checkpoint`, each writing its shards), the whole fp32 weights with their model description (what
export and evaluation load, without DeepSpeed or unpickling), and `tessera_meta.json` (`CheckpointMeta`, its one
writer and reader here): the step, and per rank its loader position, RNG states and cumulative counts.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pydantic

from pipeline.data.storage import arrow_filesystem
from pipeline.train.metrics_window import RunCounts
from schemas.batch import ModalityTable
from schemas.common import StorageConfig
# consolidated weights (no DeepSpeed, nothing unpickled) and their ModelConfig + ModalityTable
from schemas.export import MODEL_JSON, WEIGHTS
from schemas.pretrain import PretrainConfig

TAG = "state"  # one DeepSpeed tag per reported checkpoint directory
META = "tessera_meta.json"

__all__ = ["META", "MODEL_JSON", "TAG", "WEIGHTS", "CheckpointMeta", "PretrainCheckpointer", "UnsafeCheckpointError",
           "load_tensors_only", "report_checkpoint", "restored_checkpoint"]


def report_checkpoint(metrics: dict, write: Callable[[Path], None] | None) -> None:
    """Report `metrics` to Ray Train, with a checkpoint of what `write(directory)` puts in a scratch directory (none
    when `write` is None: a rank whose state another rank's checkpoint holds)."""
    import ray.train

    if write is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="tessera-ckpt-") as directory:
        write(Path(directory))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


@contextmanager
def restored_checkpoint(init_from: str | None = None,
                        storage: StorageConfig | None = None) -> Iterator[Path | None]:
    """The directory of the checkpoint Ray Train restores this worker group from; on a fresh start, `init_from`
    (a checkpoint directory, local or s3://, e.g. the one a WSD cooldown branches from), else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and init_from is not None:
        # Ray Train V2 retired `resume_from_checkpoint`; its replacement is this: the loop opens the directory itself.
        filesystem = arrow_filesystem(storage or StorageConfig()) if "://" in init_from else None
        checkpoint = ray.train.Checkpoint(init_from.partition("://")[2] if filesystem else init_from, filesystem)
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


class CheckpointMeta(pydantic.BaseModel):
    """`tessera_meta.json`: per-rank states keyed by rank (as a string, JSON's only key type)."""

    step: int
    loaders: dict[str, dict]
    torch_rng: dict[str, list[int]]
    cuda_rng: dict[str, list[int]] | None = None
    counts: dict[str, dict[str, int]] = {}  # RunCounts per rank; absent in checkpoints older than the counts

    def write(self, directory: Path) -> None:
        Path(directory, META).write_text(self.model_dump_json(exclude_none=True))

    @classmethod
    def read(cls, directory: Path) -> CheckpointMeta:
        return cls.model_validate_json(Path(directory, META).read_text())


class PretrainCheckpointer:
    """Saves and restores one pretraining worker's part of a checkpoint (every rank calls both: collectives)."""

    def __init__(self, config: PretrainConfig, table: ModalityTable, rank: int, world: int):
        self.config, self.table, self.rank, self.world = config, table, rank, world

    def restore(self, engine, loader) -> tuple[int, RunCounts] | None:
        """Engine, loader and RNG states from the checkpoint Ray Train hands this worker group: the step it was
        taken at and this rank's counts, or None on a fresh start."""
        import torch

        with restored_checkpoint(self.config.init_from, self.config.storage) as directory:
            if directory is None:
                return None
            refuse_pickled_objects(engine)
            engine.load_checkpoint(str(directory), tag=TAG)
            meta, rank = CheckpointMeta.read(directory), str(self.rank)
        loader.load_state_dict(meta.loaders[rank])
        torch.set_rng_state(torch.tensor(meta.torch_rng[rank], dtype=torch.uint8))
        if self.config.use_gpu and meta.cuda_rng:
            torch.cuda.set_rng_state(torch.tensor(meta.cuda_rng[rank], dtype=torch.uint8))
        return meta.step, RunCounts(**meta.counts.get(rank, {}))

    def save(self, engine, loader, step: int, counts: RunCounts, metrics: dict) -> None:
        """Report a checkpoint at `step` with `metrics` (every rank reports; rank 0 writes the whole weights)."""
        import torch
        import torch.distributed as dist
        from safetensors.torch import save_file

        # Loader positions, RNG states and counts of every rank go into one small file that every rank holds alike.
        states: list = [None] * self.world
        mine = {"loader": loader.state_dict(), "rng": torch.get_rng_state().tolist(), "counts": asdict(counts)}
        if torch.cuda.is_available() and self.config.use_gpu:  # dropout or sampling on the GPU draws from it
            mine["cuda_rng"] = torch.cuda.get_rng_state().tolist()
        dist.all_gather_object(states, mine)
        by_rank = dict(enumerate(states))
        meta = CheckpointMeta(
            step=step, loaders={str(r): s["loader"] for r, s in by_rank.items()},
            torch_rng={str(r): s["rng"] for r, s in by_rank.items()},
            cuda_rng={str(r): s["cuda_rng"] for r, s in by_rank.items()} if "cuda_rng" in states[0] else None,
            counts={str(r): s["counts"] for r, s in by_rank.items()})

        def write(directory: Path) -> None:
            engine.save_checkpoint(str(directory), tag=TAG)
            meta.write(directory)
            # Whole weights beside the ZeRO shards, so export and evaluation never unpickle DeepSpeed's files.
            # Every rank takes part in gathering them; rank 0 writes them.
            weights = master_weights(engine, keep=self.rank == 0)
            if self.rank == 0:
                save_file(weights, str(Path(directory, WEIGHTS)))
                Path(directory, MODEL_JSON).write_text(json.dumps(
                    {"model": self.config.model.model_dump(mode="json"), "table": self.table.to_json(),
                     "step": step}))

        report_checkpoint({"step": step, **metrics}, write)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds a pickled object other than tensors and DeepSpeed's few plain records."""


def deepspeed_records() -> list:
    """The only non-tensor classes DeepSpeed 0.19's checkpoints of our recipes hold (ZeRO 0-3, fp32 and bf16, with
    and without offload; `torch.serialization.get_unsafe_globals_in_checkpoint` on each file): plain records that
    run no code when rebuilt. Anything else in a checkpoint is refused."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_tensors_only(path: str, map_location=None):
    """`torch.load` that never runs pickled code: tensors, containers and `deepspeed_records()` only. A file with
    anything else (a planted `__reduce__`, an unknown class) raises `UnsafeCheckpointError` before it is rebuilt."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(deepspeed_records()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a paragraph of advice; keep the line that names what was refused
        reason = next((line.strip() for line in str(error).splitlines()
                       if line.strip().startswith(("Trying to load", "Unsupported"))), "not a tensor-only file")
        raise UnsafeCheckpointError(f"refusing to resume from {path}: it holds a pickled object that is not a "
                                    f"tensor or a known DeepSpeed record ({reason})") from None


class TensorsOnlyLoads:
    """DeepSpeed's checkpoint engine with its `load` (a `torch.load(weights_only=False)`, i.e. an unpickler that runs
    whatever the file says) replaced by `load_tensors_only`; saving and everything else is DeepSpeed's own."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        return load_tensors_only(path, map_location)


def refuse_pickled_objects(engine) -> None:
    """Route every file `engine.load_checkpoint` reads through `load_tensors_only`: anyone who can write the run
    storage could otherwise run code on every worker. DeepSpeed reads model and ZeRO optimizer states through
    `engine.checkpoint_engine.load` on the paths our recipes take (engine.py: no MoE, no universal checkpoints)."""
    if not isinstance(engine.checkpoint_engine, TensorsOnlyLoads):
        engine.checkpoint_engine = TensorsOnlyLoads(engine.checkpoint_engine)


def master_weights(engine, keep: bool) -> dict:
    """The full fp32 master weights (what DeepSpeed's zero_to_fp32 recovers), not the 16-bit copy the forward pass
    uses, which under bf16 is rounded. A collective: every rank calls it, in the same parameter order; only a rank
    with `keep` holds the result (a full fp32 copy on every rank would cost what ZeRO saves)."""
    from deepspeed.utils import safe_get_full_fp32_param

    # state_dict keys (tied names, persistent buffers) as the plain model expects them; parameters replaced below,
    # since under stage 3 the module holds only empty partitions.
    weights = dict(engine.module.state_dict())
    gathered: dict[int, object] = {}
    for name, param in engine.module.named_parameters(remove_duplicate=False):
        if id(param) not in gathered:
            full = safe_get_full_fp32_param(param)
            # None where the optimizer keeps no separate master copy (stage 0 in fp32): the parameter is the master.
            gathered[id(param)] = (param if full is None else full) if keep else None
        weights[name] = gathered[id(param)]
    return {k: v.detach().float().contiguous().cpu() for k, v in weights.items()} if keep else {}
