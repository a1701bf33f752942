"""Fitting a decision head (`reamo.model.decision_heads`) on a tuned model's hidden states: `reamo fit-trigger-head`,
`reamo fit-relation-head` and `reamo fit-argument-head`.

The trigger head is fitted on the M2E2 train sentences the event decisions are tuned on (`m2e2_for_decisions`,
never the calibration slice or dev): every trigger candidate the agent would ask about, asked exactly as the agent
asks it, labelled with the event type of the gold trigger it is (exact span) or "None". Its "None" margin is then
calibrated like rank classification's, with `reamo calibrate-events` on the held-out slice.

The relation head is fitted on MNRE train pairs outside the calibration slice (`mnre_calibration_held_out`), each
asked as the agent asks a given pair (`reamo.decisions.pair_items`), labelled with its gold relation or "None"; its
margins are calibrated by `reamo calibrate-pairs` (given pairs) and `reamo calibrate-triples` (full triples).

The argument head is fitted on the gold events of the same M2E2 sentences as the trigger head: every gold entity
of the sentence is asked as an argument candidate of each gold event, exactly as the agent asks it
(`reamo.decisions.argument_items`), labelled with the role it plays in that event or "None"; its margin is
calibrated by `reamo calibrate-events`.

The triple head is fitted on the MNRE train sentences outside the calibration slice, each with the entities its
lines annotate: every candidate pair of them asked in both directions exactly as full extraction asks it
(`reamo.decisions.triple_items`), labelled with the relation the sentence states from that head to that tail (or
"None": unrelated pairs and the wrong direction, except for a symmetric relation); its margin is calibrated by
`reamo calibrate-triples`. The relation head sees only annotated pairs in their annotated direction (what a given
pair is), so it has never learnt to say "None" to a reversed or unrelated pair, which full extraction mostly asks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from reamo.candidates import tag
from reamo.datasets import (
    M2E2_ENTITY_TYPES,
    M2E2_EVENT_TYPES,
    MNRE_ENTITY_TYPE,
    Example,
    mnre_calibration_held_out,
    read_mnre,
)
from reamo.decisions import argument_items, pair_items, trigger_items, triple_items
from reamo.head_defaults import (
    DEFAULT_ARGUMENT_LAYERS,
    DEFAULT_ARGUMENT_QUESTION_END_LAYERS,
    DEFAULT_ARGUMENT_WEIGHT_DECAY,
    DEFAULT_RELATION_LAYERS,
    DEFAULT_RELATION_QUESTION_END_LAYERS,
    DEFAULT_RELATION_WEIGHT_DECAY,
    DEFAULT_FOLDS,
    DEFAULT_MAX_INVENTED,
    DEFAULT_TRIGGER_LAYERS,
    DEFAULT_TRIGGER_QUESTION_END_LAYERS,
    DEFAULT_TRIPLE_LAYERS,
    DEFAULT_TRIPLE_QUESTION_END_LAYERS,
    DEFAULT_TRIPLE_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAY,
)
from reamo.model.decision_heads import (
    NO_LABEL,
    DecisionHead,
    DecisionHeadConfig,
    OutOfFoldMargin,
    StateRead,
    as_reads,
)
from reamo.ontology import event_roles, is_symmetric
from reamo.schema import Entity, Event, Labels, Result

if TYPE_CHECKING:
    from reamo.agent import Agent

logger = logging.getLogger(__name__)

TRIGGER_ANSWER_START = "Events:"
RELATION_ANSWER_START = "Relations:"
ARGUMENT_ANSWER_START = "Events:"
TRIPLE_ANSWER_START = "Relations:"


def head_reads(layers: Sequence[int], question_end_layers: Sequence[int] = ()) -> list[StateRead]:
    """The reads of a head: `layers` at the answer start, then `question_end_layers` at the question's end."""
    return [*(StateRead(layer=layer) for layer in layers),
            *(StateRead(layer=layer, at="question_end") for layer in question_end_layers)]


