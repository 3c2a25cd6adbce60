"""The key/value cache of incremental decoding: generation only, never built by the training forward.

Decoding a sequence token by token asks the decoder, at every step, for the features of one new slot of a causal
run. Without a cache each step reruns every decoder block over the whole run and re-projects the encoder memory in
every cross-attention; with it, each block keeps the self-attention keys and values of the slots already decoded
(they cannot change: a causal slot sees only earlier ones) and the cross-attention keys and values of the memory
(computed once), so a step costs one slot. `FourM.start_decoding` builds the cache, `FourM.decode_step` extends it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LayerCache:
    """One decoder block's attention inputs: self-attention keys/values of the run's slots so far, preallocated to
    `capacity` slots and written in slot order, and the cross-attention keys/values of the memory, fixed."""

    def __init__(self, cross_k: torch.Tensor, cross_v: torch.Tensor, capacity: int):
        batch, heads, _, head_dim = cross_k.shape
        self.cross_k, self.cross_v = cross_k, cross_v
        self.k = cross_k.new_zeros(batch, heads, capacity, head_dim)
        self.v = cross_v.new_zeros(batch, heads, capacity, head_dim)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new slots' (B, heads, n, head_dim) keys/values at `start`; give those of slots [0, start + n)."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class DecoderCache:
    """What incremental decoding keeps between steps, for one causal run of one modality per sample.

    Slot order is position order (as in a sequence's target run), so a new slot sees every cached one and, within
    one step, the new slots before it; the caller gives each slot's position explicitly.
    """

    layers: list[LayerCache]  # one per decoder block
    memory_mask: torch.Tensor  # (B, 1, 1, I): the encoder slots cross-attention may see
    capacity: int  # slots the run may hold
    length: int = 0  # slots cached so far: where the next step's slots go

    def reserve(self, new: int) -> torch.Tensor | None:
        """The self-attention mask of `new` slots appended at `length`: None (see everything) for one slot, else
        (new, length + new), True where slot i may see slot j (j <= length + i)."""
        if self.length + new > self.capacity:
            raise ValueError(f"the decoder cache holds {self.capacity} slots: cannot add {new} to {self.length}")
        if new == 1:
            return None
        device = self.memory_mask.device
        return torch.ones(new, self.length + new, dtype=torch.bool, device=device).tril(self.length)
