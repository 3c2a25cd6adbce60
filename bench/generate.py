"""Token-by-token decoding with and without the decoder's key/value cache, in one process, on one model.

    python bench/generate.py [--sizes tiny,B] [--batch 2] [--tokens 32] [--repeats 3] [--threads 1]

The model that ships (a size of pipeline/model/sizes.py with the encoder cut to one block: it runs once on either
path) over the registry's rgb (196 tokens) and caption (30k WordPiece vocabulary) modalities, random weights, fp32,
CPU. Both paths decode the same teacher-forced caption run of --tokens slots (`S_0` then random ids, fed shifted
behind SOS; the cost does not depend on the ids) for --batch samples given an image's tokens, through the calls
generation makes:
- uncached: `target_logits` over the whole run so far at every step, as `generate_sequence` decoded before the cache;
- cached: `next_logits`, the new slot alone on `FourM.decode_step`, as it decodes now.
Tokens/s counts the decoded slots (batch x (tokens - 1)) over the best wall time of --repeats runs, the encoder
included; the speed-up is given in wall and in CPU seconds of the process (the steadier one on a shared machine,
with one thread), with the largest gap between the two paths' logits beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.masking import SENTINEL_IDS, SOS_ID  # noqa: E402
from pipeline.generate.sampling import next_logits, target_logits, to_torch  # noqa: E402
from pipeline.generate.slots import Run, given_runs, pack_runs, sentinel_run  # noqa: E402
from pipeline.model import build_model  # noqa: E402
from schemas.batch import ModalitySpec, ModalityTable  # noqa: E402
from schemas.model import ModelConfig  # noqa: E402

TABLE = ModalityTable.of([ModalitySpec.from_registry("rgb"), ModalitySpec.from_registry("caption")])
CAPTION = TABLE.index("caption")


def _problem(batch: int, tokens: int, seed: int) -> tuple[list[list[Run]], np.ndarray, np.ndarray]:
    """(encoder runs, the target run (B, tokens), what each slot is fed) for `batch` random images."""
    rng = np.random.default_rng(seed)
    rgb = TABLE["rgb"]
    rows = [{"rgb": rng.integers(0, rgb.vocab_size, rgb.max_tokens)} for _ in range(batch)]
    encoder = [[*given_runs(TABLE, row), sentinel_run(TABLE, "caption")] for row in rows]
    run = rng.integers(SENTINEL_IDS[-1] + 1, TABLE["caption"].vocab_size, (batch, tokens))
    run[:, 0] = SENTINEL_IDS[0]
    fed = np.concatenate([np.full((batch, 1), SOS_ID), run[:, :-1]], axis=1)
    return encoder, run, fed


def _uncached(model, encoder, run: np.ndarray, fed: np.ndarray) -> list[torch.Tensor]:
    memory = model.encode(to_torch(pack_runs(encoder, [[] for _ in encoder]), "cpu"))
    logits = []
    for length in range(1, run.shape[1]):
        decoder = [[Run(CAPTION, run[b, :length + 1], np.arange(length + 1), fed[b, :length + 1], causal=True)]
                   for b in range(len(run))]
        logits.append(target_logits(model, to_torch(pack_runs(encoder, decoder), "cpu"), CAPTION, memory,
                                    slot=length))
    return logits


def _cached(model, encoder, run: np.ndarray, fed: np.ndarray) -> list[torch.Tensor]:
    memory = model.encode(to_torch(pack_runs(encoder, [[] for _ in encoder]), "cpu"))
    cache = model.start_decoding(*memory, capacity=run.shape[1])
    return [next_logits(model, cache, torch.from_numpy(fed[:, cache.length:length + 1]), CAPTION)
            for length in range(1, run.shape[1])]


def _best_seconds(decode, repeats: int, *args) -> tuple[float, float, list[torch.Tensor]]:
    """(best wall seconds, best CPU seconds of this process, the logits) over `repeats` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            logits = decode(*args)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), logits


def measure(size: str, batch: int, tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(size=size, encoder_depth=1), TABLE).eval()
    encoder, run, fed = _problem(batch, tokens, seed=0)
    args = (model, encoder, run, fed)
    uncached_s, uncached_cpu, uncached = _best_seconds(_uncached, repeats, *args)
    cached_s, cached_cpu, cached = _best_seconds(_cached, repeats, *args)
    decoded = batch * (tokens - 1)
    gap = max(float((a - b).abs().max()) for a, b in zip(cached, uncached, strict=True))
    return {"size": size, "decoder_depth": model.dims.decoder_depth, "dim": model.dims.dim, "batch": batch,
            "tokens": tokens, "uncached_tok_s": round(decoded / uncached_s, 1),
            "cached_tok_s": round(decoded / cached_s, 1), "speedup_wall": round(uncached_s / cached_s, 2),
            "speedup_cpu": round(uncached_cpu / cached_cpu, 2), "max_logit_gap": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,B")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes.split(","):
        print(json.dumps(measure(size, args.batch, args.tokens, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
