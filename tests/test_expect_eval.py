"""Both retrieval tasks and a decoding task scored on cases whose answers were worked out by hand.

The registered tasks run as the evaluate job runs them (`task.evaluate(context)`), through the real eval model
wrapper (packing, mean pooling over non-padding slots, per-sample logits), on samples and a stand-in network
whose outputs are chosen: encoder features are a fixed vector per token id, so pooled features point where the
test says; the decoder gives every target slot the same logits, so predictions and likelihoods are known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pipeline.eval.tasks  # noqa: F401  (the built-in tasks register themselves on import)
from pipeline.data.masking import EOS_ID, PAD_ID
from pipeline.eval.checkpoint import EvalModel
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.registry import get_task
from schemas.batch import ModalitySpec, ModalityTable
from schemas.evaluate import EvaluateConfig, ProbeConfig

TABLE = ModalityTable.of([ModalitySpec.from_registry("rgb", 4), ModalitySpec.from_registry("caption", 12)])


class HandNetwork(torch.nn.Module):
    """The two calls the eval wrapper makes of a network, with outputs set by hand.

    encode: the feature of each encoder slot is `vectors[token id]` (zero for ids not listed; padding gets a large
    vector of its own, so pooling that leaked over padding would move every pooled feature).
    forward: every target slot gets logit `confidence` for `guess` and 0 for every other id.
    """

    def __init__(self, vectors: dict[int, tuple[float, ...]] | None = None, guess: int = 0,
                 confidence: float = 0.0):
        super().__init__()
        vectors = vectors or {}
        dim = len(next(iter(vectors.values()))) if vectors else 1
        lookup = torch.zeros(max(TABLE[m].vocab_size for m in TABLE.names), dim + 1, dtype=torch.float64)
        for token, vector in vectors.items():
            lookup[token, :dim] = torch.tensor(vector, dtype=torch.float64)
        lookup[PAD_ID] = 0
        lookup[PAD_ID, dim] = 1000.0
        self.lookup, self.guess, self.confidence = lookup, guess, confidence

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lookup[batch["enc_tokens"]], batch["enc_pad"]

    def forward(self, batch: dict[str, torch.Tensor], return_logits: bool = False):
        live = ~batch["dec_pad"]
        (index,) = set(batch["dec_modality"][live].tolist())
        name = TABLE.names[index]
        logits = torch.zeros(int(live.sum()), TABLE[name].vocab_size)
        logits[:, self.guess] = self.confidence
        return type("Output", (), {"logits": {name: logits}})()


def context_for(task_name: str, rows: list[dict], fit: int, score: int, network: HandNetwork) -> TaskContext:
    """A task context whose data are `rows` (fit rows first, then score rows) under keys that the context's own
    fit/score split puts in the fit and in the score set, and whose model is `network`."""
    config = EvaluateConfig(probe=ProbeConfig(test_fraction=0.5, batch_size=3))  # batches of 3: padding inside
    context = TaskContext(get_task(task_name), None, config)
    context.samples = [EvalSample(f"k{i:04d}", {}) for i in range(200)]
    fit_keys, score_keys = ([s.key for s in part] for part in context.fit_and_score())
    assert len(fit_keys) >= fit and len(score_keys) >= score
    keys = fit_keys[:fit] + score_keys[:score]
    context.samples = [EvalSample(key, tokens) for key, tokens in zip(keys, rows, strict=True)]
    context.model = EvalModel(network, TABLE)
    return context


def unit(degrees: float) -> tuple[float, float]:
    return math.cos(math.radians(degrees)), math.sin(math.radians(degrees))


def retrieval_case() -> tuple[list[dict], HandNetwork]:
    """Eight scored samples. Sample i's rgb tokens are ids 100+i and 150+i at 30 degrees either side of angle r_i,
    so only their mean points at r_i; its caption is one token at angle c_i (caption ids 200+):

        i     0    1   2   3   4    5    6    7
        r_i   0   20  40  60  80  100  120  145
        c_i  130  20  40  60  80  100  120  120   (samples 6 and 7 share a caption: identical features)

    plus two fit samples (rgb and caption both at 20 and at 100 degrees) that would beat true matches if the task
    searched the fit set too."""
    r = [0, 20, 40, 60, 80, 100, 120, 145]
    c = [130, 20, 40, 60, 80, 100, 120, 120]
    vectors = {}
    for i, angle in enumerate(r):
        vectors[100 + i], vectors[150 + i] = unit(angle - 30), unit(angle + 30)
    for i, angle in enumerate(c[:7]):
        vectors[200 + i] = unit(angle)
    vectors[190], vectors[191] = unit(20), unit(100)
    caption_of = [200, 201, 202, 203, 204, 205, 206, 206]
    scored = [{"rgb": np.array([[100 + i, 150 + i, 100 + i, 150 + i]]),
               "caption": np.array([[caption_of[i]] * (1 + i % 3) + [EOS_ID]])} for i in range(8)]
    fit = [{"rgb": np.array([[190, 190, 190, 190]]), "caption": np.array([[190, EOS_ID]])},
           {"rgb": np.array([[191, 191, 191, 191]]), "caption": np.array([[191, 191, EOS_ID]])}]
    return fit + scored, HandNetwork(vectors)


@pytest.mark.parametrize(("task", "expected"), [
    # rgb queries captions. r_0 = 0: seven captions lie nearer than c_0 = 130 -> miss at 1 and 5. r_6 = 120:
    # c_7 is identical to c_6 and ties count against the true match -> 1 ahead. r_7 = 145: c_0 (15 away) and c_6
    # (tied with c_7, 25 away) -> 2 ahead. The other five are exact. recall@1 = 5/8, recall@5 = 7/8.
    ("retrieval_rgb_to_caption", {"recall@1": 5 / 8, "recall@5": 7 / 8}),
    # captions query rgb. c_0 = 130: every other r is nearer than r_0 = 0 -> 7 ahead. c_7 = 120: r_6 (0 away) and
    # r_5 (20 away) beat r_7 (25 away) -> 2 ahead. c_6 = 120 finds r_6 exactly. recall@1 = 6/8, recall@5 = 7/8.
    ("retrieval_caption_to_rgb", {"recall@1": 6 / 8, "recall@5": 7 / 8}),
])
def test_retrieval_recall_by_hand(task, expected):
    rows, network = retrieval_case()
    scores = {s.metric: s for s in get_task(task).evaluate(context_for(task, rows, fit=2, score=8, network=network))}
    assert {m: s.value for m, s in scores.items()} == pytest.approx(expected)
    assert {m: s.baseline for m, s in scores.items()} == pytest.approx({"recall@1": 1 / 8, "recall@5": 5 / 8})


def test_caption_decoding_accuracy_and_perplexity_by_hand():
    """rgb -> caption, teacher-forced. The targets are each caption's whole run: S_0, the text, EOS.

    scored captions   target runs              the network always says 500, with probability 1/2
      500 501 EOS       S0 500 501 EOS           (logit ln(V - 1) against V - 1 zeros)
      500 500 EOS       S0 500 500 EOS
      502 600 EOS       S0 502 600 EOS
      500 EOS           S0 500 EOS               15 targets, 500 four times

    accuracy = 4/15; perplexity = exp(mean NLL) = exp((4 ln 2 + 11 ln(2 (V - 1))) / 15) = 2 (V - 1)^(11/15).
    Unigram baseline fitted on the fit captions (600 600 600 EOS; 600 EOS -> runs S0 600 600 600 EOS, S0 600 EOS:
    S0 2, EOS 2, 600 4 of N = 8, T = 3 distinct ids): it always says 600, right once (1/15). Witten-Bell smoothed it
    gives S0 and EOS 2/11, 600 4/11, and each of the V - 3 unseen ids (3/11) / (V - 3). The targets hold S0 and EOS
    four times each, 600 once and six unseen ids, so perplexity = 11 * 2^(-8/15) * 4^(-1/15) * ((V - 3) / 3)^(6/15).
    """
    vocab = TABLE["caption"].vocab_size
    captions = [[500, 501], [500, 500], [502, 600], [500]]
    fit_captions = [[600, 600, 600], [600]]
    rgb = np.array([[1, 2, 3, 4]])
    rows = [{"rgb": rgb, "caption": np.array([text + [EOS_ID]])} for text in fit_captions + captions]
    network = HandNetwork(guess=500, confidence=math.log(vocab - 1))
    context = context_for("rgb_to_caption", rows, fit=2, score=4, network=network)
    scores = {s.metric: s for s in get_task("rgb_to_caption").evaluate(context)}
    assert scores["token_accuracy"].value == pytest.approx(4 / 15)
    assert scores["token_accuracy"].baseline == pytest.approx(1 / 15)
    assert scores["perplexity"].value == pytest.approx(2 * (vocab - 1) ** (11 / 15), rel=1e-6)
    assert scores["perplexity"].baseline == pytest.approx(
        11 * 2 ** (-8 / 15) * 4 ** (-1 / 15) * ((vocab - 3) / 3) ** (6 / 15), rel=1e-6)
