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

from reamo.candidates import TaggedWord, TriggerLexicon, pair_candidates
from reamo.model.shared_prefix import ScoringItem
from reamo.ontology import allowed_relations, event_roles, fitting_roles, is_symmetric
from reamo.prompting import Question, argument_question, build_messages, trigger_question
from reamo.protocol import format_event, format_event_start, format_relation, format_relation_start
from reamo.schema import Argument, Entity, Event, Mention, Problem, Relation, Result, Task, TextSpan
from reamo.segmenting import Window

if TYPE_CHECKING:
    from reamo.agent import Agent
    from reamo.model.decision_heads import DecisionHead
    from reamo.pipeline import PreparedRequest, Segment

_EVENTS_LINE = re.compile(r"^[ \t]*Events[ \t]*:", re.MULTILINE)


def best_over_none(scores: Sequence[float]) -> tuple[int, float]:
    """Scores of ["None", option 0, option 1, ...] -> (index of the most likely option, its margin over "None"):
    the one rank-classification decision every relation, trigger and role choice makes."""
    best = max(range(len(scores) - 1), key=lambda i: scores[i + 1])
    return best, scores[best + 1] - scores[0]


def segment_item(segment: "Segment", answers: list[str], media: dict | None) -> ScoringItem:
    """The scoring item asking `segment`'s prompt to choose among `answers` ("None" first)."""
    return ScoringItem(prompt=segment.prompt, prefix=segment.prefix, continuations=answers, media=media)


def head_decides(head: "DecisionHead | None", bias: float | None, labels: Sequence[str]) -> bool:
    """Whether a decision among `labels` is read by `head` (one fitted on every label, with a calibrated margin)
    instead of rank classification."""
    return head is not None and bias is not None and head.covers(labels)


def decide_options(agent: "Agent", items: Sequence[ScoringItem], options: Sequence[Sequence[str]],
                   by_head: Sequence[bool], head: "DecisionHead | None", head_bias: float | None,
                   rank_bias: float | None) -> list[tuple[int, float, float | None]]:
    """Each item's best option (index into its `options`), its margin over "None" and the margin it must beat.
    Where `by_head[k]`, `head` reads the LLM's state at the head's answer start after the item's prompt, its softmax
    over "None" and the item's options (one head call per option list); the rest by rank classification of the
    item's answers ("None" first, then one per option). One rule for triggers, given pairs and full triples."""
    out: list[tuple[int, float, float | None] | None] = [None] * len(items)
    asked = [k for k in range(len(items)) if by_head[k]]
    if asked:
        assert head is not None
        start = head.config.answer_start
        states = agent.model.answer_start_states(
            [items[k].model_copy(update={"continuations": [start]}) for k in asked], head.config.reads)
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, k in enumerate(asked):
            groups.setdefault(tuple(options[k]), []).append(row)
        for labels, rows in groups.items():
            for row, (best, margin) in zip(rows, head.best_over_none(states[rows], list(labels)), strict=True):
                out[asked[row]] = (best, margin, head_bias)
    rest = [k for k in range(len(items)) if out[k] is None]
    for k, scores in zip(rest, agent.model.score_continuations([items[k] for k in rest]), strict=True):
        out[k] = (*best_over_none(scores), rank_bias)
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Relations of given pairs
# ---------------------------------------------------------------------------------------------------------------


def relation_answers(head: str, relations: Sequence[str], end: str) -> list[str]:
    """The answers a pair's relation is chosen among: "None" (with the end of the answer), then each relation as
    the model was tuned to write it, up to the relation's name. The rest of a relation answer copies the tail
    entity, the same for every relation: on the first 300 MNRE val pairs scoring it too changed no decision
    (calibrated margin -0.342 with it, -0.341 without; on all 1,624, 2 differ) but doubled the tokens to score."""
    return [f"Relations: None{end}"] + [f"Relations: {format_relation_start(head, relation)}" for relation in relations]


