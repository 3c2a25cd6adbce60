"""Train a neural tokenizer on label shards with Ray Train (torch DDP), then score it and write it out.

The driver reads the first training samples, builds the untrained tokenizer from them (channels, input
normalisation, architecture: every config error surfaces before Ray starts) and ships its files to the workers.
Each worker streams its own label shards (`LabelStream`), steps a DDP-wrapped `Objective`, and rank 0 reports a
checkpoint every `checkpoint_every` steps: the tokenizer's own files (tessera.json + model.safetensors), the
optimizer state and the step and loss history. A rerun with the same run name resumes from the latest checkpoint,
as does a worker group restarted after a failure (`max_failures`). At the end the driver scores the final
tokenizer on the held-out split and writes, under `output`: the tokenizer, `metrics.json` (reconstruction scores,
codebook usage and perplexity, history), `reconstructions.png` and `loss.png`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pydantic

from pipeline.train.callbacks import StepCallback, StepEnd, notify
from pipeline.train.checkpoint import report_checkpoint, restored_checkpoint
from pipeline.train.metrics import print_progress
from pipeline.train.ray_trainer import build_trainer
from pipeline.train.schedule import apply_lr
from pipeline.train.step import Cadence
from schemas.config import ConfigError
from schemas.train_tokenizer import TrainTokenizerConfig

STATE = "train_state.json"
OPTIMIZER = "optimizer.pt"


def tokenizer_train_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from pipeline.data.label_stream import LabelStream
    from pipeline.data.storage import Storage
    from pipeline.tokenizers import tokenizer_from_files
    from pipeline.tokenizers.fit import Objective
    from pipeline.tokenizers.quantizers import VectorQuantizer, codebook_stats

    config = TrainTokenizerConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.cpus_per_worker)
    tokenizer = tokenizer_from_files(loop_config["files"])
    network, codec = tokenizer.network.train(), tokenizer.codec
    step, history = 0, []
    optimizer_state = None
    with restored_checkpoint() as directory:
        if directory is not None:
            network.load_state_dict(tokenizer_from_files(_files(directory, loop_config["files"])).network
                                    .state_dict())
            optimizer_state = torch.load(Path(directory, OPTIMIZER), weights_only=True)  # written by this job
            state = json.loads(Path(directory, STATE).read_text())
            step, history = state["step"], state["history"]
            if rank == 0:
                print_progress(f"resumed from step {step}")
    if world > 1 and isinstance(network.quantizer, VectorQuantizer):
        def all_reduce(tensor: torch.Tensor) -> torch.Tensor:  # EMA statistics over every rank's latents
            dist.all_reduce(tensor)
            return tensor
        network.quantizer.sync = all_reduce
    objective = ray.train.torch.prepare_model(Objective(network, codec))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    storage = Storage(config.input, config.storage)
    # A resumed run draws a fresh sample order (seeded by the step) instead of replaying the first one.
    stream = LabelStream(storage, config.modality, tokenizer.read, rank=rank, world=world, seed=config.seed + step,
                         holdout=config.holdout_fraction).batches(config.batch_size)
    started = time.perf_counter()
    trained_before = history[-1]["train_seconds"] if history else 0.0
    window_start, window_ids = time.perf_counter(), []
    cadence = Cadence(config.steps, config.log_every, config.checkpoint_every)
    callbacks = loop_config.get("callbacks", ())
    while step < config.steps:
        arrays = next(stream)
        apply_lr(optimizer, step, config.steps, config.optim)
        loss, reconstruction, bottleneck, ids = objective(codec.to_input(arrays).to(device),
                                                          codec.target(arrays).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), config.optim.grad_clip)
        optimizer.step()
        step += 1
        window_ids.append(ids.detach().cpu())
        elapsed = trained_before + time.perf_counter() - started
        stop = _time_is_up(config, elapsed, world, dist, torch)
        if cadence.logs_at(step, last=stop):
            seconds = time.perf_counter() - window_start
            usage = codebook_stats(torch.cat(window_ids), tokenizer.vocab_size)
            record = {"step": step, "loss": float(loss.detach()), "reconstruction": float(reconstruction),
                      "bottleneck": float(bottleneck), "lr": optimizer.param_groups[0]["lr"],
                      "samples_per_s": len(window_ids) * config.batch_size * world / seconds,
                      "window_usage": usage["usage"], "window_perplexity": usage["perplexity"],
                      "train_seconds": elapsed}
            history.append(record)
            window_start, window_ids = time.perf_counter(), []
            if rank == 0:
                print_progress(f"step {step:>6}/{config.steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                               f"{record['samples_per_s']:,.0f} samples/s codes used {usage['usage']:.0%} "
                               f"({elapsed / 60:.1f} min)")
        if cadence.checkpoints_at(step, last=stop):
            _report(tokenizer, optimizer, step, history, rank)
        notify(callbacks, StepEnd(step, rank, world))
        if stop:
            break


def _time_is_up(config: TrainTokenizerConfig, elapsed: float, world: int, dist, torch) -> bool:
    """Every rank stops at the same step: the slowest rank's clock decides."""
    if config.time_limit_minutes is None:
        return False
    flag = torch.tensor([float(elapsed >= config.time_limit_minutes * 60)])
    if world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _report(tokenizer, optimizer, step: int, history: list[dict], rank: int) -> None:
    import torch

    metrics = {"step": step, **{k: v for k, v in history[-1].items() if k != "step"}} if history else {"step": step}

    def write(directory: Path) -> None:
        tokenizer.save(str(directory))
        torch.save(optimizer.state_dict(), Path(directory, OPTIMIZER))
        Path(directory, STATE).write_text(json.dumps({"step": step, "history": history}))

    # DDP keeps every rank's weights identical: rank 0's copy is the checkpoint
    report_checkpoint(metrics, write if rank == 0 else None)


