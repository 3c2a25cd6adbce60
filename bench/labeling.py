"""Labeling throughput: preprocess at production shape (model labelers in actor pools), and the tokenize stage.

    python bench/labeling.py [--samples 4096] [--samples-per-unit 128] [--cpus 2] [--depth-input 96]
                             [--dino-input 128] [--repeats 2]
    python bench/labeling.py --tokenize [--samples 1536] [--samples-per-unit 128] [--cpus 2]

Label mode: the sample corpus is labelled with rgb, caption, DPT `depth` and DINOv2 `dinov2_feature`, both models
random-weight checkpoints of the real architectures written as tests/model_weights.py writes them (loaded through
the labelers' own code), at input sizes that make each model cost about what decoding costs on this machine.
Every path runs the job's own functions (read_stage, decode_stage, the labelers through apply_labeler, write_unit):

- the loop: all of them in sequence, unit by unit, in one process with one torch thread;
- each stage alone at its best rate: `--cpus` plain processes (no Ray) each running only that stage over its share
  of the units (the models on units decoded beforehand, untimed), started together behind a barrier;
- the pipeline: `build_dataset` of pipeline/data/preprocess.py on a local Ray instance of `--cpus` CPUs, once with
  the split the job chooses itself (pipeline/data/pool_layout.py) and once per hand-tuned split in HAND_SPLITS.

On CPUs only, every stage shares the same cores, so the most a pipeline can reach is the stages' combined rate
1 / sum(1 / rate_i) (the slowest stage's rate is the ceiling only where models have an accelerator to themselves);
both fractions are printed. Each pipeline variant runs on a quarter of the units, then on all of them: the
difference gives its marginal rate, free of the fixed start-up (actors importing torch and loading their models, the
job's calibration), which is what a long run converges to. Where the rest goes: Ray Data's per-operator stats and
CPU seconds per process role.

Tokenize mode: label shards (rgb, caption) are tokenized by an untrained RGB FSQ tokenizer at 224 px and a
WordPiece vocabulary trained on the corpus' captions: `TokenizeShards` in a loop (one torch thread) against the job's
tokenize run (`run_preprocess` with stages [tokenize]), plus each tokenizer's encode rate alone by batch size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.preprocess import ProcessProfile  # noqa: E402
from pipeline.data.readers import list_units  # noqa: E402
from pipeline.data.sample_corpus import write_corpus  # noqa: E402
from pipeline.data.shard_writer import BASE_RUN, WritePlan  # noqa: E402
from pipeline.data.storage import Storage  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.corpus import SampleCorpusConfig  # noqa: E402
from schemas.common import StorageConfig  # noqa: E402
from schemas.preprocess import PreprocessConfig  # noqa: E402

MODELS = ("depth", "dinov2_feature")
MODALITIES = ("rgb", "caption", *MODELS)
# Hand-tuned splits of 2 CPUs (the pools pinned; each decode task then asks for 1 CPU): the one a person would
# write first, and one that gives the costlier model two actors.
HAND_SPLITS = {
    "hand: 1 actor x 0.5 CPU each": {m: {"concurrency": 1, "num_cpus": 0.5} for m in MODELS},
    "hand: depth 2 x 0.25, dinov2 1 x 0.5": {"depth": {"concurrency": 2, "num_cpus": 0.25},
                                             "dinov2_feature": {"concurrency": 1, "num_cpus": 0.5}},
}
ROLES = (  # process command line or title -> role, first match wins
    ("PooledLabelStage", "model actors"),
    ("ray::MapBatches", "decode tasks (read + decode + write)"),
    ("ray::_StatsActor", "Ray Data stats actor"),
    ("AutoscalingCoordinator", "Ray Data autoscaling coordinator"),
    ("ray::IDLE", "idle Ray workers"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("bench/labeling.py", "driver (this benchmark: Ray Data's executor, calibration, sampling)"),
)


def cpu_by_role(profile: ProcessProfile) -> dict[str, float]:
    """CPU seconds per role in ROLES (the profile's own grouping names only the preprocess benchmark's roles)."""
    out: dict[str, float] = {}
    for pid, seconds in profile._last.items():
        used = seconds - profile._start.get(pid, 0.0)
        if used > 0.01:
            titles = " | ".join(sorted(profile._titles[pid]))
            role = next((name for pattern, name in ROLES if pattern in titles), "other processes")
            out[role] = out.get(role, 0.0) + used
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def label_config(corpus: Path, output: Path, weights: dict[str, Path], pools: dict | None = None) -> PreprocessConfig:
    overrides = [f"input={corpus}", f"output={output}", f"modalities=[{', '.join(MODALITIES)}]"]
    overrides += [f"labelers.{m}.weights={weights[m]}" for m in MODELS]
    overrides += [f"labelers.{m}.{key}={value}" for m, fields in (pools or {}).items() for key, value in fields.items()]
    return load_config(PreprocessConfig, None, overrides)


# ---------------------------------------------------------------- one process: the loop and each stage alone

def _stages(config: PreprocessConfig):
    from functools import partial

    from pipeline.data.labelers import get_labeler
    from pipeline.data.preprocess import split_labelers
    from pipeline.data.shard_writer import write_unit
    from pipeline.data.stages import decode_stage, read_stage

    source, output = Storage(config.input, config.storage), Storage(config.output, config.storage)
    labels = split_labelers(config, config.modalities)
    read = partial(read_stage, storage=source, config=config.reader)
    decode = partial(decode_stage, image=config.image, caption=config.caption, fused=labels.fused)
    models = {m: get_labeler(m)(c.model_copy(update={"num_gpus": 0.0}), config.storage)
              for m, c in labels.pooled.items()}
    units = list_units(source, config.reader)
    write = partial(write_unit, storage=output, plan=WritePlan(BASE_RUN, config.modalities),
                    unit_label={u.index: u.label for u in units})
    return read, decode, models, write, units, labels.pooled


def _unit_row(unit) -> dict:
    import dataclasses

    import numpy as np

    return {"unit": np.array([dataclasses.asdict(unit)], dtype=object)}


def run_stage(config: PreprocessConfig, stage: str, indices: list[int], barrier=None) -> tuple[int, float]:
    """(samples, seconds) of `stage` ("loop", "decode" or a model) over the units in `indices`, one torch thread."""
    import torch

    from pipeline.data.stages import apply_labeler

    torch.set_num_threads(1)
    read, decode, models, write, units, pooled = _stages(config)
    decoded = [decode(read(_unit_row(units[i]))) for i in indices] if stage in models else None
    if stage in models:
        apply_labeler(dict(decoded[0]), models[stage], pooled[stage].batch_size)  # warm-up, as an actor's 2nd unit
    if barrier is not None:
        barrier.wait()
    samples, started = 0, time.perf_counter()
    for n, i in enumerate(indices):
        if stage in models:
            batch = dict(decoded[n])
            apply_labeler(batch, models[stage], pooled[stage].batch_size)
        else:
            batch = decode(read(_unit_row(units[i])))
            if stage == "loop":
                for modality, labeler in models.items():
                    apply_labeler(batch, labeler, pooled[modality].batch_size)
                write(batch)
        samples += len(batch["key"])
    return samples, time.perf_counter() - started


def _stage_worker(args):
    return run_stage(*args[:3], barrier=_BARRIER)


_BARRIER = None


def _set_barrier(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def stage_alone(config: PreprocessConfig, stage: str, units: int, processes: int) -> float:
    """Samples/s of `stage` alone on `processes` plain processes (units dealt round-robin), timed from a barrier."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, initializer=_set_barrier, initargs=(barrier,)) as pool:
        results = pool.map(_stage_worker, [(config, stage, list(range(p, units, processes))) for p in range(processes)])
    return sum(s for s, _ in results) / max(t for _, t in results)