def trigger_answers(event_types: Sequence[str], end: str) -> list[str]:
    """The answers a trigger candidate's event type is chosen among: "None" (with the end of the answer), then each
    type as the model was tuned to write it, up to the type. The rest copies the candidate, the same for every
    type, and was over half of the tokens scored."""
    return [f"Events: None{end}"] + [f"Events: {format_event_start(type_)}" for type_ in event_types]


def pair_items(agent: "Agent", request: "PreparedRequest", pairs: Sequence[tuple[str, str]]) -> list[ScoringItem]:
    """One scoring item per pair: "None" first, then every offered relation (`relation_answers`)."""
    from reamo.pipeline import pair_prompt

    end = agent.model.tokenizer.eos_token or ""
    return [segment_item(pair_prompt(agent, request, (head, tail)),
                         relation_answers(head, request.labels.relation_types, end), request.features)
            for head, tail in pairs]


def best_relations(agent: "Agent", requests: Sequence["PreparedRequest"]
                   ) -> list[list[tuple[str, float, float | None]]]:
    """For each request and each of its pairs: the offered relation the model finds most likely, its margin over
    "None" and the margin it must beat (see `decide_options`: by the agent's relation head where it knows every
    offered relation and `pair_head_none_bias` is set, else by rank classification against `pair_none_bias`; what
    `reamo calibrate-pairs` calibrates)."""
    settings = agent.settings
    head = getattr(agent, "relation_head", None)
    items: list[ScoringItem] = []
    options: list[list[str]] = []
    by_head: list[bool] = []
    for request in requests:
        types = list(request.labels.relation_types)
        asked = pair_items(agent, request, request.pairs)
        items.extend(asked)
        options.extend([types] * len(asked))
        by_head.extend([head_decides(head, settings.pair_head_none_bias, types)] * len(asked))
    decided = iter(decide_options(agent, items, options, by_head, head, settings.pair_head_none_bias,
                                  settings.pair_none_bias))
    out = []
    for request in requests:
        types = list(request.labels.relation_types)
        chosen = []
        for _ in request.pairs:
            best, margin, bias = next(decided)
            chosen.append((types[best], margin, bias))
        out.append(chosen)
    return out


def classify_given_pairs(agent: "Agent", requests: Sequence["PreparedRequest"]) -> list[tuple[str, dict]]:
    """Given pairs: the best relation of each pair is answered when it beats "None" by more than
    `pair_none_bias`. Returns per request its answer in the protocol and the margin of each answered relation.

    Scoring every label instead of decoding greedily turns the LLM into a calibrated classifier: a small tuned
    model's first token leans to "None" (the most common answer), and greedy decoding turns that lean into "never a
    relation"; the margin is chosen on held-out train pairs.
    """
    assert agent.settings.pair_none_bias is not None
    out = []
    for request, decided in zip(requests, best_relations(agent, requests), strict=True):
        chosen, margins = [], {}
        for (head, tail), (relation, margin, bias) in zip(request.pairs, decided, strict=True):
            assert bias is not None
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
        several = len(request.text_segments) > 1
        for index, (segment, raw) in enumerate(zip(request.segments, raws, strict=True)):
            if segment.transcript:
                continue
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


# ---------------------------------------------------------------------------------------------------------------
# Relations between the extracted entities (full triples) and events, by candidate scoring
# ---------------------------------------------------------------------------------------------------------------


def question_segment(agent: "Agent", request: "PreparedRequest", window: Window, tasks: tuple[Task, ...],
                     question: Question | None = None, pairs: list[tuple[str, str]] | None = None) -> Segment:
    """The prompt asking one decision about `window` of the request, built as tuning builds it."""
    from reamo.pipeline import Segment

    messages = build_messages(window.text, request.context, tasks, request.labels, request.placeholders,
                              agent.settings.few_shot, request.modalities, pairs, question)
    return Segment(window=window, prompt=agent.model.render_prompt(messages),
                   prefix=agent.model.render_prompt(messages[:-1], add_generation_prompt=False))


