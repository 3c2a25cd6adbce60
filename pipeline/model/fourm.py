"""The any-to-any masked encoder-decoder (4M): packed batches of `schemas/batch.py` in, per-modality losses out.

The encoder reads the visible input tokens of every modality; the decoder predicts the target tokens, each slot
attending only to slots of its own modality (causally for sequences) and cross-attending to the whole encoder.
Modalities are indices into the run's `ModalityTable`: token ids are shifted into one shared embedding table by
per-modality offsets, and positions into one fixed sin-cos table (2-D for grids, 1-D otherwise), so the forward
never branches on a modality. No Ray or DeepSpeed here: distribution is the train loop's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.model.kv_cache import DecoderCache, LayerCache
from pipeline.model.layers import Block, sincos_1d, sincos_2d
from pipeline.model.sizes import Dims, resolve
from schemas.batch import BATCH_FIELDS, DECODER_FIELDS, ENCODER_FIELDS, ModalityTable
from schemas.model import ModelConfig


@dataclass
class ModelOutput:
    loss: torch.Tensor  # mean over the modalities present of each one's mean cross-entropy
    losses: dict[str, torch.Tensor]  # per modality present in the batch's targets
    logits: dict[str, torch.Tensor] | None = None  # per modality: (slots, vocab), slots in row-major batch order


class Embeddings(nn.Module):
    """Token + modality + position embeddings of encoder slots and decoder queries.

    One token table holds every modality's vocabulary at a per-modality offset, and one fixed table every
    modality's sin-cos positions, so a slot's embedding is three gathers whatever modality it holds.
    """

    def __init__(self, table: ModalityTable, dim: int):
        super().__init__()
        vocab = [s.vocab_size for s in table.specs]
        self.register_buffer("token_offset", torch.tensor([0, *vocab[:-1]]).cumsum(0), persistent=False)
        lengths = [s.max_tokens for s in table.specs]
        self.register_buffer("position_offset", torch.tensor([0, *lengths[:-1]]).cumsum(0), persistent=False)
        self.register_buffer("last_position", torch.tensor(lengths) - 1, persistent=False)
        positions = [sincos_2d(*s.grid, dim) if s.grid else sincos_1d(s.max_tokens, dim) for s in table.specs]
        self.register_buffer("positions", torch.cat(positions), persistent=False)
        self.tokens = nn.Embedding(sum(vocab), dim)
        self.modality = nn.Embedding(len(table), dim)
        self.mask = nn.Parameter(torch.zeros(dim))  # the input of every parallel decoder query

    def forward(self, tokens: torch.Tensor, modality: torch.Tensor, position: torch.Tensor,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        """`masked` (decoder): True where the slot is a parallel query that gets the mask embedding, not a token."""
        x = self.tokens(tokens + self.token_offset[modality])
        if masked is not None:
            x = torch.where(masked.unsqueeze(-1), self.mask.to(x.dtype), x)
        # A sequence's target run (sentinels + spans + EOS) can outgrow the row's bound by a few slots; clamping
        # keeps those on the modality's last position instead of reading the next modality's table (no host sync).
        position = torch.minimum(position, self.last_position[modality]) + self.position_offset[modality]
        return x + self.modality(modality) + self.positions[position].to(x.dtype)


class FourM(nn.Module):
    """Embeddings -> encoder blocks over the input slots -> decoder blocks over the target slots (self-attention by
    the contract's rule, cross-attention to every live encoder slot) -> one linear head per modality.

    `forward(batch)` gives the loss; `encode(batch)` the encoder features for probes; `start_decoding` and
    `decode_step` decode a sequence slot by slot with a key/value cache (pipeline/model/kv_cache.py). Every
    parameter is used only in the forward of the module that owns it, as DeepSpeed ZeRO-3's per-module gathering
    requires (the cached path too: it calls the same Linear, norm and embedding modules).
    """

    def __init__(self, config: ModelConfig, table: ModalityTable):
        super().__init__()
        self.config, self.table, self.dims = config, table, resolve(config)
        dims: Dims = self.dims
        self.embed = Embeddings(table, dims.dim)
        self.encoder = nn.ModuleList(Block(dims.dim, dims.heads, dims.mlp_hidden, config.norm_eps)
                                     for _ in range(dims.encoder_depth))
        self.encoder_norm = nn.RMSNorm(dims.dim, eps=config.norm_eps)
        self.decoder = nn.ModuleList(Block(dims.dim, dims.heads, dims.mlp_hidden, config.norm_eps, cross=True)
                                     for _ in range(dims.decoder_depth))
        self.decoder_norm = nn.RMSNorm(dims.dim, eps=config.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(dims.dim, s.vocab_size, bias=False) for s in table.specs)
        self.apply(_init)

    # --- encoder -----------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, I, D) after the final norm, pad (B, I)); reads only the enc_* fields (eval probes use it)."""
        pad = batch["enc_pad"]
        x = self.embed(batch["enc_tokens"], batch["enc_modality"], batch["enc_position"])
        mask = _key_mask(pad)
        for block in self.encoder:
            x = self._run(block, x, mask)
        return self.encoder_norm(x), pad

    # --- decoder -----------------------------------------------------------------------------------------------
    def decode(self, batch: dict[str, torch.Tensor], memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        """(B, T, D) decoder features after the final norm, before the per-modality heads."""
        causal = batch["dec_causal"]
        x = self.embed(batch["dec_input"], batch["dec_modality"], batch["dec_position"], masked=~causal)
        mask = decoder_mask(batch["dec_modality"], batch["dec_position"], causal, batch["dec_pad"])
        context_mask = _key_mask(memory_pad)
        for block in self.decoder:
            x = self._run(block, x, mask, memory, context_mask)
        return self.decoder_norm(x)

    def forward(self, batch: dict[str, torch.Tensor], return_logits: bool = False) -> ModelOutput:
        _check_shapes(batch)
        memory, memory_pad = self.encode(batch)
        hidden = self.decode(batch, memory, memory_pad)
        live = ~batch["dec_pad"]
        # One host sync for the whole batch: which modalities have target slots.
        counts = torch.bincount(batch["dec_modality"][live], minlength=len(self.table)).tolist()
        if not any(counts):
            raise ValueError("the batch has no target slots: nothing to predict")
        # Every head runs on every batch, on zero rows where the batch has none of its targets, and its term enters
        # the loss at the same place: the backward graph then has the same shape on every rank whatever modalities
        # each rank's batch holds, so gradients become ready in the same order everywhere. ZeRO-3 reduces its
        # gradient buckets in that order; an unused head whose term joined the loss elsewhere made ranks disagree
        # ("Received data size doesn't match expected size", S at batch 1, BENCHMARKS.md).
        losses, logits, terms = {}, {}, []
        for index, (spec, head) in enumerate(zip(self.table.specs, self.heads)):
            selected = live & (batch["dec_modality"] == index)
            out = head(hidden[selected])
            if counts[index]:
                losses[spec.name] = F.cross_entropy(out.float(), batch["dec_target"][selected])
                terms.append(losses[spec.name])
                if return_logits:
                    logits[spec.name] = out
            else:
                terms.append(out.float().sum())  # exactly zero: no rows
        # The mean over the modalities present; absent ones add their zero term.
        weights = torch.tensor([1.0 / len(losses) if c else 1.0 for c in counts], device=hidden.device)
        loss = (torch.stack(terms) * weights).sum()
        return ModelOutput(loss, losses, logits if return_logits else None)

    # --- incremental decoding (generation only; training never builds a cache) -----------------------------------
    @torch.no_grad()
    def start_decoding(self, memory: torch.Tensor, memory_pad: torch.Tensor, capacity: int) -> DecoderCache:
        """An empty cache for decoding one causal run of at most `capacity` slots against `encode`'s output; each
        block's cross-attention keys/values of the memory are computed here, once."""
        layers = [LayerCache(*block.cross_attn.keys_values(block.norm_context(memory)), capacity)
                  for block in self.decoder]
        return DecoderCache(layers, _key_mask(memory_pad), capacity)

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, modality: torch.Tensor, position: torch.Tensor,
                    cache: DecoderCache) -> torch.Tensor:
        """(B, n, D) features after the final norm of `n` new causal slots (fed ids, modality and position, each
        (B, n)) appended to the run in `cache`: what `decode` gives those slots over the whole run so far."""
        x = self.embed(tokens, modality, position)  # causal slots are fed their ids, never the mask embedding
        mask = cache.reserve(tokens.shape[1])
        for block, layer in zip(self.decoder, cache.layers):
            x = block.decode_step(x, mask, layer, cache.length, cache.memory_mask)
        cache.length += tokens.shape[1]
        return self.decoder_norm(x)

    def _run(self, block: Block, *args) -> torch.Tensor:
        if self.config.activation_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)