# ---------------------------------------------------------------- the pipeline

def run_pipeline(config: PreprocessConfig, first: int | None = None) -> dict:
    """The job's label dataset over every unit (or the first `first`): seconds, samples, when the first unit was
    done, Ray Data's stats and CPU seconds per process role."""
    from pipeline.data.preprocess import build_dataset
    from schemas.shards import UnitRecord

    source, output = Storage(config.input, config.storage), Storage(config.output, config.storage)
    units = list_units(source, config.reader)[:first]
    with ProcessProfile() as profile:
        started = time.perf_counter()
        ds = build_dataset(config, WritePlan(BASE_RUN, config.modalities), source, output, units)
        done = [(time.perf_counter(), UnitRecord.from_json(row["record"]).samples_in) for row in ds.iter_rows()]
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "samples": sum(n for _, n in done),
            "first_unit_s": done[0][0] - started, "stats": ds.stats(), "roles": cpu_by_role(profile)}


def stats_summary(stats: str) -> list[str]:
    """The per-operator lines of Ray Data's stats worth reading: operator, wall/CPU/UDF time, rows, actor lines."""
    keep = ("Operator", "Remote wall time", "Remote cpu time", "UDF time", "Output num rows", "actor",
            "Dataset iterator time", "Ray Data's", "iterator", "Total time")
    return [line.rstrip() for line in stats.splitlines() if any(key in line for key in keep)]