def _window(request: "PreparedRequest", mention: Mention) -> tuple[int, Window]:
    """The window (index, window) a document-level mention lies in."""
    start = mention.span.start if mention.span else 0
    segments = request.text_segments
    for index, segment in enumerate(segments):
        if segment.window.start <= start < segment.window.end or index == len(segments) - 1:
            return index, segment.window
    return 0, segments[0].window  # pragma: no cover - the loop returns at the last window


def scores_relations(request: "PreparedRequest") -> bool:
    return "re" in request.tasks and not request.pairs


def triple_decider(agent: "Agent") -> "DecisionHead | None":
    """The head that decides full triples: the triple head (`reamo fit-triple-head`, fitted on every ordered pair of
    a sentence's entities, as full extraction asks them) where the model has one, else its relation head (fitted
    on annotated pairs in their annotated direction, as given pairs are asked)."""
    triple_head = getattr(agent, "triple_head", None)
    return triple_head if triple_head is not None else getattr(agent, "relation_head", None)


def triple_items(agent: "Agent", request: "PreparedRequest", entities: Sequence[Entity], by_type: bool | None = None
                 ) -> tuple[list[tuple[Entity, Entity]], list[tuple[int, Entity, Entity, list[str], ScoringItem]]]:
    """The candidate pairs of `entities` (`pair_candidates`: text order) and, for each pair in each direction its
    entity types allow a relation in, (pair index, head, tail, the relations asked, the item asking them): as the
    agent asks full triples and as the triple head is fitted (`reamo.tuning.heads`). `by_type` (default: the
    `relation_type_filter` setting) False asks every pair both ways about every relation (untyped entities)."""
    settings = agent.settings
    by_type = settings.relation_type_filter if by_type is None else by_type
    types = list(request.labels.relation_types)
    end = agent.model.tokenizer.eos_token or ""
    candidates = pair_candidates(entities, types, settings.max_pairs, by_type)
    out = []
    for index, (first, second, _) in enumerate(candidates):
        _, window = _window(request, first)
        for head, tail in ((first, second), (second, first)):
            relations = allowed_relations(types, head.type, tail.type) if by_type else types
            if not relations:
                continue
            segment = question_segment(agent, request, window, ("re",), pairs=[(head.text, tail.text)])
            out.append((index, head, tail, relations,
                        segment_item(segment, relation_answers(head.text, relations, end), request.features)))
    return [(first, second) for first, second, _ in candidates], out


