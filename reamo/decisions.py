"""Decisions made by scoring offered answers instead of trusting free generation (rank classification, as in the
MQA / QA4RE line of work): the LLM's log-likelihood of writing each candidate answer, and a calibrated margin over
"None" that an answer must beat. Every scored item carries its margin (`score`) so a user sees how sure it was.

All candidates of all requests of a batch are scored in one `ReamoModel.score_continuations` call, which computes
the prompts' shared system turn once (prefix cache) and every shared answer start once (token tree).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reamo.model.shared_prefix import ScoringItem
from reamo.protocol import format_relation
from reamo.schema import Problem, Result

if TYPE_CHECKING:
    from reamo.agent import Agent
    from reamo.pipeline import PreparedRequest

_EVENTS_LINE = re.compile(r"^[ \t]*Events[ \t]*:", re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# Relations of given pairs
# ---------------------------------------------------------------------------------------------------------------


def pair_items(agent: "Agent", request: "PreparedRequest", pairs: Sequence[tuple[str, str]]) -> list[ScoringItem]:
    """One scoring item per pair: "None" first, then every offered relation, each written as the model was tuned
    to answer a given pair."""
    from reamo.pipeline import pair_prompt

    end = agent.model.tokenizer.eos_token or ""
    items = []
    for head, tail in pairs:
        segment = pair_prompt(agent, request, (head, tail))
        answers = [f"Relations: None{end}"] + [f"Relations: {format_relation(head, relation, tail)}{end}"
                                                for relation in request.labels.relation_types]
        items.append(ScoringItem(prompt=segment.prompt, prefix=segment.prefix, continuations=answers,
                                 media=request.features))
    return items


def best_relations(agent: "Agent", requests: Sequence["PreparedRequest"]
                   ) -> list[list[tuple[str, float]]]:
    """For each request and each of its pairs: the offered relation the model finds most likely and its
    log-likelihood margin over "None" (what `pair_none_bias` thresholds and `reamo calibrate-pairs` calibrates)."""
    items: list[ScoringItem] = []
    for request in requests:
        items.extend(pair_items(agent, request, request.pairs))
    scores = iter(agent.model.score_continuations(items))
    out = []
    for request in requests:
        types = list(request.labels.relation_types)
        chosen = []
        for _ in request.pairs:
            row = next(scores)
            best = max(range(len(types)), key=lambda i: row[i + 1])
            chosen.append((types[best], row[best + 1] - row[0]))
        out.append(chosen)
    return out


def classify_given_pairs(agent: "Agent", requests: Sequence["PreparedRequest"]) -> list[tuple[str, dict]]:
    """Given pairs: the best relation of each pair is answered when it beats "None" by more than
    `pair_none_bias`. Returns per request its answer in the protocol and the margin of each answered relation.

    Scoring every label instead of decoding greedily turns the LLM into a calibrated classifier: a small tuned
    model's first token leans to "None" (the most common answer), and greedy decoding turns that lean into "never a
    relation"; the margin is chosen on held-out train pairs.
    """
    bias = agent.settings.pair_none_bias
    assert bias is not None
    out = []
    for request, decided in zip(requests, best_relations(agent, requests), strict=True):
        chosen, margins = [], {}
        for (head, tail), (relation, margin) in zip(request.pairs, decided, strict=True):
            if margin > bias:
                chosen.append(format_relation(head, relation, tail))
                margins[(head, relation, tail)] = margin
        out.append((f"Relations: {''.join(chosen) or 'None'}", margins))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Events written by the model
# ---------------------------------------------------------------------------------------------------------------


def event_margin_item(prompt: str, prefix: str, raw: str, media: dict | None) -> ScoringItem | None:
    """The scoring item behind `event_none_bias`: after the prompt and what the model wrote before its Events
    line, starting that line with an event ("[") vs with "None"; None when it wrote no events."""
    header = _EVENTS_LINE.search(raw)
    if header is None or raw[header.end():].lstrip().lower().startswith("none"):
        return None
    return ScoringItem(prompt=prompt + raw[: header.start()], prefix=prefix,
                       continuations=["Events: [", "Events: None"], media=media)


def decide_events(agent: "Agent", batch: Sequence[tuple["PreparedRequest", Result, list[str]]]) -> None:
    """Drops the events of each window whose event margin is not above `event_none_bias` (reported as a
    problem, so the raw output and the decision stay visible); keeps the margin on the events it keeps.

    Greedy decoding follows the tuning mix's share of sentences with events; the margin restores the real share
    (most news sentences have no event).
    """
    bias = agent.settings.event_none_bias
    if bias is None:
        return
    items: list[ScoringItem] = []
    owners: list[tuple[Result, int | None]] = []
    for request, result, raws in batch:
        if not result.events:
            continue
        several = len(request.segments) > 1
        for index, (segment, raw) in enumerate(zip(request.segments, raws, strict=True)):
            item = event_margin_item(segment.prompt, segment.prefix, raw, request.features)
            if item is not None:
                items.append(item)
                owners.append((result, index if several else None))
    if not items:
        return
    for (result, window), (with_event, without) in zip(owners, agent.model.score_continuations(items)):
        margin = with_event - without
        mine = [e for e in result.events if e.window == window]
        if margin > bias:
            for event in mine:
                event.score = margin
            continue
        result.events = [e for e in result.events if e.window != window]
        if mine:
            where = f" in window {window}" if window is not None else ""
            result.problems.append(Problem(
                stage="generate",
                message=f"dropped {len(mine)} event(s){where}: the model preferred them over 'None' by {margin:.2f}, "
                        f"not above event_none_bias {bias}",
            ))
