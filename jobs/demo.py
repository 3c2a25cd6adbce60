"""python -m jobs.demo --out DIR: the whole system on the embedded sample corpus, on a local Ray instance.

Generate the corpus, preprocess it into label shards, train the shared WordPiece vocabulary on its captions and a
small RGB tokenizer on its images (Ray Train), tokenize every modality, read everything back through the
webdataset library, check it, print a summary (plus preview PNGs). Then the Meta-Transformer modalities: one small
corpus each of audio, time series, IMU, tables and graphs, labelled, their tokenizers trained or fitted, tokenized
(jobs/demo_mixture.py). Pretrain a tiny model on the mixture of all six datasets, print each modality's loss at
the start and the end, plot, export and evaluate it on the tasks its modalities allow, generate images and
palettes from held-out captions (a contact sheet); last, a reduced scaling-law
study (configs/study/demo.yaml: nine micro runs scheduled by Ray Tune) and its fitted exponents.
"""

from __future__ import annotations

import argparse
import os
import time

from cluster.connect import connect
from jobs.cli import REPO_ROOT, run_job
from jobs.demo_mixture import mixture_data, modality_losses, prepare_raw_datasets
from jobs.evaluate import main as evaluate_main
from jobs.generate import main as generate_main
from jobs.preprocess import summary as preprocess_summary
from jobs.study import exponents_text, plan_text
from pipeline.data.inspect import verify_output
from pipeline.data.preprocess import run_preprocess
from pipeline.data.preview import write_preview
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.study.fit import fit_and_report
from pipeline.study.plan import concurrency, plan_study
from pipeline.study.records import study_storage
from pipeline.study.results import fit_table
from pipeline.study.runner import run_study
from pipeline.train.export import export_checkpoint
from pipeline.train.metrics import read_metrics
from pipeline.train.tokenizer import run_train_tokenizer
from pipeline.train.wordpiece import run_train_wordpiece
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig
from schemas.pretrain import PretrainConfig
from schemas.study import StudySpec
from schemas.train_tokenizer import TrainTokenizerConfig