def decide_relations(agent: "Agent", batch: Sequence[tuple["PreparedRequest", Result]]) -> None:
    """Full relation extraction by pair scoring: every pair of extracted entities in a window (`triple_items`) is
    asked in both directions as a given pair; the best relation and direction wins when it beats that direction's
    "None" by more than its margin: `triple_head_none_bias` where the agent's triple decider (`triple_decider`)
    knows every requested relation, else `triple_none_bias` (rank classification). Symmetric relations are
    written in text order. Replaces the relations the model wrote freely (a small model's free relations were
    mostly wrong: MNRE triples F1 10)."""
    settings = agent.settings
    if settings.triple_none_bias is None:
        return
    decider = triple_decider(agent)
    head_bias = settings.triple_head_none_bias
    items: list[ScoringItem] = []
    owners: list[tuple[int, int, Entity, Entity, list[str]]] = []  # batch row, pair index, head, tail, relations
    by_head: list[bool] = []  # per request, so both directions of a pair are on one scale
    pairs_of: dict[int, list[tuple[Entity, Entity]]] = {}
    for row, (request, result) in enumerate(batch):
        if not scores_relations(request):
            continue
        use_head = head_decides(decider, head_bias, list(request.labels.relation_types))
        pairs_of[row], asked = triple_items(agent, request, result.entities)
        for index, head, tail, relations, item in asked:
            items.append(item)
            owners.append((row, index, head, tail, relations))
            by_head.append(use_head)
    decided = decide_options(agent, items, [owner[4] for owner in owners], by_head, decider, head_bias,
                             settings.triple_none_bias)
    best: dict[tuple[int, int], tuple[float, float, Entity, str, Entity]] = {}
    for (row, index, head, tail, relations), (position, margin, bias) in zip(owners, decided, strict=True):
        assert bias is not None  # this direction's best; the other direction may beat it
        if (row, index) not in best or margin > best[(row, index)][0]:
            best[(row, index)] = (margin, bias, head, relations[position], tail)
    for row, pairs in pairs_of.items():
        request, result = batch[row]
        chosen = []
        for index, (first, second) in enumerate(pairs):
            if (row, index) not in best or best[(row, index)][0] <= best[(row, index)][1]:
                continue
            margin, _, head, relation, tail = best[(row, index)]
            if is_symmetric(relation):
                head, tail = first, second
            chosen.append(Relation(head=Mention(text=head.text, span=head.span), type=relation,
                                   tail=Mention(text=tail.text, span=tail.span), score=margin, window=head.window))
        result.relations = chosen


def scores_events(request: "PreparedRequest") -> bool:
    return "ee" in request.tasks


def trigger_items(agent: "Agent", request: "PreparedRequest", window: Window, words: Sequence[TaggedWord],
                  lexicon: TriggerLexicon | None, answers: list[str]) -> list[tuple[Mention, ScoringItem]]:
    """Each trigger candidate of a tagged window (span relative to the window) with the item asking about it, as
    the agent asks and as the trigger head is fitted (`reamo.tuning.heads`)."""
    from reamo.candidates import trigger_candidates

    out = []
    for candidate in trigger_candidates(words, request.labels.event_types, lexicon):
        segment = question_segment(agent, request, window, ("ee",), question=trigger_question(candidate.text))
        out.append((candidate, segment_item(segment, answers, request.features)))
    return out


def decide_events_by_scoring(agent: "Agent", batch: Sequence[tuple["PreparedRequest", Result]],
                             lexicon: TriggerLexicon | None) -> None:
    """Event extraction by candidate scoring. Each trigger candidate (`trigger_candidates`) is asked as a trigger
    of each requested event type or of none (by the agent's trigger head on the LLM's state when it has one that
    knows the requested types, else by rank classification); a type wins when it beats "None" by more than
    `trigger_head_none_bias` or `trigger_none_bias`, the margin calibrated for the way it was decided.
    Then each extracted entity of the event's window is asked in each role the event type has (`event_roles`) or
    none; a role wins above `argument_none_bias`. Replaces the events the model wrote freely."""
    settings = agent.settings
    if settings.trigger_none_bias is None:
        return
    from reamo.candidates import tag

    end = agent.model.tokenizer.eos_token or ""
    rows = [row for row, (request, _) in enumerate(batch) if scores_events(request)]
    windows = [(row, index, segment.window) for row in rows
               for index, segment in enumerate(batch[row][0].text_segments)]
    tagged = tag([window.text for _, _, window in windows]) if windows else []
    items: list[ScoringItem] = []
    owners: list[tuple[int, int, Window, Mention, list[str]]] = []
    for (row, index, window), words in zip(windows, tagged, strict=True):
        request = batch[row][0]
        types = list(request.labels.event_types)
        for candidate, item in trigger_items(agent, request, window, words, lexicon, trigger_answers(types, end)):
            items.append(item)
            owners.append((row, index, window, candidate, types))
    head, head_bias = agent.trigger_head, settings.trigger_head_none_bias
    decided = decide_options(agent, items, [owner[4] for owner in owners],
                             [head_decides(head, head_bias, owner[4]) for owner in owners], head, head_bias,
                             settings.trigger_none_bias)
    events: dict[int, list[Event]] = {row: [] for row in rows}
    for (row, index, window, candidate, types), (best, margin, bias) in zip(owners, decided, strict=True):
        assert bias is not None
        if margin > bias:
            span = candidate.span
            trigger = Mention(text=candidate.text, span=TextSpan(start=span.start + window.start,
                                                                 end=span.end + window.start) if span else None)
            several = len(batch[row][0].text_segments) > 1
            events[row].append(Event(type=types[best], trigger=trigger, score=margin,
                                     window=index if several else None))
    _decide_arguments(agent, batch, events)
    for row in rows:
        batch[row][1].events = events[row]


