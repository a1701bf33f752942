"""A linear classification head on the LLM's hidden states for one decision (which event type, if any, a trigger
candidate triggers; which relation, if any, holds between an entity pair), as transformers'
`*ForSequenceClassification` heads read the last token's state.

Why a head beside rank classification: on M2E2 the tuned 135M model's own answer scores rank trigger candidates
worse (the best dev trigger F1 at any margin is 39) than a multinomial logistic regression fitted on its layer-24
state at the end of the decision prompt's "Events:" (45 at best). A head may read several states (`StateRead`):
other layers, and the question's end, the candidate word's last token, whose state has read the whole text before
it (the trigger head reads five: 48 at best; model card). The states are ones the LLM computes for the prompt
anyway; the head costs one matrix and is fitted in seconds on the tuning sentences' candidates
(`reamo fit-trigger-head`), not trained by gradient descent through the LLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reamo.errors import ConfigError
from reamo.files import atomic_path, write_atomic

NO_LABEL = "None"


StatePosition = Literal["answer_start", "question_end"]


class StateRead(BaseModel):
    """One hidden state a head reads: `layer` (the index into transformers' `hidden_states`, 0 = embeddings) at
    `at`: the answer start's last token, or the last token of the user turn ("question_end": the question's
    candidate, e.g. the trigger word, whose state has read the whole text before it)."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0)
    at: StatePosition = "answer_start"


def as_reads(reads: int | Sequence[StateRead]) -> list[StateRead]:
    """A head's reads from one layer (read at the answer start, as every head saved before there were reads) or a
    sequence of reads."""
    return [StateRead(layer=reads)] if isinstance(reads, int) else list(reads)


class MarginChoice(BaseModel):
    """A "something or None?" margin and what it scores on the candidates it was chosen or checked on."""

    model_config = ConfigDict(extra="forbid")

    bias: float
    f1: float
    precision: float
    recall: float
    n_gold: int
    n_candidates: int


class OutOfFoldMargin(MarginChoice):
    """The "None" margin chosen at fit time for the best F1 of the fit's own candidates, each scored by a head
    fitted without its sentence's fold: thousands of gold answers where a held-out slice may have twenty. Held to a
    bound on invented answers where one is given: among the margins that keep it, the best F1."""

    folds: int
    # the bound on invented events it was held to (None: F1 alone chose it) and what it gives out of fold: the share
    # of the fit's event-free sentences given any answer above the margin
    max_invented: float | None = None
    invented: float | None = None
    n_event_free: int | None = None