TEXT_VOCAB = 4_700  # the sample corpus's captions run out of new pieces just above 4,650


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Tessera end to end on the embedded sample corpus.")
    parser.add_argument("--out", default="demo_out", help="working directory of the demo (default demo_out)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=64, help="image resolution of the shards")
    parser.add_argument("--steps", type=int, default=200, help="pretraining steps of the tiny model")
    # A step count, not a time limit, so that the demo's shards and numbers are the same on every run.
    parser.add_argument("--tokenizer-steps", type=int, default=150,
                        help="training steps of the demo's RGB tokenizer (bench/tokenizer.py trains for 10 minutes)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local instance)")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    started = time.perf_counter()

    step("1/9 sample corpus")
    corpus = SampleCorpusConfig(out=f"{out}/corpus", samples=args.samples, seed=0, image_size=128,
                                samples_per_shard=64, workers=1)
    description = write_corpus(corpus)
    print(f"{args.samples} samples ({description['counts']}) in {len(description['shards'])} tars at {corpus.out}")

    step("2/9 preprocess on Ray: label")
    ray_info = connect(args.address)
    print(f"Ray ({ray_info['mode']}) at {ray_info['address']}: {ray_info['nodes']} node(s), "
          f"{ray_info['resources'].get('CPU', 0):.0f} CPU, {ray_info['resources'].get('GPU', 0):.0f} GPU")
    config = load_config(PreprocessConfig, REPO_ROOT / "configs/preprocess/default.yaml", [
        f"input={corpus.out}", f"output={out}/shards", f"image.resolution={args.resolution}", "reader.samples_per_unit=64",
    ])
    print(preprocess_summary(run_preprocess(config)))

    step("3/9 tokenizers: WordPiece for text-like modalities, an FSQ tokenizer for RGB (Ray Train, 2 workers)")
    storage = Storage(config.output, config.storage)
    tokenizer_dir = run_train_wordpiece(TrainTokenizerConfig(
        modality="caption", input=config.output, output=f"{out}/tokenizers/wordpiece",
        model={"vocab_size": TEXT_VOCAB}))["output"]
    rgb = load_config(TrainTokenizerConfig, REPO_ROOT / "configs/train_tokenizer/default.yaml", [
        "modality=rgb", f"input={config.output}", f"output={out}/tokenizers/rgb-fsq", f"storage_path={out}/runs",
        "name=demo-rgb-tokenizer", f"steps={args.tokenizer_steps}", "log_every=25",
        f"checkpoint_every={args.tokenizer_steps}", "optim.warmup_steps=20"])
    run_train_tokenizer(rgb)
    text_modalities = [m for m in ("caption", "color_palette", "metadata") if m in config.modalities]
    tokenizers = {**{m: str(tokenizer_dir) for m in text_modalities}, "rgb": rgb.output}
    tokenize = config.model_copy(update={"stages": ("tokenize",), "tokenizers": tokenizers})
    report = run_preprocess(tokenize)
    for folder, stats in report["tokens"].items():
        print(f"  {folder:<18} {stats['tokens']:>7} tokens, {stats['mean_per_sample']:>6} per sample, "
              f"longest {stats['longest']}")

    step("4/9 read the shards back")
    checked = verify_output(storage)
    print(f"{checked.samples} samples in {checked.shards} shards; every folder holds the same keys in the same order")
    print(f"{'folder':<20}{'shards':>8}{'samples':>10}{'MB':>8}")
    for folder, stats in checked.folders.items():
        print(f"{folder:<20}{stats['shards']:>8}{stats['samples']:>10}{stats['bytes'] / 1e6:>8.2f}")
    for folder in ("caption", "color_palette", "metadata"):
        if folder in checked.first_sample:
            print(f"  first {folder}: {checked.first_sample[folder].decode()[:110]}")
    write_preview(storage, "preview.png")
    print(f"preview of the first samples: {storage.uri('preview.png')}; RGB through its tokens: "
          f"{rgb.output}/reconstructions.png")

    step("5/9 Meta-Transformer modalities: a corpus each, labelled, tokenizers trained or fitted, tokenized")
    raw_entries, raw_tokenizers = prepare_raw_datasets(out, str(tokenizer_dir), args.tokenizer_steps)

    step("6/9 pretrain a tiny any-to-any model on the mixture of all six datasets (Ray Train + DeepSpeed ZeRO-2)")
    modalities = ["rgb", *text_modalities, *raw_tokenizers]
    pretrain = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/tiny.yaml", [
        f"data={mixture_data(config.output, raw_entries)}", f"storage_path={out}/runs", f"steps={args.steps}",
        "name=demo-tiny", f"modalities=[{', '.join(modalities)}]",
    ])
    summary = run_pretrain(pretrain)
    curve = [m["loss"] for m in read_metrics(summary["metrics_file"])]
    print(f"loss {curve[0]:.3f} -> {curve[-1]:.3f} over {pretrain.steps} steps; curve {summary['plot']}")
    print("each modality carried end to end, its loss at the first and the last log row:")
    print(modality_losses(summary["metrics_file"], modalities))
    exported = f"{out}/models/demo-tiny.safetensors"
    export_checkpoint(summary["checkpoint"], exported)
    print(f"checkpoint {summary['checkpoint']}\nexported to {exported}")

    step("7/9 evaluate the tiny model: one Ray task per task, each on the dataset that holds its modalities")
    # `all`: every task the demo's modalities allow; depth and semseg decoding are listed as skipped (no such folders).
    datasets = {"image_text": config.output, **{e["name"]: e["path"] for e in raw_entries}}
    tokenizers = {"rgb": rgb.output, **raw_tokenizers}
    failed = evaluate_main(["--checkpoint", exported, "--tasks", "all", "--out", f"{out}/eval",
                            "--set", "data={" + ", ".join(f"{k}: {v}" for k, v in datasets.items()) + "}",
                            "--set", "tokenizers={" + ", ".join(f"{k}: {v}" for k, v in tokenizers.items()) + "}"])

    step("8/9 generate from held-out samples: caption -> rgb, color_palette (MaskGIT, then token by token)")
    # Samples of pretraining's validation holdout (5% by key hash), which the model never trained on.
    generate_main(["--checkpoint", exported, "--input", config.output, "--from", "caption",
                   "--to", "rgb,color_palette", "--samples", "4", "--out", f"{out}/generate",
                   "--set", "holdout_fraction=0.05", "--set", f"tokenizers.rgb={rgb.output}",
                   "--set", f"tokenizers.caption={tokenizer_dir}",
                   "--set", f"tokenizers.color_palette={tokenizer_dir}"])

    step("9/9 a reduced scaling-law study: 3 sizes x 3 token budgets, one pretrain per Ray Tune trial, then the fit")
    spec = load_config(StudySpec, REPO_ROOT / "configs/study/demo.yaml", [f"data={config.output}"])
    print(plan_text(spec, plan_study(spec), concurrency(spec, ray_info["resources"])))
    study = study_storage(spec, f"{out}/studies")
    table = run_study(spec, study, cluster_resources=ray_info["resources"])
    try:
        print(exponents_text(fit_and_report(fit_table(table, spec.n_count), study.path("report"), bootstrap=100)))
    except ValueError as exc:  # runs this small may not pin the law down; the table above still stands
        print(f"fit: {exc}")
    print(f"study table {study.uri('results.csv')}; fit report {study.path('report')}/report.md")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs under {out}")
    return failed or int((table["status"] != "done").any())


def step(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


if __name__ == "__main__":
    run_job(main)