def _files(directory: str, like: dict[str, bytes]) -> dict[str, bytes]:
    return {name: Path(directory, name).read_bytes() for name in like}


def run_train_tokenizer(config: TrainTokenizerConfig, callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train, score on the held-out split and write the tokenizer with its metrics and plots; returns a summary.
    `callbacks` run on every worker after every optimizer step (`pipeline/train/callbacks.py`)."""
    from pipeline.data.label_stream import iter_split
    from pipeline.data.storage import Storage
    from pipeline.tokenizers import load_tokenizer
    from pipeline.tokenizers.codecs import read_member
    from pipeline.tokenizers.fit import new_tokenizer

    if not (config.modality and config.input):
        raise ConfigError("train_tokenizer needs --modality and --input (label shards)")
    labels = Storage(config.input, config.storage)

    def read(payload: bytes):
        return read_member(config.modality, payload)

    fit = [a for _, a in iter_split(labels, config.modality, read, holdout=config.holdout_fraction, held_out=False,
                                    limit=config.fit_samples)]
    kind = (config.model.quantizer and config.model.quantizer.kind) or "fsq"
    tokenizer_id = config.tokenizer_id or f"{config.modality}-{kind}"
    try:
        tokenizer = new_tokenizer(config.modality, tokenizer_id, fit, config.model.settings())
    except pydantic.ValidationError as exc:  # a key or value the modality's family does not take
        raise ConfigError(f"model: {exc}") from None
    # Without --output the tokenizer goes where preprocess looks names up (`tokenizers={rgb: rgb-fsq}`).
    config = config.model_copy(update={"output": config.output or f"tokenizers/{tokenizer_id}"})
    print(f"train_tokenizer {config.run_name}: {tokenizer.tokenizer_id} ({type(tokenizer).__name__}, "
          f"{sum(p.numel() for p in tokenizer.network.parameters()):,} parameters, {tokenizer.tokens_per_sample} "
          f"tokens of {tokenizer.vocab_size} codes) on {config.workers} worker(s), {config.steps} steps", flush=True)
    # The typed config itself, not a JSON dump: a dump masks the storage credentials the workers read with.
    trainer = build_trainer(tokenizer_train_loop,
                            {"config": config, "files": tokenizer.files(), "callbacks": list(callbacks)},
                            config.run_name, config)
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        trained = load_tokenizer(directory)
        state = json.loads(Path(directory, STATE).read_text())
    held_out = [a for _, a in iter_split(labels, config.modality, read, holdout=config.holdout_fraction,
                                         held_out=True, limit=config.eval_samples)]
    return write_outputs(trained, state, held_out, config)


def write_outputs(tokenizer, state: dict, held_out: list, config: TrainTokenizerConfig) -> dict:
    from pipeline.data.storage import Storage
    from pipeline.tokenizers.fit import evaluate, reconstruction_grid

    out = Storage(config.output, config.storage)
    for name, data in tokenizer.files().items():
        out.write_atomic(name, data)
    scores = evaluate(tokenizer, held_out) if held_out else {}
    metrics = {
        "tokenizer_id": tokenizer.tokenizer_id, "content_hash": tokenizer.content_hash,
        "modality": tokenizer.modality, "family": tokenizer.family.value, "vocab_size": tokenizer.vocab_size,
        "tokens_per_sample": tokenizer.tokens_per_sample, "steps": state["step"],
        "train_seconds": state["history"][-1]["train_seconds"] if state["history"] else 0.0,
        "workers": config.workers, "held_out": scores, "history": state["history"],
    }
    out.write_atomic("metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    with tempfile.TemporaryDirectory() as scratch:
        if held_out:
            reconstruction_grid(tokenizer, held_out, f"{scratch}/reconstructions.png",
                                title=_score_line(tokenizer, scores))
            out.write_atomic("reconstructions.png", Path(scratch, "reconstructions.png").read_bytes())
        if state["history"]:
            _plot_history(state["history"], f"{scratch}/loss.png")
            out.write_atomic("loss.png", Path(scratch, "loss.png").read_bytes())
    print(f"{tokenizer.tokenizer_id} (hash {tokenizer.content_hash[:12]}) after {state['step']} steps: "
          f"{_score_line(tokenizer, scores)} -> {out.uri()}", flush=True)
    return {"output": out.uri(), "metrics": metrics, "tokenizer": tokenizer}


def _score_line(tokenizer, scores: dict) -> str:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k != "samples")
    return f"{tokenizer.modality} held-out ({int(scores.get('samples', 0))} samples): {shown}"


def _plot_history(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["reconstruction"] for h in history], label="reconstruction", linewidth=2)
    ax.plot(steps, [h["loss"] for h in history], label="total", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    usage = ax.twinx()
    usage.plot(steps, [h["window_usage"] for h in history], color="tab:green", alpha=0.5, label="codes used")
    usage.set_ylabel("codes used per window")
    usage.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