DEFAULT_TRIGGER_READS = head_reads(DEFAULT_TRIGGER_LAYERS, DEFAULT_TRIGGER_QUESTION_END_LAYERS)
DEFAULT_ARGUMENT_READS = head_reads(DEFAULT_ARGUMENT_LAYERS, DEFAULT_ARGUMENT_QUESTION_END_LAYERS)
DEFAULT_RELATION_READS = head_reads(DEFAULT_RELATION_LAYERS, DEFAULT_RELATION_QUESTION_END_LAYERS)
DEFAULT_TRIPLE_READS = head_reads(DEFAULT_TRIPLE_LAYERS, DEFAULT_TRIPLE_QUESTION_END_LAYERS)


def _no_states(agent: "Agent", layer: int | Sequence[StateRead]) -> torch.Tensor:
    """The empty states of a head reading `layer` (no candidates): zero rows, the reads' concatenated width."""
    return torch.zeros(0, agent.model.llm.config.get_text_config().hidden_size * len(as_reads(layer)))


class CandidateStates(NamedTuple):
    """What a decision head is fitted on: each candidate's hidden states, its gold answer (None: "None") and the
    index of the sentence it comes from (folds are drawn by sentence)."""

    states: torch.Tensor
    targets: list[str | None]
    sentences: list[int]


def trigger_states(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str],
                   layer: int | Sequence[StateRead], batch_size: int = 32) -> CandidateStates:
    """The hidden states (`layer`: one layer at the answer start, or the head's reads) of every trigger candidate's
    decision prompt in `examples`, the event type of the gold trigger with the candidate's exact span (None when it
    is no trigger) and the candidate's sentence."""
    labels = Labels(entity_types=list(M2E2_ENTITY_TYPES), event_types=list(event_types))
    states: list[torch.Tensor] = []
    targets: list[str | None] = []
    sentences: list[int] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="trigger head states", disable=None):
        chunk = examples[start:start + batch_size]
        requests = [agent.prepare(e.text, tasks=("ee",), labels=labels) for e in chunk]
        windows = [(start + k, example, request, segment.window)
                   for k, (example, request) in enumerate(zip(chunk, requests, strict=True))
                   for segment in request.text_segments]
        items = []
        for (sentence, example, request, window), words in zip(windows, tag([w.text for *_, w in windows]),
                                                                strict=True):
            gold = {(e.trigger.span.start, e.trigger.span.end): e.type for e in example.gold.events if e.trigger.span}
            for candidate, item in trigger_items(agent, request, window, words, agent.trigger_lexicon,
                                                 [TRIGGER_ANSWER_START]):
                assert candidate.span is not None
                items.append(item)
                targets.append(gold.get((candidate.span.start + window.start, candidate.span.end + window.start)))
                sentences.append(sentence)
        if items:
            states.append(agent.model.answer_start_states(items, layer))
    return CandidateStates(torch.cat(states) if states else _no_states(agent, layer), targets, sentences)


def fit_trigger_head(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str] = M2E2_EVENT_TYPES,
                     layer: int | Sequence[StateRead] = DEFAULT_TRIGGER_READS,
                     weight_decay: float = DEFAULT_WEIGHT_DECAY, source: str = "",
                     folds: int = DEFAULT_FOLDS, max_invented: float | None = DEFAULT_MAX_INVENTED) -> DecisionHead:
    """A trigger head for `agent`'s model, fitted on the candidates of `examples` (see `trigger_states`), with the
    "None" margin of its best out-of-fold trigger F1 on them among those that give at most `max_invented` of the
    sentences without a requested event an event (`out_of_fold_margin`; `folds` < 2: none; `max_invented` None:
    F1 alone)."""
    states, targets, sentences = trigger_states(agent, examples, event_types, layer)
    needs = f"candidates that are triggers and candidates that are not, from {len(examples)} sentences"
    head = fit_head(states, targets, list(event_types), layer, weight_decay, TRIGGER_ANSWER_START, source, needs)
    if folds >= 2:
        wanted = {t.casefold() for t in event_types}
        n_gold = sum(1 for e in examples for event in e.gold.events
                     if event.trigger.span and event.type.casefold() in wanted)
        event_free = [not any(event.type.casefold() in wanted for event in e.gold.events) for e in examples]
        head.config.out_of_fold = out_of_fold_margin(head.config, states, targets, sentences, n_gold, folds,
                                                     event_free=event_free, max_invented=max_invented)
    logger.info("trigger head fitted on %d candidates (%d triggers) of %d sentences, %s", len(targets),
                head.config.n_positive, len(examples), head.config.describe_reads())
    return head


