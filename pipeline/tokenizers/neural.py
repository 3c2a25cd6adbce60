"""What the neural tokenizer families share: an autoencoder with a discrete bottleneck, a codec, safetensors.

A family provides its settings model and `build_network(settings, codec)`; this base does the rest of the
`Tokenizer` interface: arrays -> ids through the codec and the encoder, ids -> arrays through the decoder, and the
payload (`model.safetensors`, the network's state; the architecture and fitted statistics live in tessera.json).
Networks expose `encode_ids(x) -> (N, tokens)`, `decode_ids(ids) -> output`, `forward(x) -> (output, Quantized)`
and their `quantizer`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pipeline.tokenizers.base import Tokenizer, TokenizerConfig
from pipeline.tokenizers.codecs import Codec, Stats, codec_class, read_member
from pipeline.tokenizers.quantizers import QuantizerSettings
from schemas.config import ConfigModel
from schemas.modalities import get_modality

WEIGHTS_FILE = "model.safetensors"
MEMBER_BATCH = 64  # samples per forward pass when tokenizing label-shard members


class NeuralSettings(ConfigModel):
    """Settings every neural family has; a family's own model adds its architecture."""

    modality: str
    quantizer: QuantizerSettings = QuantizerSettings()
    stats: Stats = Field(default_factory=dict)  # the codec's fitted normalisation
    num_classes: int | None = Field(default=None, ge=2, le=256)  # class maps only
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)


class NeuralTokenizer(Tokenizer):
    settings_model: ClassVar[type[NeuralSettings]]
    default_model: ClassVar[dict[str, Any]] = {}  # architecture defaults a family overrides

    def __init__(self, config: TokenizerConfig, network: nn.Module | None = None):
        super().__init__(config)
        self.settings = self.settings_model.model_validate(config.settings)
        self.codec: Codec = codec_class(self.settings.modality)(self.settings.stats, self.settings.num_classes)
        self.network = network if network is not None else self.build_network(self.settings)
        self.network.eval()

    @classmethod
    @abc.abstractmethod
    def build_network(cls, settings: NeuralSettings) -> nn.Module: ...

    @classmethod
    def create(cls, tokenizer_id: str, settings: NeuralSettings) -> NeuralTokenizer:
        """A fresh (untrained) tokenizer; training updates `network` in place, then `save` writes it."""
        config = TokenizerConfig(family=cls.family, tokenizer_id=tokenizer_id,
                                 vocab_size=settings.quantizer.vocab_size, files=(WEIGHTS_FILE,),
                                 settings=settings.model_dump(mode="json"))
        vocab = get_modality(settings.modality).vocab_size
        if config.vocab_size > vocab:
            raise ValueError(f"{tokenizer_id}: {config.vocab_size} codes exceed {settings.modality}'s registry "
                             f"vocabulary of {vocab}")
        return cls(config)

    @property
    def modality(self) -> str:
        return self.settings.modality

    @property
    def tokens_per_sample(self) -> int:
        return self.network.tokens_per_sample

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def read(self, payload: bytes) -> np.ndarray:
        return read_member(self.modality, payload)

    @torch.no_grad()
    def encode(self, batch: Sequence[Any], max_len: int | None = None) -> np.ndarray:
        if not len(batch):
            return np.zeros((0, self.tokens_per_sample), dtype=np.int32)
        self.check_shape(batch[0])
        ids = self.network.encode_ids(self.codec.to_input(batch).to(self.device))
        return ids.cpu().numpy().astype(np.int32)

    @torch.no_grad()
    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[np.ndarray]:
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        if ids.ndim != 2 or ids.shape[1] != self.tokens_per_sample:
            raise ValueError(f"{self.tokenizer_id}: expected ids of shape (N, {self.tokens_per_sample}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{self.tokenizer_id}: ids outside [0, {self.vocab_size})")
        return self.codec.to_arrays(self.network.decode_ids(ids))

    def member_rows(self, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
        """Read each member through the codec and run the encoder, MEMBER_BATCH samples at a time."""
        if self.modality != get_modality(modality).name:
            raise ValueError(f"{self.tokenizer_id} was trained on {self.modality}, not {modality}")
        ids = np.zeros((0, self.tokens_per_sample), dtype=np.int32)
        for start in range(0, len(payloads), MEMBER_BATCH):
            ids = np.concatenate([ids, self.encode([self.read(p) for p in payloads[start:start + MEMBER_BATCH]])])
        return list(ids)

    def check_shape(self, sample: np.ndarray) -> None:
        """Refuse inputs the network was not built for (a wrong resolution would change the token count)."""

    def payload_files(self) -> dict[str, bytes]:
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        return {WEIGHTS_FILE: save_safetensors(state)}

    @classmethod
    def from_payload(cls, config: TokenizerConfig, files: Mapping[str, bytes]) -> NeuralTokenizer:
        tokenizer = cls(config)
        tokenizer.network.load_state_dict(load_safetensors(files[WEIGHTS_FILE]))
        return tokenizer
