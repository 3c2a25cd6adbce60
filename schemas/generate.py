"""Typed config of the generate job: which checkpoint, which samples, which modalities are given and which are
generated (in order: each generated modality joins the inputs of the next, 4M's chained generation), and how tokens
are sampled. The samples come from `input` (token shards or image files) or from text prompts, which are captions."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from schemas.common import StorageConfig
from schemas.config import ConfigModel
from schemas.modalities import get_modality

PROMPT_MODALITY = "caption"  # a typed prompt is a caption: the modality text->X generation starts from


class SamplingConfig(ConfigModel):
    """How target tokens are drawn. Parallel modalities (grids, vectors, signals) are decoded MaskGIT-style in
    `steps` rounds; sequences token by token until EOS or `max_tokens`."""

    steps: int = Field(default=8, ge=1)  # MaskGIT rounds per parallel target (1: one-pass prediction)
    temperature: float = Field(default=1.0, ge=0)  # 0: argmax
    top_k: int = Field(default=0, ge=0)  # sample among the k likeliest tokens; 0: the whole vocabulary
    max_tokens: int | None = Field(default=None, ge=3)  # bound of a generated sequence's run; None: the model's


class GenerateConfig(ConfigModel):
    """python -m jobs.generate: condition on `from_modalities` of each sample, generate `to_modalities` in order,
    decode everything through its tokenizer into files a person opens, plus a contact sheet."""

    checkpoint: str = ""  # an export (x.safetensors with x.json beside it) or a checkpoint directory, local or s3://
    # A preprocess output (token shards + manifest), or image files: one path, a folder of images or a
    # comma-separated list (then the single input modality's tokenizer encodes them).
    input: str = ""
    # Or text prompts, each one sample's caption, encoded by the caption tokenizer as preprocess encodes captions.
    # A prompt longer than the caption's token bound is refused, not cut: the model would see other text than the
    # one the sheet shows. `prompt_file`: a local text file, one prompt a line (blank lines skipped).
    prompts: tuple[str, ...] = ()
    prompt_file: str = ""
    from_modalities: tuple[str, ...] = ()  # every field has a default, so that a recipe file states only its own
    to_modalities: tuple[str, ...] = ()  # choices; the job refuses to run without checkpoint, input, from and to
    sampling: SamplingConfig = SamplingConfig()
    samples: int = Field(default=4, ge=1)  # how many samples of the input to generate for (prompts: one each)
    # Token shards: take samples whose key falls in this hash holdout (schemas.keys.in_holdout, the split
    # pretraining validates on at a smaller fraction); 0 takes the first samples in manifest order.
    holdout_fraction: float = Field(default=0.0, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=8, ge=1)  # samples per model call
    device: Literal["cpu", "cuda"] = "cpu"
    out: str = "generate_out"
    tokenizers: dict[str, str] = Field(default_factory=dict)  # modality -> tokenizer dir, local or s3://
    storage: StorageConfig = StorageConfig()

    @pydantic.field_validator("from_modalities", "to_modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        try:
            canonical = tuple(get_modality(name).name for name in names)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"a modality is named twice: {list(names)}")
        return canonical

    @pydantic.field_validator("tokenizers")
    @classmethod
    def _tokenizer_keys(cls, tokenizers: dict[str, str]) -> dict[str, str]:
        try:
            return {get_modality(name).name: path for name, path in tokenizers.items()}
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None

    @pydantic.field_validator("prompts")
    @classmethod
    def _prompts(cls, prompts: tuple[str, ...]) -> tuple[str, ...]:
        empty = [str(i + 1) for i, prompt in enumerate(prompts) if not prompt.strip()]
        if empty:
            raise ValueError(f"prompt {', '.join(empty)} of {len(prompts)} is empty")
        return tuple(prompt.strip() for prompt in prompts)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _prompts_give_the_caption(cls, data: object) -> object:
        """Prompts are captions: `--from` may be left out."""
        prompted = isinstance(data, dict) and (data.get("prompts") or data.get("prompt_file"))
        if prompted and not data.get("from_modalities"):
            return {**data, "from_modalities": (PROMPT_MODALITY,)}
        return data

    @property
    def prompted(self) -> bool:
        return bool(self.prompts or self.prompt_file)

    def missing(self) -> list[str]:
        """The settings a run needs that are not given (flags named as the job spells them)."""
        given = {"--checkpoint": self.checkpoint, "--input (or --prompt)": self.input or self.prompted,
                 "--from": self.from_modalities, "--to": self.to_modalities}
        return [flag for flag, value in given.items() if not value]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        """Settings that contradict each other fail here, before anything is read."""
        shared = sorted(set(self.from_modalities) & set(self.to_modalities))
        if shared:
            raise ValueError(f"{shared} both given (--from) and generated (--to): a modality is one or the other")
        if not self.prompted:
            return self
        if self.input:
            raise ValueError(f"input {self.input!r} and prompts both given: a run starts from one kind of input")
        if self.from_modalities != (PROMPT_MODALITY,):
            raise ValueError(f"a prompt gives the {PROMPT_MODALITY} alone; --from names {list(self.from_modalities)}")
        unread = sorted({"samples", "holdout_fraction"} & self.model_fields_set)
        if unread:
            raise ValueError(f"{unread} choose samples of --input; with prompts, each prompt is one sample")
        return self
