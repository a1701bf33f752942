"""Fitting a decision head (`reamo.model.decision_heads`) on a tuned model's hidden states: `reamo fit-trigger-head`.

The trigger head is fitted on the M2E2 train sentences the event decisions are tuned on (`m2e2_for_decisions`,
never the calibration slice or dev): every trigger candidate the agent would ask about, asked exactly as the agent
asks it, labelled with the event type of the gold trigger it is (exact span) or "None". Its "None" margin is then
calibrated like rank classification's, with `reamo calibrate-events` on the held-out slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from reamo.candidates import tag
from reamo.datasets import M2E2_ENTITY_TYPES, M2E2_EVENT_TYPES, Example
from reamo.decisions import trigger_items
from reamo.model.decision_heads import NO_LABEL, DecisionHead, DecisionHeadConfig
from reamo.schema import Labels

if TYPE_CHECKING:
    from reamo.agent import Agent

logger = logging.getLogger(__name__)

TRIGGER_ANSWER_START = "Events:"
DEFAULT_TRIGGER_LAYER = 24  # of SmolLM2-135M's 30: chosen by held-out log-loss among layers 12-30 (model card)
DEFAULT_WEIGHT_DECAY = 0.01


def trigger_states(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str], layer: int,
                   batch_size: int = 32) -> tuple[torch.Tensor, list[str | None]]:
    """The hidden state at the answer start of every trigger candidate's decision prompt in `examples`, and the
    event type of the gold trigger with the candidate's exact span (None when it is no trigger)."""
    labels = Labels(entity_types=list(M2E2_ENTITY_TYPES), event_types=list(event_types))
    states: list[torch.Tensor] = []
    targets: list[str | None] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="trigger head states", disable=None):
        chunk = examples[start:start + batch_size]
        requests = [agent.prepare(e.text, tasks=("ee",), labels=labels) for e in chunk]
        windows = [(example, request, segment.window) for example, request in zip(chunk, requests, strict=True)
                   for segment in request.text_segments]
        items = []
        for (example, request, window), words in zip(windows, tag([w.text for _, _, w in windows]), strict=True):
            gold = {(e.trigger.span.start, e.trigger.span.end): e.type for e in example.gold.events if e.trigger.span}
            for candidate, item in trigger_items(agent, request, window, words, agent.trigger_lexicon,
                                                 [TRIGGER_ANSWER_START]):
                assert candidate.span is not None
                items.append(item)
                targets.append(gold.get((candidate.span.start + window.start, candidate.span.end + window.start)))
        if items:
            states.append(agent.model.answer_start_states(items, layer))
    hidden = agent.model.llm.config.get_text_config().hidden_size
    return (torch.cat(states) if states else torch.zeros(0, hidden)), targets


def fit_trigger_head(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str] = M2E2_EVENT_TYPES,
                     layer: int = DEFAULT_TRIGGER_LAYER, weight_decay: float = DEFAULT_WEIGHT_DECAY,
                     source: str = "") -> DecisionHead:
    """A trigger head for `agent`'s model, fitted on the candidates of `examples` (see `trigger_states`)."""
    states, targets = trigger_states(agent, examples, event_types, layer)
    positives = sum(t is not None for t in targets)
    if not positives or positives == len(targets):
        raise ValueError(f"fitting a trigger head needs candidates that are triggers and candidates that are not; "
                         f"got {positives} of {len(targets)} from {len(examples)} sentences: give more sentences")
    labels = [NO_LABEL, *event_types]
    config = DecisionHeadConfig(layer=layer, labels=labels, hidden_size=states.shape[1],
                                answer_start=TRIGGER_ANSWER_START, weight_decay=weight_decay, fitted_on=source,
                                n_examples=len(targets), n_positive=positives)
    head = DecisionHead.fit(states, torch.tensor([labels.index(t) if t else 0 for t in targets]), config)
    logger.info("trigger head fitted on %d candidates (%d triggers) of %d sentences, layer %d", len(targets),
                positives, len(examples), layer)
    return head