def out_of_fold_margin(config: DecisionHeadConfig, states: torch.Tensor, targets: Sequence[str | None],
                       sentences: Sequence[int], n_gold: int, folds: int = DEFAULT_FOLDS,
                       event_free: Sequence[bool] | None = None, max_invented: float | None = None) -> OutOfFoldMargin:
    """The "None" margin with the best F1 when every candidate is decided by a head fitted (as `config` says) on the
    other folds' sentences (contiguous runs of sentences): a margin chosen on thousands of the fit's own gold
    answers instead of a held-out slice's few. `n_gold` counts every gold answer, those no candidate offers too.

    `event_free` (per sentence: it has no gold answer) with `max_invented`: only margins that give at most that
    share of those sentences any answer (a wrong confident answer is worse than none)."""
    from reamo.eval.calibrate import best_threshold

    options = config.labels
    labels = torch.tensor([options.index(t) if t else 0 for t in targets])
    n_sentences = len(event_free) if event_free is not None else max(sentences) + 1
    fold_of = torch.tensor([sentence * folds // n_sentences for sentence in sentences])
    scored: list[tuple[float, bool] | None] = [None] * len(targets)
    for fold in range(folds):
        held = (fold_of == fold).nonzero().flatten()
        if not len(held):
            continue
        head = DecisionHead.fit(states[fold_of != fold], labels[fold_of != fold], config)
        for row, (best, margin) in zip(held.tolist(), head.best_over_none(states[held], options[1:]), strict=True):
            scored[row] = (margin, labels[row].item() == best + 1)
    n_free = sum(event_free) if event_free is not None else 0
    free_best = _best_margin_per_free_sentence(scored, sentences, event_free) if n_free else []
    floor = _invented_floor(free_best, n_free, max_invented) if max_invented is not None else None
    chosen = best_threshold([s for s in scored if s is not None], n_gold, n_sentences, floor=floor)
    invented = sum(1 for m in free_best if m > chosen.bias) / n_free if n_free else None
    logger.info("out-of-fold margin %.3f: F1 %.3f (P %.3f / R %.3f) over %d folds, %d gold%s", chosen.bias, chosen.f1,
                chosen.precision, chosen.recall, folds, n_gold,
                "" if invented is None else f"; {invented:.1%} of {n_free} event-free sentences given an answer "
                f"(bound {max_invented})")
    return OutOfFoldMargin(bias=chosen.bias, f1=round(chosen.f1, 4), precision=round(chosen.precision, 4),
                           recall=round(chosen.recall, 4), n_gold=n_gold, n_candidates=len(targets), folds=folds,
                           max_invented=max_invented if event_free is not None else None,
                           invented=None if invented is None else round(invented, 4),
                           n_event_free=n_free if event_free is not None else None)


def _best_margin_per_free_sentence(scored: Sequence[tuple[float, bool] | None], sentences: Sequence[int],
                                   event_free: Sequence[bool]) -> list[float]:
    """The highest out-of-fold margin of each event-free sentence that offers a candidate: above it, it gets one."""
    best: dict[int, float] = {}
    for row, sentence in enumerate(sentences):
        if event_free[sentence] and scored[row] is not None:
            best[sentence] = max(best.get(sentence, float("-inf")), scored[row][0])  # type: ignore[index]
    return list(best.values())


def _invented_floor(free_best: Sequence[float], n_event_free: int, max_invented: float) -> float | None:
    """The lowest margin that gives at most `max_invented` of the `n_event_free` sentences an answer (None: any
    margin does)."""
    allowed = int(max_invented * n_event_free)
    ranked = sorted(free_best, reverse=True)
    return ranked[allowed] if allowed < len(ranked) else None


def argument_roles(event_types: Sequence[str]) -> list[str]:
    """Every role the event types allow (`event_roles`), each once, in first-seen order: the argument head's labels
    (a decision is restricted to the roles of its event's type)."""
    return list(dict.fromkeys(role for event_type in event_types for role in event_roles(event_type)))


def argument_states(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str],
                    layer: int | Sequence[StateRead], batch_size: int = 32) -> tuple[torch.Tensor, list[str | None]]:
    """The hidden states (`layer`: one layer at the answer start, or the head's reads) of every argument candidate's
    decision prompt in `examples` (each gold entity asked about each gold event of a requested type), and the role
    that entity plays in that event (None when it plays none)."""
    labels = Labels(entity_types=list(M2E2_ENTITY_TYPES), event_types=list(event_types))
    wanted = {event_type.casefold() for event_type in event_types}
    states: list[torch.Tensor] = []
    targets: list[str | None] = []
    skipped = 0
    for start in tqdm(range(0, len(examples), batch_size), desc="argument head states", disable=None):
        items = []
        for example in examples[start:start + batch_size]:
            events = [e for e in example.gold.events if e.type.casefold() in wanted]
            if not events:
                continue
            request = agent.prepare(example.text, tasks=("ee",), labels=labels)
            for event in events:
                roles = {_span(a.entity): a.role for a in event.arguments}
                asked = Event(type=event.type, trigger=event.trigger)
                for entity, allowed, item in argument_items(agent, request, asked, example.gold.entities):
                    role = roles.get(_span(entity))
                    if role is not None and role not in allowed:
                        skipped += 1  # a role the event type does not allow: the agent could never answer it
                        continue
                    items.append(item.model_copy(update={"continuations": [ARGUMENT_ANSWER_START]}))
                    targets.append(role)
        if items:
            states.append(agent.model.answer_start_states(items, layer))
    if skipped:
        logger.warning("%d gold arguments have a role their event type does not allow; left out", skipped)
    return (torch.cat(states) if states else _no_states(agent, layer)), targets


def _span(mention: Any) -> Any:
    return (mention.span.start, mention.span.end) if mention.span else mention.text


def fit_argument_head(agent: "Agent", examples: Sequence[Example], event_types: Sequence[str] = M2E2_EVENT_TYPES,
                      layer: int | Sequence[StateRead] = DEFAULT_ARGUMENT_READS,
                      weight_decay: float = DEFAULT_ARGUMENT_WEIGHT_DECAY, source: str = "") -> DecisionHead:
    """An argument head for `agent`'s model over "None" + every role of `event_types` (`argument_roles`), fitted
    on the gold events' candidates of `examples` (see `argument_states`)."""
    states, targets = argument_states(agent, examples, event_types, layer)
    head = fit_head(states, targets, argument_roles(event_types), layer, weight_decay, ARGUMENT_ANSWER_START, source,
                    f"argument candidates that play a role and candidates that do not, from sentences with events "
                    f"({len(examples)} given)")
    logger.info("argument head fitted on %d candidates (%d arguments) of %d sentences, %s", len(targets),
                head.config.n_positive, len(examples), head.config.describe_reads())
    return head


def relation_training_pairs(limit: int | None = None, seed: int = 0) -> list[Example]:
    """MNRE train pairs outside the calibration slice (which `reamo calibrate-pairs` / `calibrate-triples` use): all
    of them (11,061), or a seeded sample of `limit`, in their natural label mix."""
    pool = [e for e in read_mnre("train") if not mnre_calibration_held_out(e)]
    if limit is None or limit >= len(pool):
        return pool
    return random.Random(seed).sample(pool, limit)


def relation_states(agent: "Agent", examples: Sequence[Example], relation_types: Sequence[str],
                    layer: int | Sequence[StateRead], aliases: dict[str, str] | None = None, batch_size: int = 32
                    ) -> tuple[torch.Tensor, list[str | None]]:
    """The hidden states (`layer`: one layer at the answer start, or the head's reads; the question's end is the
    pair line's closing parenthesis) of every MNRE pair's given-pair prompt (asked as the agent asks it, offering
    `relation_types`), and the pair's gold relation among `relation_types` (None for "None"; `aliases` maps an
    offered name to the dataset's label)."""
    from reamo.eval.runner import DATASETS, given_pair

    spec = DATASETS["mnre"]
    label_of = {aliases.get(name, name) if aliases else name: name for name in relation_types}
    labels = spec.labels.model_copy(update={"relation_types": list(relation_types)})
    states: list[torch.Tensor] = []
    targets: list[str | None] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="relation head states", disable=None):
        items = []
        for example in examples[start:start + batch_size]:
            head, tail = given_pair(example)  # type: ignore[misc]
            request = agent.prepare(example.text, tasks=spec.tasks, labels=labels, pairs=[(head.text, tail.text)])
            items.extend(item.model_copy(update={"continuations": [RELATION_ANSWER_START]})
                         for item in pair_items(agent, request, request.pairs))
            targets.append(label_of.get(str(example.meta["relation"])))
        states.append(agent.model.answer_start_states(items, layer))
    return (torch.cat(states) if states else _no_states(agent, layer)), targets