class DecisionHeadConfig(BaseModel):
    """What a head reads (`reads`, concatenated in order; a head saved before there were several reads has only
    `layer`, read at the answer start) and answers (`labels`, "None" first), and how it was fitted."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0, description="the first read's layer")
    reads: list[StateRead] = Field(default_factory=list)
    labels: list[str] = Field(min_length=2)
    hidden_size: int = Field(ge=1, description="the LLM's width: the head reads hidden_size x len(reads) numbers")
    answer_start: str = Field(description="the answer start whose last token's state the head reads")
    weight_decay: float = Field(default=0.01, ge=0)
    fitted_on: str = ""
    n_examples: int = 0
    n_positive: int = 0
    out_of_fold: OutOfFoldMargin | None = None

    @model_validator(mode="after")
    def _one_read_at_least(self) -> "DecisionHeadConfig":
        if not self.reads:
            self.reads = [StateRead(layer=self.layer)]
        self.layer = self.reads[0].layer
        return self

    @property
    def input_size(self) -> int:
        return self.hidden_size * len(self.reads)

    def describe_reads(self) -> str:
        """e.g. "layers 20, 24, 28 at the answer start + 20, 24 at the question's end"."""
        parts = []
        for at, name in (("answer_start", "at the answer start"), ("question_end", "at the question's end")):
            layers = [str(r.layer) for r in self.reads if r.at == at]
            if layers:
                parts.append(f"{'layer' if len(layers) == 1 else 'layers'} {', '.join(layers)} {name}")
        return " + ".join(parts)


class DecisionHead(nn.Module):
    """Standardised hidden state -> logits over `config.labels` (multinomial logistic regression)."""

    def __init__(self, config: DecisionHeadConfig) -> None:
        super().__init__()
        if config.labels[0] != NO_LABEL:
            raise ValueError(f"a decision head's first label must be {NO_LABEL!r}, got {config.labels[0]!r}")
        self.config = config
        self.register_buffer("mean", torch.zeros(config.input_size))
        self.register_buffer("scale", torch.ones(config.input_size))
        self.classifier = nn.Linear(config.input_size, len(config.labels))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        states = states.to(self.mean.dtype)
        return self.classifier((states - self.mean) / self.scale)

    def covers(self, labels: Sequence[str]) -> bool:
        """Whether the head can answer a decision among `labels` (each one it was fitted on)."""
        known = {label.casefold() for label in self.config.labels[1:]}
        return bool(labels) and all(label.casefold() in known for label in labels)

    @torch.no_grad()
    def best_over_none(self, states: torch.Tensor, labels: Sequence[str]) -> list[tuple[int, float]]:
        """For each state: the index into `labels` of the most likely one and its log-probability margin over
        "None", the softmax taken over "None" and `labels` only (a request may ask for fewer types)."""
        index = {label.casefold(): i for i, label in enumerate(self.config.labels)}
        columns = torch.tensor([0] + [index[label.casefold()] for label in labels])
        logprobs = self.forward(states)[:, columns].float().log_softmax(-1)
        best = logprobs[:, 1:].argmax(-1)
        margins = logprobs[:, 1:].max(-1).values - logprobs[:, 0]
        return list(zip(best.tolist(), margins.tolist(), strict=True))

    @classmethod
    def fit(cls, states: torch.Tensor, targets: torch.Tensor, config: DecisionHeadConfig,
            max_iter: int = 200) -> "DecisionHead":
        """Maximum likelihood with an L2 penalty (`config.weight_decay` x squared weights) on standardised states,
        by L-BFGS: a convex problem, so the result does not depend on a seed or a learning rate."""
        if states.ndim != 2 or states.shape[0] != targets.shape[0] or states.shape[1] != config.input_size:
            raise ValueError(f"states must be [n, {config.input_size}] with one target each, got "
                             f"{tuple(states.shape)} and {tuple(targets.shape)}")
        head = cls(config)
        x = states.float()
        head.mean.copy_(x.mean(0))
        head.scale.copy_(x.std(0) + 1e-4)
        x = (x - head.mean) / head.scale
        weight = torch.zeros(config.input_size, len(config.labels), requires_grad=True)
        bias = torch.zeros(len(config.labels), requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = nn.functional.cross_entropy(x @ weight + bias, targets) + config.weight_decay * weight.pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(loss)
        with torch.no_grad():
            head.classifier.weight.copy_(weight.detach().T)
            head.classifier.bias.copy_(bias.detach())
        return head.requires_grad_(False).eval()

    def save(self, folder: str | os.PathLike[str], name: str) -> None:
        """`name`.safetensors (the tensors) and `name`.json (the config), each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{name}.safetensors") as staging:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(staging))
        write_atomic(folder / f"{name}.json", self.config.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike[str], name: str) -> "DecisionHead | None":
        """The head saved as `name` in `folder`, or None when there is none."""
        folder = Path(folder)
        weights, config_file = folder / f"{name}.safetensors", folder / f"{name}.json"
        if not weights.is_file() or not config_file.is_file():
            return None
        try:
            head = cls(DecisionHeadConfig.model_validate(json.loads(config_file.read_text(encoding="utf-8"))))
            head.load_state_dict(load_file(str(weights)))
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # bad JSON, config, file or shapes
            raise ConfigError(f"the decision head {name!r} in {folder} cannot be loaded ({error}); refit it "
                              f"({refit_command(name)} {folder}) or remove {weights.name} and {config_file.name}"
                              ) from error
        return head.requires_grad_(False).eval()

    def check_fits(self, hidden_size: int, layers: int, where: str, name: str = "trigger_head") -> None:
        """A ConfigError unless the head reads a state this model has (a head fitted on another model would fail
        at the first request, or silently read the wrong layer)."""
        deepest = max(read.layer for read in self.config.reads)
        if self.config.hidden_size != hidden_size or deepest > layers:
            raise ConfigError(f"the decision head {name!r} in {where} reads layer {deepest} of width "
                              f"{self.config.hidden_size}, but the model has {layers} layers of width {hidden_size}: "
                              f"it was fitted on another model; refit it with {refit_command(name)}")


def refit_command(name: str) -> str:
    """The command that fits the head saved as `name` ("trigger_head" -> `reamo fit-trigger-head`)."""
    return f"reamo fit-{name.replace('_', '-')}"
