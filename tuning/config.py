"""`TrainConfig`: one YAML file per tuning run, validated strictly (unknown keys and bad values name the key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reamo.errors import ConfigError
from reamo.model import LoraSettings, ReamoConfig
from reamo.tuning.captions import CaptionPair
from reamo.tuning.data import EVAL_SPLITS

Trainable = Literal["lora", "projector"]
STAGE_TRAINABLE: dict[int, list[Trainable]] = {1: ["lora"], 2: ["projector"], 3: ["lora", "projector"],
                                               4: ["lora", "projector"]}


class DataConfig(BaseModel):
    """What to train on: counts per builder (0 = none) plus optional prebuilt jsonl files."""

    model_config = ConfigDict(extra="forbid")

    split: str = "train"
    gmner: int = Field(default=0, ge=0)
    gmner_text: int = Field(default=0, ge=0, description="GMNER NER without the image (the text task as scored)")
    mnre: int = Field(default=0, ge=0)
    mnre_pairs: int = Field(default=0, ge=0, description="MNRE relation classification given the entity pair")
    mnre_none_fraction: float = Field(default=0.4, ge=0, le=1, description="share of 'None' pairs in mnre_pairs")
    m2e2: int = Field(default=0, ge=0)
    m2e2_none_fraction: float = Field(
        default=0.3, ge=0, le=1,
        description="share of M2E2 sentences without events (82% of M2E2 train has none; a lower share teaches "
        "the model to write events more often, which `reamo calibrate-events` then corrects)")
    event_decisions: bool = Field(
        default=False, description="M2E2 trigger and argument decisions (reamo.tuning.decisions): every gold trigger "
        "and role of the train split outside the calibration slice, plus the negatives below")
    keep_calibration_out: bool = Field(
        default=False, description="draw no M2E2 sentence of the event calibration slice (m2e2, invocation, speech), "
        "so `reamo calibrate-events` keeps all of its sentences when this recipe is among the kept-out ones")
    trigger_negatives: int = Field(default=0, ge=0, description="trigger candidates that are no trigger ('None')")
    argument_negatives: int = Field(default=0, ge=0, description="entity mentions that play no role in an event")
    mnre_reversed: int = Field(default=0, ge=0, description="MNRE pairs with a relation, asked the other way round")
    invocation: int = Field(default=0, ge=0)
    speech: int = Field(default=0, ge=0)
    photos: bool = False
    caption_pairs: list[CaptionPair] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    root: str | None = None
    speech_cache: str | None = None
    media_root: str | None = None
    shuffle_labels_prob: float = Field(default=0.25, ge=0, le=1)
    subset_labels_prob: float = Field(default=0.25, ge=0, le=1)
    paraphrase_prob: float = Field(default=0.3, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _train_split_only(self) -> "DataConfig":
        if self.split.lower() in EVAL_SPLITS:
            raise ValueError(f"split {self.split!r} is for evaluation only; training uses split: train")
        return self


class TrainConfig(BaseModel):
    """Everything one tuning run needs; see tuning/configs/*.yaml for every key with its meaning and default."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal[1, 2, 3, 4]
    model: str | ReamoConfig = "default"
    lora: LoraSettings | None = Field(default_factory=LoraSettings)
    train: list[Trainable] | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    output_dir: str
    max_steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_seq_len: int = Field(default=512, ge=16)
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 0
    resume: bool = False
    threads: int | None = Field(default=None, ge=1)
    gradient_checkpointing: bool = False
    # batches of similar length (HF LengthGroupedSampler): less padding, but when length follows the task or the
    # target (short tweets often have no entity) batches come in blocks of one kind: keep it off for mixed data
    group_by_length: bool = False
    # batches of one system prompt whose shared start is computed once per batch (same loss, far less compute
    # when the instructions are a large part of each example); off = plain random batches
    share_prefix: bool = True
    bf16: bool = False
    deepspeed: str | None = None
    progress: bool = True

    @model_validator(mode="after")
    def _one_sampler(self) -> "TrainConfig":
        if self.group_by_length and self.share_prefix:
            raise ValueError("group_by_length and share_prefix each choose the batches; set share_prefix: false "
                             "to group by length")
        return self

    @property
    def trainable(self) -> list[Trainable]:
        return list(self.train) if self.train is not None else STAGE_TRAINABLE[self.stage]

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> "TrainConfig":
        """Read a YAML config; `overrides` (e.g. stage=2, resume=True from the CLI) replace top-level keys."""
        source = Path(path).expanduser()
        if not source.is_file():
            raise ConfigError(f"training config not found: {source}; see tuning/configs/ for examples")
        try:
            raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, where=str(source))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "TrainConfig":
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"{where}: " + "; ".join(_explain(e) for e in error.errors())) from error


def _explain(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (check the spelling; tuning/configs/*.yaml list every key)"
    if error["type"] == "missing":
        return f"missing required key {key!r}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"