def decoder_mask(modality: torch.Tensor, position: torch.Tensor, causal: torch.Tensor,
                 pad: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean: slot i sees slot j iff same modality, j not padding, and j <= i in position when i is
    causal (schemas/batch.py). The diagonal is always open so that padding rows stay finite."""
    same = modality[:, :, None] == modality[:, None, :]
    ordered = ~causal[:, :, None] | (position[:, None, :] <= position[:, :, None])
    mask = same & ordered & ~pad[:, None, :]
    mask |= torch.eye(modality.shape[1], dtype=torch.bool, device=modality.device)
    return mask[:, None]


def _key_mask(pad: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, K) keys that may be attended; an all-padding sample keeps its first slot so softmax stays finite."""
    keys = ~pad
    keys[:, 0] |= ~keys.any(dim=1)
    return keys[:, None, None, :]


def _check_shapes(batch: dict[str, torch.Tensor]) -> None:
    """Fail early, with the field's name, on a batch that breaks schemas/batch.py (shapes only: no host sync)."""
    missing = [name for name in BATCH_FIELDS if name not in batch]
    if missing:
        raise KeyError(f"batch lacks fields {missing} (schemas/batch.py)")
    for fields in (ENCODER_FIELDS, DECODER_FIELDS):
        shapes = {name: tuple(batch[name].shape) for name in fields}
        if len(set(shapes.values())) != 1 or len(shapes[fields[0]]) != 2:
            raise ValueError(f"batch fields must share one (B, slots) shape: {shapes}")


def _init(module: nn.Module) -> None:
    """nanoGPT/4M scale: truncated normal, std 0.02, for every matrix, embedding and the mask embedding."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, Embeddings):
        nn.init.trunc_normal_(module.mask, std=0.02)


def build_model(config: ModelConfig, table: ModalityTable) -> FourM:
    """The model of `config`'s size over the run's modality table (buffers and parameters on the current device)."""
    return FourM(config, table)
