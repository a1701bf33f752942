"""A linear classification head on the LLM's hidden state for one decision (which event type, if any, a trigger
candidate triggers; which relation, if any, holds between an entity pair), as transformers'
`*ForSequenceClassification` heads read the last token's state.

Why a head beside rank classification: on M2E2 the tuned 135M model's own answer scores rank trigger candidates
worse (the best dev trigger F1 at any margin is 39) than a multinomial logistic regression fitted on its layer-24
state at the end of the decision prompt's "Events:" (46 at best; 41 at the margin chosen on held-out train
sentences; model card). The head reads the state the LLM computes for the prompt anyway, costs one 576 x 9 matrix,
and is fitted in seconds on the tuning sentences' candidates (`reamo fit-trigger-head`), not trained by gradient
descent through the LLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reamo.errors import ConfigError
from reamo.files import atomic_path, write_atomic

NO_LABEL = "None"


class DecisionHeadConfig(BaseModel):
    """What a head reads (`layer`: the index into transformers' `hidden_states`, 0 = embeddings) and answers
    (`labels`, "None" first), and how it was fitted."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0)
    labels: list[str] = Field(min_length=2)
    hidden_size: int = Field(ge=1)
    answer_start: str = Field(description="the answer start whose last token's state the head reads")
    weight_decay: float = Field(default=0.01, ge=0)
    fitted_on: str = ""
    n_examples: int = 0
    n_positive: int = 0


class DecisionHead(nn.Module):
    """Standardised hidden state -> logits over `config.labels` (multinomial logistic regression)."""

    def __init__(self, config: DecisionHeadConfig) -> None:
        super().__init__()
        if config.labels[0] != NO_LABEL:
            raise ValueError(f"a decision head's first label must be {NO_LABEL!r}, got {config.labels[0]!r}")
        self.config = config
        self.register_buffer("mean", torch.zeros(config.hidden_size))
        self.register_buffer("scale", torch.ones(config.hidden_size))
        self.classifier = nn.Linear(config.hidden_size, len(config.labels))

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
        if states.ndim != 2 or states.shape[0] != targets.shape[0] or states.shape[1] != config.hidden_size:
            raise ValueError(f"states must be [n, {config.hidden_size}] with one target each, got "
                             f"{tuple(states.shape)} and {tuple(targets.shape)}")
        head = cls(config)
        x = states.float()
        head.mean.copy_(x.mean(0))
        head.scale.copy_(x.std(0) + 1e-4)
        x = (x - head.mean) / head.scale
        weight = torch.zeros(config.hidden_size, len(config.labels), requires_grad=True)
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
        if self.config.hidden_size != hidden_size or not 0 <= self.config.layer <= layers:
            raise ConfigError(f"the decision head {name!r} in {where} reads layer {self.config.layer} of width "
                              f"{self.config.hidden_size}, but the model has {layers} layers of width {hidden_size}: "
                              f"it was fitted on another model; refit it with {refit_command(name)}")


def refit_command(name: str) -> str:
    """The command that fits the head saved as `name` ("trigger_head" -> `reamo fit-trigger-head`)."""
    return f"reamo fit-{name.replace('_', '-')}"