def label_mode(args, work: Path) -> None:
    import ray

    from cluster.connect import connect
    from pipeline.data.pool_layout import layout_for_run
    from tests.model_weights import save_tiny_model

    corpus = work / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=256,
                                    samples_per_shard=args.samples_per_unit, workers=args.cpus))
    weights = {"depth": save_tiny_model("depth", work / "w-depth", input_size=args.depth_input),
               "dinov2_feature": save_tiny_model("dinov2_feature", work / "w-dino", input_size=args.dino_input)}
    units = len(list_units(Storage(str(corpus), StorageConfig()), load_config(PreprocessConfig, None, []).reader))
    samples = args.samples

    def config(name: str, pools: dict | None = None) -> PreprocessConfig:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        return label_config(corpus, out, weights, pools)

    connect(None, num_cpus=args.cpus)
    run_pipeline(config("warm-up"), first=1)  # Ray Data's per-cluster actors start, as on any running cluster
    # The box is shared: every measurement is repeated, alternating stages alone and pipelines, and the best of each
    # is kept (others' load only ever slows a run down).
    rates: dict[str, list[float]] = {}
    half = list(range(0, units, 2)), list(range(1, units, 2))
    loop_time = run_stage(config("loop"), "loop", half[0])[1]  # half of the loop before the other paths, half after
    results = []
    variants = {"auto (the job's split)": None, **HAND_SPLITS}
    for repeat in range(args.repeats):
        for stage in ("decode", *MODELS):
            rates.setdefault(stage, []).append(stage_alone(config(f"alone-{stage}"), stage, units, args.cpus))
            print(f"  {stage} alone on {args.cpus} processes: {rates[stage][-1]:.1f} samples/s", flush=True)
        for name, pools in variants.items():
            # A run of a quarter of the units, then of all: the difference is the rate without the fixed start-up
            # (actors importing torch and loading models, the calibration), i.e. what a long run converges to.
            short = run_pipeline(config(f"ray-{repeat}-{len(results)}-short", pools), first=max(1, units // 4))
            run = run_pipeline(config(f"ray-{repeat}-{len(results)}", pools))
            run["marginal"] = (run["samples"] - short["samples"]) / (run["seconds"] - short["seconds"])
            run["startup_s"] = short["seconds"] - short["samples"] / run["marginal"]
            results.append((name, repeat, run))
            print(f"  pipeline [{name}] run {repeat + 1}: {run['samples']} samples in {run['seconds']:.1f} s = "
                  f"{run['samples'] / run['seconds']:.1f} samples/s; marginal {run['marginal']:.1f} samples/s "
                  f"(fixed start-up {run['startup_s']:.1f} s)", flush=True)
    loop_time += run_stage(config("loop-2"), "loop", half[1])[1]
    loop_rate = samples / loop_time

    auto_cfg = config("layout")
    from functools import partial

    from pipeline.data.preprocess import split_labelers
    from pipeline.data.stages import decode_stage, read_stage

    labels = split_labelers(auto_cfg, auto_cfg.modalities)
    read = partial(read_stage, storage=Storage(str(corpus), StorageConfig()), config=auto_cfg.reader)
    decode = partial(decode_stage, image=auto_cfg.image, caption=auto_cfg.caption, fused=labels.fused)
    units_list = list_units(Storage(str(corpus), StorageConfig()), auto_cfg.reader)
    import dataclasses

    layout = layout_for_run(auto_cfg, labels.pooled, read, decode, {"unit": dataclasses.asdict(units_list[0])})
    ray.shutdown()

    stage_rate = {stage: max(values) for stage, values in rates.items()}  # best of the repeats
    slowest = min(stage_rate.values())
    combined = 1 / sum(1 / r for r in stage_rate.values())
    print(f"\nlabel mode: {samples} samples, {units} units of {args.samples_per_unit}, {args.cpus} CPUs, "
          f"depth input {args.depth_input} px, dinov2 input {args.dino_input} px, 224 px samples")
    print(f"job's layout: decode tasks {layout.decode_cpus} CPU each; " + "; ".join(
        f"{m}: {c.concurrency} actor(s) x {c.num_cpus} CPU" for m, c in layout.pools.items())
        + f"; calibrated ms/sample (1 thread): " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in layout.costs.items()))
    print("| path | samples/s | x loop | / slowest stage alone | / stages' combined rate (CPU ceiling) |")
    print("|---|---|---|---|---|")
    print(f"| loop (1 process, 1 torch thread) | {loop_rate:.1f} | 1.00x | {loop_rate / slowest:.0%} | "
          f"{loop_rate / combined:.0%} |")
    for stage, rate in stage_rate.items():
        print(f"| {stage} alone, {args.cpus} plain processes | {rate:.1f} | {rate / loop_rate:.2f}x | - | - |")
    print(f"| (stages' combined rate: 1 / sum(1 / rate)) | {combined:.1f} | {combined / loop_rate:.2f}x | - | - |")
    for name, repeat, run in results:
        for what, rate in (("whole run", run["samples"] / run["seconds"]), ("marginal (no start-up)", run["marginal"])):
            print(f"| pipeline, {name}, run {repeat + 1}, {what} | {rate:.1f} | {rate / loop_rate:.2f}x | "
                  f"{rate / slowest:.0%} | {rate / combined:.0%} |")
    name, repeat, run = results[0]
    seconds = run["seconds"]
    print(f"\nwhere the time went in [{name}] run {repeat + 1} ({seconds:.1f} s x {args.cpus} CPUs = "
          f"{seconds * args.cpus:.0f} CPU s; first unit done after {run['first_unit_s']:.1f} s):")
    for role, cpu in run["roles"].items():
        print(f"  {role}: {cpu:.1f} CPU s ({cpu / (seconds * args.cpus):.0%})")
    print("Ray Data stats (per operator):")
    for line in stats_summary(run["stats"]):
        print("  " + line)


# ---------------------------------------------------------------- tokenize mode

def tokenize_mode(args, work: Path) -> None:
    from functools import partial

    import numpy as np
    import torch

    from cluster.connect import connect
    from pipeline.data.preprocess import run_preprocess
    from pipeline.data.tar_io import iterate_shard
    from pipeline.data.tokenize import TokenizeShards
    from pipeline.tokenizers import train_wordpiece
    from pipeline.tokenizers.codecs import read_member
    from pipeline.tokenizers.fit import new_tokenizer
    from schemas.modalities import get_modality
    from schemas.shards import shard_relpath

    corpus, labelled = work / "corpus", work / "labelled"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=256,
                                    samples_per_shard=args.samples_per_unit, workers=args.cpus))
    connect(None, num_cpus=args.cpus)
    run_preprocess(load_config(PreprocessConfig, None, [f"input={corpus}", f"output={labelled}",
                                                        "modalities=[rgb, caption]"]), log=lambda _: None)
    storage = Storage(str(labelled), StorageConfig())
    first = list(iterate_shard(storage.read_bytes(shard_relpath("rgb", 0))))
    images = [read_member("rgb", next(iter(f.values()))) for _, f in first]
    caption_shard = storage.read_bytes(shard_relpath("caption", 0))
    captions = [next(iter(f.values())).decode() for _, f in iterate_shard(caption_shard)]
    torch.manual_seed(0)
    tokenizers = {"rgb": new_tokenizer("rgb", "bench/rgb-fsq", images[:32]),
                  "caption": train_wordpiece(captions, 5000)}
    dirs = {m: str(t.save(work / "tokenizers" / m)) for m, t in tokenizers.items()}
    units = len(storage.list("rgb"))
    overrides = [f"output={{}}", "stages=[tokenize]"] + [f"tokenizers.{m}={d}" for m, d in dirs.items()]

    def fresh(name: str) -> PreprocessConfig:
        target = work / name
        shutil.copytree(labelled, target)
        return load_config(PreprocessConfig, None, [o.format(target) for o in overrides])

    print(f"tokenize mode: {args.samples} samples, {units} shards; rgb: {tokenizers['rgb'].tokens_per_sample} "
          f"tokens/sample (FSQ, untrained, 224 px), caption: WordPiece", flush=True)
    # each tokenizer's encode alone, one thread, by batch size
    torch.set_num_threads(1)
    print("| tokenizer | batch | samples/s (1 thread) |\n|---|---|---|")
    for batch in (8, 32, 64, 256):
        for modality, data in (("rgb", images), ("caption", captions)):
            tok = tokenizers[modality]
            reps = max(1, 256 // len(data))
            encode = partial(tok.encode, max_len=get_modality(modality).max_tokens)  # WordPiece pads to it
            encode(data[:batch])
            started = time.perf_counter()
            n = 0
            for _ in range(reps):
                for s in range(0, len(data), batch):
                    encode(data[s:s + batch])
                    n += len(data[s:s + batch])
            print(f"| {modality} | {batch} | {n / (time.perf_counter() - started):.0f} |", flush=True)
    # the loop: TokenizeShards over every shard, in this process
    loop_cfg = fresh("loop")
    out = Storage(loop_cfg.output, loop_cfg.storage)
    plan = WritePlan("tokenize-rgb+caption", ("rgb", "caption"), "tokenize")
    started = time.perf_counter()
    stage = TokenizeShards(storage=out, plan=plan, tokenizers=loop_cfg.tokenizer_uris(),
                           storage_config=loop_cfg.storage)  # loads the tokenizers once, as each actor does
    for i in range(units):
        stage({"unit": np.array([i])})
    loop_s = time.perf_counter() - started
    torch.set_num_threads(args.cpus)
    rows = [("loop: one TokenizeShards over every shard, 1 process, 1 torch thread", loop_s)]
    for repeat in range(args.repeats):
        cfg = fresh(f"ray-{repeat}")
        started = time.perf_counter()
        run_preprocess(cfg, log=lambda _: None)
        seconds = time.perf_counter() - started
        rows.append((f"job's tokenize run (Ray Data actor pool), run {repeat + 1}", seconds))
    print("| path | seconds | samples/s | x loop |\n|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {args.samples / seconds:.1f} | {loop_s / seconds:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--samples-per-unit", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--depth-input", type=int, default=96)
    parser.add_argument("--dino-input", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokenize", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tessera-labeling-"))
    try:
        (tokenize_mode if args.tokenize else label_mode)(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