def argument_answers(event: Event, roles: Sequence[str], mention: str, end: str) -> list[str]:
    """The answers an argument candidate's role is chosen among: the event alone ("no role"), then the event with
    `mention` in each role, each as the model was tuned to write it."""
    bare = Event(type=event.type, trigger=Mention(text=event.trigger.text))
    with_role = [bare.model_copy(update={"arguments": [Argument(role=role, entity=Mention(text=mention))]})
                 for role in roles]
    return [f"Events: {format_event(answer)}{end}" for answer in (bare, *with_role)]


def argument_items(agent: "Agent", request: "PreparedRequest", event: Event, entities: Sequence[Entity]
                   ) -> list[tuple[Entity, list[str], ScoringItem]]:
    """Each argument candidate of `event` among `entities` (those of its window, except one holding the trigger)
    with the roles it is answered among and the item asking it, as the agent asks and as the argument head is
    fitted (`reamo.tuning.heads`). The question names every role of the event type; the answers are only the roles
    an entity of its type can fill (`fitting_roles`), and an entity that can fill none is not asked."""
    roles = event_roles(event.type, request.labels.event_roles)
    if not roles:
        return []
    end = agent.model.tokenizer.eos_token or ""
    _, window = _window(request, event.trigger)
    out = []
    for entity in entities:
        if entity.window != event.window or (entity.span and event.trigger.span
                                             and entity.span.start <= event.trigger.span.start < entity.span.end):
            continue
        fitting = fitting_roles(event.type, entity.type, request.labels.event_roles)
        if not fitting:
            continue
        question = argument_question(event.type, event.trigger.text, roles, entity.text)
        segment = question_segment(agent, request, window, ("ee",), question=question)
        out.append((entity, fitting, segment_item(segment, argument_answers(event, fitting, entity.text, end),
                                                  request.features)))
    return out


def _decide_arguments(agent: "Agent", batch: Sequence[tuple["PreparedRequest", Result]],
                      events: dict[int, list[Event]]) -> None:
    """Each accepted event's arguments among the entities of its window (see `decide_events_by_scoring`): by the
    agent's argument head where it knows every role the event type allows and `argument_head_none_bias` is set,
    else by rank classification against `argument_none_bias` (`decide_options`)."""
    settings = agent.settings
    if settings.argument_none_bias is None:
        return
    head, head_bias = getattr(agent, "argument_head", None), settings.argument_head_none_bias
    items: list[ScoringItem] = []
    owners: list[tuple[Event, Entity, list[str]]] = []
    for row, found in events.items():
        request, result = batch[row]
        for event in found:
            for entity, roles, item in argument_items(agent, request, event, result.entities):
                items.append(item)
                owners.append((event, entity, roles))
    decided = decide_options(agent, items, [owner[2] for owner in owners],
                             [head_decides(head, head_bias, owner[2]) for owner in owners], head, head_bias,
                             settings.argument_none_bias)
    for (event, entity, roles), (best, margin, bias) in zip(owners, decided, strict=True):
        assert bias is not None
        if margin > bias:
            event.arguments.append(Argument(role=roles[best], entity=Mention(text=entity.text, span=entity.span),
                                            score=margin))
