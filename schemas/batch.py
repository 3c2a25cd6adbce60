"""The contract between the training loader (pipeline/data) and the model (pipeline/model).

The loader reads token shards, applies 4M's masking per sample and packs the chosen tokens into fixed-shape arrays:
`input_tokens` encoder slots and `target_tokens` decoder slots per sample, whatever mix of modalities the sample
drew. The model never sees a modality's name at run time, only its index in the `ModalityTable` both sides share,
so one compiled graph serves every batch and adding a modality changes no model code.

Batch fields (numpy in the loader, torch tensors in the train loop; B = batch size, I = input budget, T = target
budget; every field is present in every batch):

    enc_tokens    (B, I) int64  token id in its modality's vocabulary (0 in padding slots)
    enc_modality  (B, I) int64  index into the ModalityTable
    enc_position  (B, I) int64  position within the modality: patch index of a grid (row-major) or sequence index
    enc_pad       (B, I) bool   True where the slot is padding (the sample had fewer visible tokens than I)

    dec_input     (B, T) int64  id fed to the decoder: the previous target token for autoregressive modalities;
                                ignored (the model uses its mask embedding) for parallel ones
    dec_target    (B, T) int64  id the decoder must predict
    dec_modality  (B, T) int64
    dec_position  (B, T) int64  position of the target within its modality (grid index, or index in the target run)
    dec_causal    (B, T) bool   True for autoregressive (sequence) targets
    dec_pad       (B, T) bool   True where the slot is padding; padding never contributes to the loss

Beside them the loader's batches carry, for metrics and checks (the model reads neither):

    present       (B, M) bool   True where the sample has tokens of modality m (M = len(ModalityTable)): in a
                                dataset mixture a sample carries only its dataset's modalities, and masking splits
                                its budgets over these alone, so an absent modality has no slot at all
    mask_strategy (B,)  int64   the masking strategy the sample was drawn (index into the masker's
                                `strategy_names`: the config's mixture in order, the plain Dirichlet last)

Decoder self-attention (as 4M): slot i attends slot j iff both belong to the same modality, j is not padding, and,
when i is causal, dec_position[j] <= dec_position[i]. Cross-attention sees every non-padding encoder slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.modalities import Family, get_modality

ENCODER_FIELDS = ("enc_tokens", "enc_modality", "enc_position", "enc_pad")
DECODER_FIELDS = ("dec_input", "dec_target", "dec_modality", "dec_position", "dec_causal", "dec_pad")
BATCH_FIELDS = ENCODER_FIELDS + DECODER_FIELDS
PRESENT = "present"
STRATEGY = "mask_strategy"
LOADER_FIELDS = BATCH_FIELDS + (PRESENT, STRATEGY)  # what the training loader yields
BOOL_FIELDS = frozenset({"enc_pad", "dec_pad", "dec_causal", PRESENT})

GRID_FAMILIES = frozenset({Family.IMAGE_LIKE, Family.FEATURE_MAP})  # 2-D sin-cos positions
AUTOREGRESSIVE_FAMILIES = frozenset({Family.SEQUENCE})  # decoded token by token, as 4M decodes text


@dataclass(frozen=True)
class ModalitySpec:
    """What the model must know of one modality: its vocabulary and the shape of its token row.

    `vocab_size` is the registry's (the contract every tokenizer of the modality fits inside), so checkpoints stay
    compatible when a tokenizer is retrained. `max_tokens` is the row length: exact for grids and global
    embeddings, a bound for sequences. `grid` is (rows, cols) for 2-D modalities, with rows * cols == max_tokens.
    """

    name: str
    family: Family
    vocab_size: int
    max_tokens: int
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.vocab_size <= 0 or self.max_tokens <= 0:
            raise ValueError(f"{self.name}: vocab_size and max_tokens must be positive")
        if (self.family in GRID_FAMILIES) != (self.grid is not None):
            raise ValueError(f"{self.name}: a grid is required for {sorted(f.value for f in GRID_FAMILIES)} "
                             f"and only for them")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.max_tokens:
            raise ValueError(f"{self.name}: grid {self.grid} does not hold {self.max_tokens} tokens")

    @property
    def autoregressive(self) -> bool:
        return self.family in AUTOREGRESSIVE_FAMILIES

    @classmethod
    def from_registry(cls, name: str, tokens: int | None = None, vocab: int | None = None) -> ModalitySpec:
        """The registry's entry, with the row length actually produced (e.g. 8x8 = 64 tokens for 64 px images) and,
        where a run sizes its tables to its tokenizer (`PretrainConfig.vocab_sizes`), that smaller vocabulary."""
        modality = get_modality(name)
        if vocab is not None and not 0 < vocab <= modality.vocab_size:
            raise ValueError(f"{name}: vocabulary {vocab} outside 1..{modality.vocab_size} (the registry's bound)")
        length = tokens if tokens is not None else modality.token_budget
        grid = None
        if modality.family in GRID_FAMILIES:
            side = round(length ** 0.5)
            if side * side != length:
                raise ValueError(f"{name}: {length} tokens do not form a square grid")
            grid = (side, side)
        return cls(modality.name, modality.family, vocab or modality.vocab_size, length, grid)


@dataclass(frozen=True)
class ModalityTable:
    """The ordered modalities of a run; a modality's index here is what batches carry."""

    specs: tuple[ModalitySpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"a modality table needs distinct modalities, got {names}")

    @classmethod
    def of(cls, specs: Iterable[ModalitySpec]) -> ModalityTable:
        return cls(tuple(specs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def index(self, name: str) -> int:
        try:
            return self.names.index(get_modality(name).name)
        except ValueError:
            raise KeyError(f"modality {name!r} is not in this run's table {list(self.names)}") from None

    def __getitem__(self, name: str) -> ModalitySpec:
        return self.specs[self.index(name)]

    def __len__(self) -> int:
        return len(self.specs)

    def to_json(self) -> list[dict]:
        return [{"name": s.name, "tokens": s.max_tokens, "vocab": s.vocab_size} for s in self.specs]

    @classmethod
    def from_json(cls, entries: Sequence[dict]) -> ModalityTable:
        # "vocab" is absent from tables written before runs could size their tables: those used the registry's.
        return cls.of(ModalitySpec.from_registry(e["name"], e["tokens"], e.get("vocab")) for e in entries)