def fit_relation_head(agent: "Agent", examples: Sequence[Example], relation_types: Sequence[str] | None = None,
                      layer: int | Sequence[StateRead] = DEFAULT_RELATION_READS,
                      weight_decay: float = DEFAULT_RELATION_WEIGHT_DECAY, source: str = "") -> DecisionHead:
    """A relation head for `agent`'s model, fitted on the MNRE pairs `examples` (see `relation_states`); its labels
    are the relation names the agent is asked with (MNRE's, as `reamo eval mnre:val` offers them)."""
    from reamo.eval.runner import DATASETS

    spec = DATASETS["mnre"]
    types = list(relation_types or spec.labels.relation_types)
    states, targets = relation_states(agent, examples, types, layer, spec.relation_aliases)
    head = fit_head(states, targets, types, layer, weight_decay, RELATION_ANSWER_START, source,
                    f"pairs with a relation and pairs without, from {len(examples)} MNRE pairs")
    logger.info("relation head fitted on %d pairs (%d related), %s", len(targets), head.config.n_positive,
                head.config.describe_reads())
    return head


def annotated_sentences(lines: Iterable[Example]) -> list[Example]:
    """MNRE lines (one entity pair each) as one example per sentence (and image) with the union of its lines'
    entities and relations: every pair of a sentence's annotated entities, related or not."""
    from reamo.eval.runner import given_pair

    sentences: dict[tuple[str, str | None], Example] = {}
    for line in lines:
        key = (line.text, line.image)
        if key not in sentences:
            sentences[key] = line.model_copy(update={"gold": Result(text=line.text, tasks=["re"])}, deep=True)
        gold = sentences[key].gold
        for mention in given_pair(line) or ():
            if all(_span(mention) != _span(entity) for entity in gold.entities):
                gold.entities.append(Entity(text=mention.text, type=MNRE_ENTITY_TYPE, span=mention.span))
        for relation in line.gold.relations:
            if all(relation.model_dump() != known.model_dump() for known in gold.relations):
                gold.relations.append(relation)
    return list(sentences.values())


