"""Train the shared WordPiece vocabulary of the text-like modalities on label shards (no Ray: one pass over text).

4M-21 gives captions, metadata, palettes and other serialized labels one vocabulary, so one run serves every
text-like modality; the job is `python -m jobs.train_tokenizer --modality caption` like the neural families.
The output directory also holds `tokenizer_ml4m.json`, the file to give apple/ml-4m (`--text_tokenizer_path`):
the same vocabulary without the [EOS] that Tessera's encode appends and ml-4m's masking appends again.
"""

from __future__ import annotations

from pipeline.data.inspect import iter_members
from pipeline.data.storage import Storage
from pipeline.tokenizers import train_wordpiece
from pipeline.tokenizers.text import ML4M_TOKENIZER_FILE
from schemas.config import ConfigError
from schemas.modalities import SHARED_TEXT_VOCAB
from schemas.train_tokenizer import TrainTokenizerConfig


def run_train_wordpiece(config: TrainTokenizerConfig) -> dict:
    """Train on every `config.modality` member of the label shards at `config.input`; write to `config.output`.

    `model.vocab_size` (default: the registry's shared vocabulary size) counts every id; a small corpus stops below.
    """
    extra = set(config.model.settings()) - {"vocab_size", "min_frequency"}
    if extra:
        raise ConfigError("the wordpiece family takes model.vocab_size and model.min_frequency; "
                          f"unknown: {sorted(extra)}")
    labels = Storage(config.input, config.storage)
    texts = [payload.decode("utf-8") for _, payload in iter_members(labels, config.modality)]
    if not texts:
        raise ValueError(f"{labels.uri()} holds no {config.modality!r} members to train a vocabulary on")
    model = config.model
    tokenizer = train_wordpiece(texts, vocab_size=model.vocab_size or SHARED_TEXT_VOCAB,
                                min_frequency=2 if model.min_frequency is None else model.min_frequency)
    # The default is where preprocess looks the bare name up (`tokenizers={caption: wordpiece}`).
    out = Storage(config.output or "tokenizers/wordpiece", config.storage)
    for name, data in tokenizer.files().items():
        out.write_atomic(name, data)
    print(f"trained {tokenizer.tokenizer_id} ({tokenizer.vocab_size} ids, hash {tokenizer.content_hash[:12]}) on "
          f"{len(texts)} {config.modality} texts -> {out.uri()} (for ml-4m: {ML4M_TOKENIZER_FILE})", flush=True)
    return {"output": out.uri(), "tokenizer": tokenizer}