def triple_training_sentences(limit: int | None = None, seed: int = 0) -> list[Example]:
    """MNRE train sentences outside the calibration slice (`annotated_sentences`): all 6,621, or a seeded sample of
    `limit`."""
    pool = annotated_sentences(e for e in read_mnre("train") if not mnre_calibration_held_out(e))
    if limit is None or limit >= len(pool):
        return pool
    return random.Random(seed).sample(pool, limit)


def triple_states(agent: "Agent", examples: Sequence[Example], relation_types: Sequence[str],
                  layer: int | Sequence[StateRead], aliases: dict[str, str] | None = None, batch_size: int = 16
                  ) -> tuple[torch.Tensor, list[str | None]]:
    """The hidden states (`layer`: one layer at the answer start, or the head's reads) of every ordered candidate
    pair of each sentence's entities, asked as full extraction asks it (`triple_items`, offering `relation_types`),
    and the relation among `relation_types` the sentence states from that head to that tail (None when none; a
    symmetric relation holds both ways; `aliases` maps an offered name to the dataset's label). Pairs are matched
    by entity text, since the question names them by text. MNRE entities have no type, so every pair is asked both
    ways about every relation; the state read does not depend on which relations are offered, and the agent
    restricts the head's softmax to those the extracted types allow."""
    from reamo.eval.runner import DATASETS

    spec = DATASETS["mnre"]
    name_of = {aliases.get(name, name) if aliases else name: name for name in relation_types}
    labels = spec.labels.model_copy(update={"relation_types": list(relation_types)})
    states: list[torch.Tensor] = []
    targets: list[str | None] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="triple head states", disable=None):
        items = []
        for example in examples[start:start + batch_size]:
            stated: dict[tuple[str, str], str] = {}
            for relation in example.gold.relations:
                name = name_of.get(relation.type)
                if name is None:
                    continue
                head, tail = relation.head.text.casefold(), relation.tail.text.casefold()
                stated[(head, tail)] = name
                if is_symmetric(name):
                    stated.setdefault((tail, head), name)
            request = agent.prepare(example.text, tasks=("ner", "re"), labels=labels)
            _, asked = triple_items(agent, request, example.gold.entities, by_type=False)
            for _, head, tail, _, item in asked:
                target = stated.get((head.text.casefold(), tail.text.casefold()))
                items.append(item.model_copy(update={"continuations": [TRIPLE_ANSWER_START]}))
                targets.append(target)
        if items:
            states.append(agent.model.answer_start_states(items, layer))
    return (torch.cat(states) if states else _no_states(agent, layer)), targets


def fit_triple_head(agent: "Agent", examples: Sequence[Example], relation_types: Sequence[str] | None = None,
                    layer: int | Sequence[StateRead] = DEFAULT_TRIPLE_READS,
                    weight_decay: float = DEFAULT_TRIPLE_WEIGHT_DECAY, source: str = "") -> DecisionHead:
    """A triple head for `agent`'s model, fitted on the ordered entity pairs of the MNRE sentences `examples`
    (see `triple_states`); its labels are MNRE's relation names as `reamo eval mnre:val --triples` asks them."""
    from reamo.eval.runner import DATASETS

    spec = DATASETS["mnre"]
    types = list(relation_types or spec.labels.relation_types)
    states, targets = triple_states(agent, examples, types, layer, spec.relation_aliases)
    head = fit_head(states, targets, types, layer, weight_decay, TRIPLE_ANSWER_START, source,
                    f"entity pairs a sentence relates and pairs it does not, from {len(examples)} MNRE sentences")
    logger.info("triple head fitted on %d ordered pairs (%d related) of %d sentences, %s", len(targets),
                head.config.n_positive, len(examples), head.config.describe_reads())
    return head


def fit_head(states: torch.Tensor, targets: Sequence[str | None], labels: list[str], layer: int | Sequence[StateRead],
             weight_decay: float, answer_start: str, source: str, needs: str) -> DecisionHead:
    """A decision head over "None" + `labels` fitted on `states` with their `targets` (None = "None"); `layer`: the
    one layer read at the answer start, or the head's reads (the states are theirs, concatenated)."""
    positives = sum(t is not None for t in targets)
    if not positives or positives == len(targets):
        raise ValueError(f"fitting a decision head needs {needs}; got {positives} of {len(targets)} with a label: "
                         "give more data")
    options = [NO_LABEL, *labels]
    reads = as_reads(layer)
    config = DecisionHeadConfig(layer=reads[0].layer, reads=reads, labels=options,
                                hidden_size=states.shape[1] // len(reads), answer_start=answer_start,
                                weight_decay=weight_decay, fitted_on=source, n_examples=len(targets),
                                n_positive=positives)
    return DecisionHead.fit(states, torch.tensor([options.index(t) if t else 0 for t in targets]), config)
