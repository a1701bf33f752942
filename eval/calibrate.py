"""Calibrates a model's two "something or None?" decisions on *train* data it was not tuned on, never on dev:
the given-pair relation decision (MNRE) and the event decision (M2E2).

`reamo.decisions.classify_given_pairs` ranks "None" and every offered relation by the model's log-likelihood of writing it and
answers the best relation when it beats "None" by more than a margin (`AgentSettings.pair_none_bias`). This
module scores held-out train pairs once, picks the margin that maximises MNRE's micro F1 (None excluded) and writes
it as an AgentSettings value (`weights/default/settings.json` for the shipped default).

`reamo.decisions.decide_events` keeps the events the model wrote only when it preferred starting the Events line with an
event over "None" by more than `AgentSettings.event_none_bias`; `calibrate_events` picks that margin for the best
trigger F1 (type + exact trigger span) on M2E2 train sentences outside the tuning recipe.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from reamo.files import write_atomic
from reamo.eval.metrics import NO_RELATION, evaluate, relation_classification_scores
from reamo.eval.runner import DATASETS, given_pair
from tqdm.auto import tqdm

from reamo.datasets import Example, mnre_calibration_held_out, read_m2e2, read_mnre
from reamo.model.decision_heads import MarginChoice

Recipes = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]  # one tuning recipe, or one per tuning pass

logger = logging.getLogger(__name__)


class PairScore(BaseModel):
    """One held-out pair: its gold label, the model's best relation (MNRE label) and that relation's
    log-likelihood margin over answering "None"."""

    model_config = ConfigDict(extra="forbid")

    id: str
    gold: str
    label: str
    margin: float


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bias: float
    f1: float
    precision: float
    recall: float
    argmax_f1: float  # the same pairs with margin 0: the plain most-likely answer
    n_pairs: int
    n_excluded_texts: int
    f1_interval: tuple[float, float] | None = None  # as ThresholdCalibration's, redrawing the pairs


def held_out_pairs(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` lines of MNRE train's calibration sentences (`mnre_calibration_held_out`, never tuned on; minus any
    sentence in `exclude_texts`), in their natural label mix."""
    lines = [e for e in read_mnre("train") if mnre_calibration_held_out(e) and e.text not in exclude_texts]
    return random.Random(f"calibrate-{seed}").sample(lines, min(limit, len(lines)))


def score_pairs(agent: Any, examples: Sequence[Example], batch_size: int = 8) -> list[PairScore]:
    """For each pair: the best-scoring relation (mapped back to its MNRE label) and its margin over "None"
    (`reamo.decisions.best_relations`, batched through the pipeline's scorer)."""
    from reamo.decisions import best_relations

    spec = DATASETS["mnre"]
    out = []
    progress = tqdm(total=len(examples), desc="calibrating pairs", disable=None)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        requests = []
        for example in chunk:
            head, tail = given_pair(example)  # type: ignore[misc]
            requests.append(agent.prepare(example.text, None, None, None, spec.tasks, spec.labels,
                                          [(head.text, tail.text)]))
        for example, decided in zip(chunk, best_relations(agent, requests), strict=True):
            relation, margin, _ = decided[0]
            out.append(PairScore(id=example.id, gold=str(example.meta["relation"]),
                                 label=spec.relation_aliases.get(relation, relation), margin=margin))
        progress.update(len(chunk))
    progress.close()
    return out


def best_bias(scores: Sequence[PairScore]) -> Calibration:
    """The margin (a midpoint between observed margins) with the highest micro F1, None excluded."""
    gold = [s.gold for s in scores]

    def f1_at(bias: float) -> Any:
        return relation_classification_scores(gold, [s.label if s.margin > bias else "None" for s in scores])

    values = sorted({round(s.margin, 4) for s in scores})
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.0]
    best = max(candidates, key=lambda b: (f1_at(b).f1, -abs(b)))
    chosen = f1_at(best)
    return Calibration(bias=round(best, 4), f1=chosen.f1, precision=chosen.precision, recall=chosen.recall,
                       argmax_f1=f1_at(0.0).f1, n_pairs=len(scores), n_excluded_texts=0)


def training_texts(recipes: Recipes) -> set[str]:
    """Every sentence the tuning recipes train on (their user turns), to keep them out of calibration. A model
    tuned in several passes (one recipe continuing another's adapter) gives all of them. Only the recipes are read:
    which sentences a recipe draws does not depend on its model, so no model is loaded."""
    from reamo.tuning.config import TrainConfig
    from reamo.tuning.trainer import build_examples

    texts: set[str] = set()
    for recipe in _as_paths(recipes):
        for item in build_examples(TrainConfig.from_yaml(recipe)):
            content = item.messages[1]["content"]
            body = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            texts |= {line.removeprefix("Text: ") for line in body.splitlines() if line.startswith("Text: ")}
    return texts


def _as_paths(recipes: Recipes) -> list[Path]:
    if isinstance(recipes, (str, os.PathLike)):
        return [Path(recipes)]
    return [Path(p) for p in recipes]


def _recipe_names(recipes: Recipes) -> str:
    return " + ".join(p.name for p in _as_paths(recipes))


def calibrate(agent: Any, recipes: Recipes, out: str | os.PathLike[str], limit: int = 300,
              seed: int = 0) -> Calibration | dict[str, Calibration]:
    """Score held-out train pairs, pick the margin, write {"pair_none_bias": b, "_about": ...} into `out`. With a
    relation head (`reamo fit-relation-head`) first the head's margin (`pair_head_none_bias`) on the head's
    decisions, then rank classification's without the head (it decides requests whose relations the head was not
    fitted on); the head's margin is written as null (the head unused) when its held-out F1 is below the ranking's.
    Returns both by name ("pair_head", "pair") then, else the one calibration."""
    excluded = training_texts(recipes)
    examples = held_out_pairs(excluded, limit, seed)
    names = _recipe_names(recipes)
    head = getattr(agent, "relation_head", None)
    if head is None:
        return _calibrate_pairs(agent, examples, out, "pair_none_bias", "calibration", len(excluded), names, seed, "")
    before = agent.settings.pair_head_none_bias
    agent.settings.pair_head_none_bias = -1e9  # the head decides; every pair's best relation with its margin
    try:
        by_head = _calibrate_pairs(agent, examples, out, "pair_head_none_bias", "pair_head_calibration",
                                   len(excluded), names, seed, f"; margins of the relation head (layer "
                                   f"{head.config.layer}, `reamo fit-relation-head`)")
        agent.relation_head = None
        ranked = _calibrate_pairs(agent, examples, out, "pair_none_bias", "calibration", len(excluded), names, seed,
                                  "; margins of rank classification (requests with relations the relation head was "
                                  "not fitted on)")
    finally:
        agent.relation_head, agent.settings.pair_head_none_bias = head, before
    _keep_head_if_better(out, "pair_head_none_bias", by_head, ranked, "pair_head_calibration", "micro F1")
    return {"pair_head": by_head, "pair": ranked}


def _calibrate_pairs(agent: Any, examples: Sequence[Example], out: str | os.PathLike[str], key: str, about_key: str,
                     n_excluded: int, names: str, seed: int, how: str) -> Calibration:
    """Score `examples` as the agent decides given pairs now, pick the margin, write it as `key` into `out`."""
    scores = score_pairs(agent, examples)
    calibration = best_bias(scores)
    pairs = [([(s.margin, s.label == s.gold)], int(s.gold != NO_RELATION)) for s in scores]
    calibration = calibration.model_copy(update={"n_excluded_texts": n_excluded,
                                                 "f1_interval": f1_interval(pairs, calibration.bias)})
    low, high = calibration.f1_interval
    write_setting(out, key, calibration.bias, (
        f"calibrated on {calibration.n_pairs} MNRE train pairs whose sentences no tuning pass trained on "
        f"({names}; seed {seed}): micro F1 {calibration.f1:.3f} there (90% interval {low:.3f}-"
        f"{high:.3f} redrawing the pairs) vs {calibration.argmax_f1:.3f} with the plain most-likely answer{how}; "
        "reamo calibrate-pairs"),
        calibration.model_dump(), about_key=about_key, drop=("pair_relation_threshold",))
    return calibration


def write_setting(out: str | os.PathLike[str], key: str, value: float | None, about: str, details: dict[str, Any],
                  about_key: str, drop: Sequence[str] = ()) -> None:
    """Set one AgentSettings value in a settings.json (atomically), with why in its "_about" entry."""
    target = Path(out)
    values = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    notes = values.get("_about") if isinstance(values.get("_about"), dict) else {}
    for old in drop:  # settings of an earlier decision rule
        values.pop(old, None)
        notes.pop(old, None)
    values[key] = value
    notes[key] = about
    notes[about_key] = details
    values["_about"] = notes
    write_atomic(target, json.dumps(values, indent=1) + "\n")


# -- events ------------------------------------------------------------------------------------------------------

class EventScore(BaseModel):
    """One held-out sentence: the model's event margin (None: it wrote no events) and how its events match gold."""

    model_config = ConfigDict(extra="forbid")

    id: str
    margin: float | None
    correct: int  # predicted events whose type and exact trigger span match a gold event (ET)
    predicted: int
    gold: int


class EventCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bias: float
    f1: float
    precision: float
    recall: float
    greedy_f1: float  # every event greedy decoding wrote kept
    n_sentences: int
    n_with_events: int  # gold
    n_excluded_texts: int


def held_out_sentences(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` M2E2 train sentences the recipe does not train on, in their natural mix (most have no event)."""
    sentences = [e for e in read_m2e2("train") if e.text not in exclude_texts]
    return random.Random(f"calibrate-events-{seed}").sample(sentences, min(limit, len(sentences)))


def score_events(agent: Any, examples: Sequence[Example], batch_size: int = 8) -> list[EventScore]:
    """Greedy extraction for each sentence (batched, with the event decision off), then its event margin
    (`reamo.decisions.event_margin_item`) and trigger matches."""
    from reamo.decisions import event_margin_item

    spec = DATASETS["m2e2"]
    out = []
    progress = tqdm(total=len(examples), desc="calibrating events", disable=None)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        requests = [agent.prepare(e.text, None, None, None, spec.tasks, spec.labels) for e in chunk]
        results = agent.run(requests)
        items = [event_margin_item(r.prompt, r.segments[0].prefix, res.raw_output, r.features) if res.events
                 else None for r, res in zip(requests, results, strict=True)]
        scored = iter(agent.model.score_continuations([i for i in items if i is not None]))
        for example, result, item in zip(chunk, results, items, strict=True):
            triggers = evaluate([(example.gold, result)], tasks=["ee"]).tasks["et"].overall  # as `reamo eval` scores
            margin = None
            if item is not None:
                with_event, without = next(scored)
                margin = with_event - without
            out.append(EventScore(id=example.id, margin=margin, correct=triggers.tp, predicted=triggers.n_pred,
                                  gold=triggers.n_gold))
        progress.update(len(chunk))
    progress.close()
    return out


def _event_prf(scores: Sequence[EventScore], bias: float | None) -> tuple[float, float, float]:
    kept = [s for s in scores if s.margin is not None and (bias is None or s.margin > bias)]
    correct, predicted = sum(s.correct for s in kept), sum(s.predicted for s in kept)
    gold = sum(s.gold for s in scores)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_event_bias(scores: Sequence[EventScore]) -> EventCalibration:
    """The margin (a midpoint between observed margins) with the best trigger F1; ties go to the smaller change."""
    values = sorted({round(s.margin, 4) for s in scores if s.margin is not None})
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] if values else [0.0]
    best = max(candidates, key=lambda b: (_event_prf(scores, b)[2], -abs(b)))
    precision, recall, f1 = _event_prf(scores, best)
    return EventCalibration(bias=round(best, 4), f1=f1, precision=precision, recall=recall,
                            greedy_f1=_event_prf(scores, None)[2], n_sentences=len(scores),
                            n_with_events=sum(1 for s in scores if s.gold), n_excluded_texts=0)


def calibrate_events(agent: Any, recipes: Recipes, out: str | os.PathLike[str],
                     limit: int = 300, seed: int = 0) -> EventCalibration:
    """Score held-out M2E2 train sentences, pick `event_none_bias`, write it into `out` (settings.json)."""
    excluded = training_texts(recipes)
    scores = score_events(agent, held_out_sentences(excluded, limit, seed))
    calibration = best_event_bias(scores).model_copy(update={"n_excluded_texts": len(excluded)})
    write_setting(out, "event_none_bias", calibration.bias, (
        f"calibrated on {calibration.n_sentences} M2E2 train sentences no tuning pass trained on "
        f"({_recipe_names(recipes)}; seed {seed}; {calibration.n_with_events} with events): "
        f"trigger F1 {calibration.f1:.3f} there vs "
        f"{calibration.greedy_f1:.3f} keeping every event greedy decoding writes; reamo calibrate-events"),
        calibration.model_dump(), about_key="event_calibration")
    return calibration


# -- decisions by candidate scoring: full triples, triggers, arguments --------------------------------------------

class ThresholdCalibration(MarginChoice):
    """A "something or None?" margin chosen for the best F1 over scored candidates of held-out train sentences."""

    n_sentences: int
    n_excluded_texts: int = 0
    # 90% interval of the held-out F1 at `bias` when the sentences are redrawn (bootstrap): how far a slice this
    # small can be trusted. Around 20 gold triggers it spans some 30 F1 points, so close models are not told apart.
    f1_interval: tuple[float, float] | None = None


Candidates = Sequence[tuple[float, bool]]  # (margin, whether gold) of every candidate one sentence offered


def f1_interval(sentences: Sequence[tuple[Candidates, int]], bias: float, draws: int = 400, seed: int = 0,
                level: float = 0.9) -> tuple[float, float]:
    """The `level` bootstrap interval of the F1 above `bias` over `sentences` ([(candidates, n_gold), ...]),
    redrawing whole sentences (their candidates and gold items belong together)."""
    if not sentences:
        return 0.0, 0.0
    rng = random.Random(f"f1-interval-{seed}")
    kept = [(sum(1 for m, _ in candidates if m > bias), sum(1 for m, c in candidates if m > bias and c), n_gold)
            for candidates, n_gold in sentences]
    values = []
    for _ in range(draws):
        answered = right = gold = 0
        for _ in kept:
            a, r, g = kept[rng.randrange(len(kept))]
            answered, right, gold = answered + a, right + r, gold + g
        values.append(2 * right / (answered + gold) if right else float(answered + gold == 0))  # none, none asked
    values.sort()
    tail = (1.0 - level) / 2
    return round(values[int(tail * draws)], 4), round(values[min(draws - 1, int((1.0 - tail) * draws))], 4)


def _with_interval(calibration: ThresholdCalibration, sentences: Sequence[tuple[Candidates, int]]
                   ) -> ThresholdCalibration:
    return calibration.model_copy(update={"f1_interval": f1_interval(sentences, calibration.bias)})


def _interval_note(calibration: ThresholdCalibration) -> str:
    low, high = calibration.f1_interval or (calibration.f1, calibration.f1)
    return f"90% interval {low:.3f}-{high:.3f} redrawing the sentences"


def best_threshold(scored: Sequence[tuple[float, bool]], n_gold: int, n_sentences: int = 0,
                   at: float | None = None, floor: float | None = None) -> ThresholdCalibration:
    """The margin (a midpoint between observed margins) with the best F1 of the candidates above it; among equal
    F1 the higher margin (fewer answers: a wrong confident answer is worse than none). `at`: that margin instead,
    with what it scores here (a margin chosen elsewhere, checked on these candidates). `floor`: only margins at or
    above it (a bound the margin must keep, e.g. on invented events)."""
    if at is not None:
        candidates = [at]
    else:
        margins = sorted({round(m, 4) for m, _ in scored})
        candidates = [(a + b) / 2 for a, b in zip(margins, margins[1:])] + ([margins[-1] + 1.0] if margins else [0.0])
        if margins:
            candidates.insert(0, margins[0] - 1.0)
        if floor is not None:
            candidates = [floor] + [c for c in candidates if c > floor]

    def prf(bias: float) -> tuple[float, float, float]:
        kept = [correct for margin, correct in scored if margin > bias]
        tp = sum(kept)
        precision = tp / len(kept) if kept else 0.0
        recall = tp / n_gold if n_gold else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    best = max(candidates, key=lambda b: (prf(b)[2], b))
    precision, recall, f1 = prf(best)
    return ThresholdCalibration(bias=round(best, 4), f1=f1, precision=precision, recall=recall, n_gold=n_gold,
                                n_candidates=len(scored), n_sentences=n_sentences)


def held_out_mnre_sentences(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` MNRE train sentences of the calibration slice (all their annotated pairs' relations together),
    none of them tuned on."""
    from reamo.datasets import group_mnre

    lines = [e for e in read_mnre("train") if mnre_calibration_held_out(e) and e.text not in exclude_texts]
    sentences = group_mnre(lines)
    return random.Random(f"calibrate-triples-{seed}").sample(sentences, min(limit, len(sentences)))


def score_triples(agent: Any, examples: Sequence[Example], batch_size: int = 16
                  ) -> list[tuple[list[tuple[float, bool]], int]]:
    """Per sentence: every pair's best relation with its margin (the agent runs with no threshold) and whether the
    triple (head span, relation, tail span) is gold; and the sentence's number of gold triples."""
    spec = DATASETS["mnre"]
    sentences: list[tuple[list[tuple[float, bool]], int]] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="calibrating triples", disable=None):
        chunk = examples[start:start + batch_size]
        for example, result in zip(chunk, agent.extract_batch([e.text for e in chunk], ("ner", "re"), spec.labels),
                                   strict=True):
            gold = {_triple(r.head, r.type, r.tail) for r in example.gold.relations}
            scored = []
            for relation in result.relations:
                label = spec.relation_aliases.get(relation.type, relation.type)
                scored.append((relation.score, _triple(relation.head, label, relation.tail) in gold))
            sentences.append((scored, len(gold)))
    return sentences


def _triple(head: Any, label: str, tail: Any) -> tuple:
    span = lambda m: (m.span.start, m.span.end) if m.span else m.text  # noqa: E731
    return span(head), label, span(tail)


def calibrate_triples(agent: Any, recipes: Recipes, out: str | os.PathLike[str], limit: int = 300,
                      seed: int = 0) -> ThresholdCalibration | dict[str, ThresholdCalibration]:
    """Pick `triple_none_bias` for the best triple F1 on held-out MNRE train sentences; write it into `out`. With a
    head that decides full triples (`triple_decider`: the triple head, else the relation head), first its own
    margin (`triple_head_none_bias`), then rank classification's without a head (the head's margin written as
    null when its held-out F1 is below the ranking's); returns both by name ("triple_head", "triple") then, else the
    one calibration."""
    from reamo.decisions import triple_decider

    excluded = training_texts(recipes)
    examples = held_out_mnre_sentences(excluded, limit, seed)
    names = _recipe_names(recipes)
    head = triple_decider(agent)
    if head is None:
        return _calibrate_triples(agent, examples, out, "triple_none_bias", "triple_calibration", len(excluded),
                                  names, seed, "")
    which = "triple head" if getattr(agent, "triple_head", None) is not None else "relation head"
    heads = getattr(agent, "triple_head", None), getattr(agent, "relation_head", None)
    before = agent.settings.triple_head_none_bias
    agent.settings.triple_head_none_bias = -1e9  # the head decides
    try:
        by_head = _calibrate_triples(agent, examples, out, "triple_head_none_bias", "triple_head_calibration",
                                     len(excluded), names, seed, f"; margins of the {which} (layer "
                                     f"{head.config.layer}, `reamo fit-{which.replace(' ', '-')}`)")
        agent.triple_head = agent.relation_head = None
        ranked = _calibrate_triples(agent, examples, out, "triple_none_bias", "triple_calibration", len(excluded),
                                    names, seed, f"; margins of rank classification (requests with relations the "
                                    f"{which} was not fitted on)")
    finally:
        (agent.triple_head, agent.relation_head), agent.settings.triple_head_none_bias = heads, before
    _keep_head_if_better(out, "triple_head_none_bias", by_head, ranked, "triple_head_calibration", "triple F1")
    return {"triple_head": by_head, "triple": ranked}


def _keep_head_if_better(out: str | os.PathLike[str], key: str, by_head: Calibration | ThresholdCalibration,
                         ranked: Calibration | ThresholdCalibration, about_key: str, what: str) -> None:
    """A head decides only where it is at least as good as rank classification on the same held-out slice: else its
    margin is written as null (the head unused for that decision), with why."""
    if by_head.f1 >= ranked.f1:
        return
    write_setting(out, key, None, (
        f"not used: on the same held-out slice the head's best {what} ({by_head.f1:.3f} at margin {by_head.bias}) is "
        f"below rank classification's ({ranked.f1:.3f}), so rank classification decides; the head's calibration "
        f"is kept in {about_key}"), by_head.model_dump(), about_key=about_key)


def _calibrate_triples(agent: Any, examples: Sequence[Example], out: str | os.PathLike[str], key: str, about_key: str,
                       n_excluded: int, names: str, seed: int, how: str) -> ThresholdCalibration:
    """Extract `examples` as the agent decides triples now (no threshold), pick the margin, write it as `key`."""
    agent.settings.triple_none_bias = -1e9  # every pair's best relation, with its margin
    sentences = score_triples(agent, examples)
    n_gold = sum(gold for _, gold in sentences)
    calibration = _with_interval(best_threshold([c for scored, _ in sentences for c in scored], n_gold,
                                                len(examples)), sentences)
    calibration = calibration.model_copy(update={"n_excluded_texts": n_excluded})
    write_setting(out, key, calibration.bias, (
        f"calibrated on {calibration.n_sentences} MNRE train sentences ({n_gold} gold triples) no tuning pass trained "
        f"on ({names}; seed {seed}): triple F1 {calibration.f1:.3f} there ({_interval_note(calibration)}; "
        f"P {calibration.precision:.3f} / R {calibration.recall:.3f}){how}; reamo calibrate-triples"),
        calibration.model_dump(), about_key=about_key)
    return calibration


def held_out_m2e2_sentences(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` M2E2 train sentences of the calibration slice (`m2e2_calibration_held_out`), none tuned on."""
    from reamo.datasets import m2e2_calibration_held_out

    sentences = [e for e in read_m2e2("train") if m2e2_calibration_held_out(e) and e.text not in exclude_texts]
    return random.Random(f"calibrate-events-{seed}").sample(sentences, min(limit, len(sentences)))


class ScoredEventSentence(BaseModel):
    """One held-out sentence's trigger candidates: each one's best event type margin, whether it is a gold trigger of
    that type, and its scored arguments (margin, whether gold: span + role + event type); and the gold counts."""

    model_config = ConfigDict(extra="forbid")

    triggers: list[tuple[float, bool, list[tuple[float, bool]]]]
    n_triggers: int
    n_arguments: int


def score_event_decisions(agent: Any, examples: Sequence[Example], batch_size: int = 16,
                          written: dict[int, list[str]] | None = None) -> list[ScoredEventSentence]:
    """Every trigger candidate of every sentence with its best event type, margin and arguments (no threshold).
    `written` (sentence index -> what the model wrote for it, one text per window) is filled where a sentence is
    missing and read where it is there: calibration passes differ only in how they decide, so the LLM writes
    each held-out sentence once for all of them."""
    from reamo.pipeline import finish_steps, write_requests

    spec = DATASETS["m2e2"]
    written = {} if written is None else written
    sentences: list[ScoredEventSentence] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="calibrating events", disable=None):
        chunk = examples[start:start + batch_size]
        requests = [agent.prepare(e.text, tasks=spec.tasks, labels=spec.labels) for e in chunk]
        missing = [k for k in range(len(chunk)) if start + k not in written]
        raws = write_requests(agent, [requests[k] for k in missing])[0] if missing else {}
        written.update({start + k: raws.get(j, []) for j, k in enumerate(missing)})
        steps = finish_steps(agent, requests, {k: written[start + k] for k in range(len(chunk))}, [None] * len(chunk))
        results = [step for step in steps if isinstance(step, list)][-1]
        for example, result in zip(chunk, results, strict=True):
            triggers = {(_span(e.trigger), e.type) for e in example.gold.events}
            arguments = {(_span(a.entity), a.role, e.type) for e in example.gold.events for a in e.arguments}
            scored = []
            for event in result.events:
                args = [(a.score, (_span(a.entity), a.role, event.type) in arguments) for a in event.arguments]
                scored.append((event.score, (_span(event.trigger), event.type) in triggers, args))
            sentences.append(ScoredEventSentence(triggers=scored, n_triggers=len(triggers),
                                                 n_arguments=len(arguments)))
    return sentences


def _span(mention: Any) -> Any:
    return (mention.span.start, mention.span.end) if mention.span else mention.text


def _event_thresholds(agent: Any, examples: Sequence[Example], trigger_head: Any, argument_head: Any,
                      written: dict[int, list[str]] | None = None) -> tuple[ThresholdCalibration, ThresholdCalibration]:
    """The trigger margin with the best held-out trigger F1, then the role margin with the best argument F1 among
    the events that trigger margin keeps, with triggers decided by `trigger_head` and roles by `argument_head` for
    this pass (None: by rank classification); the agent's own heads are put back. `written`: the model's outputs
    shared by the passes (`score_event_decisions`)."""
    heads = getattr(agent, "trigger_head", None), getattr(agent, "argument_head", None)
    agent.trigger_head, agent.argument_head = trigger_head, argument_head
    agent.settings.trigger_none_bias = -1e9  # every candidate's best type and every entity's best role, with margins
    agent.settings.trigger_head_none_bias = -1e9 if trigger_head is not None else None
    agent.settings.argument_none_bias = -1e9
    agent.settings.argument_head_none_bias = -1e9 if argument_head is not None else None
    try:
        sentences = score_event_decisions(agent, examples, written=written)
    finally:
        agent.trigger_head, agent.argument_head = heads
    trigger_sentences = [([(m, c) for m, c, _ in s.triggers], s.n_triggers) for s in sentences]
    out_of_fold = getattr(trigger_head.config, "out_of_fold", None) if trigger_head is not None else None
    triggers = best_threshold([c for scored, _ in trigger_sentences for c in scored],
                              sum(s.n_triggers for s in sentences), len(examples),
                              at=out_of_fold.bias if out_of_fold is not None else None)
    triggers = _with_interval(triggers, trigger_sentences)
    argument_sentences = [([a for m, _, args in s.triggers if m > triggers.bias for a in args], s.n_arguments)
                          for s in sentences]
    arguments = best_threshold([a for scored, _ in argument_sentences for a in scored],
                               sum(s.n_arguments for s in sentences), len(examples))
    return triggers, _with_interval(arguments, argument_sentences)


def _invented_note(out_of_fold: Any) -> str:
    if out_of_fold.invented is None:
        return ""
    bound = "" if out_of_fold.max_invented is None else f", held to at most {out_of_fold.max_invented:.1%}"
    return (f"; {out_of_fold.invented:.1%} of its {out_of_fold.n_event_free} event-free sentences given an "
            f"event{bound}")


def calibrate_event_decisions(agent: Any, recipes: Recipes, out: str | os.PathLike[str], limit: int = 500,
                              seed: int = 0) -> dict[str, ThresholdCalibration]:
    """Pick `trigger_none_bias` (best trigger F1) and then `argument_none_bias` (best argument F1 among the events
    that margin keeps) on held-out M2E2 train sentences; write both into `out`.

    With decision heads, one pass per way of deciding, each on the same sentences: rank classification throughout
    (`trigger_none_bias`); the trigger head (`trigger_head_none_bias`, used only when its held-out trigger F1 is at
    least the ranking's, else written as null); then, on the events of the trigger decider kept, the ranking's role
    margin (`argument_none_bias`) and the argument head's (`argument_head_none_bias`, null unless its argument F1
    there is at least the ranking's). A head decides only requests whose labels it was fitted on, so the ranking's
    margins are always written."""
    excluded = training_texts(recipes)
    examples = held_out_m2e2_sentences(excluded, limit, seed)
    trigger_head, argument_head = getattr(agent, "trigger_head", None), getattr(agent, "argument_head", None)
    names = _recipe_names(recipes)
    passes: dict[tuple[bool, bool], tuple[ThresholdCalibration, ThresholdCalibration]] = {}
    written: dict[int, list[str]] = {}  # what the model writes does not depend on how it decides: once for all passes

    def thresholds(by_trigger_head: bool, by_argument_head: bool
                   ) -> tuple[ThresholdCalibration, ThresholdCalibration]:
        if (by_trigger_head, by_argument_head) not in passes:
            passes[(by_trigger_head, by_argument_head)] = _event_thresholds(
                agent, examples, trigger_head if by_trigger_head else None,
                argument_head if by_argument_head else None, written)
        return passes[(by_trigger_head, by_argument_head)]

    results: dict[str, ThresholdCalibration] = {}
    writes: list[tuple[str, str, str, str]] = []  # key, what, how, details key
    results["trigger"], _ = thresholds(False, False)
    use_trigger_head = False
    if trigger_head is not None:
        results["trigger_head"], _ = thresholds(True, False)
        use_trigger_head = results["trigger_head"].f1 >= results["trigger"].f1
        out_of_fold = trigger_head.config.out_of_fold
        chosen = (f"the margin is the head's out-of-fold one, chosen at fit time on its {out_of_fold.n_candidates} "
                  f"candidates ({out_of_fold.n_gold} gold triggers, {out_of_fold.folds} folds by sentence: F1 "
                  f"{out_of_fold.f1:.3f} there{_invented_note(out_of_fold)}), checked here"
                  if out_of_fold is not None else "")
        writes.append(("trigger_head", "trigger", f"margins of the trigger head ({trigger_head.config.describe_reads()}"
                       f", `reamo fit-trigger-head`){'; ' + chosen if chosen else ''}", "trigger_head_calibration"))
        writes.append(("trigger", "trigger", "margins of rank classification (requests with event types the trigger "
                       "head was not fitted on)", "trigger_calibration"))
    else:
        writes.append(("trigger", "trigger", "margins of rank classification", "trigger_calibration"))
    events_by = "the trigger head" if use_trigger_head else "rank classification"
    results["argument"] = thresholds(use_trigger_head, False)[1]
    writes.append(("argument", "argument", f"margins of rank classification, on the events {events_by} keeps",
                   "argument_calibration"))
    if argument_head is not None:
        results["argument_head"] = thresholds(use_trigger_head, True)[1]
        writes.append(("argument_head", "argument", f"margins of the argument head ("
                       f"{argument_head.config.describe_reads()}, `reamo fit-argument-head`), on the events "
                       f"{events_by} keeps",
                       "argument_head_calibration"))
    results = {name: c.model_copy(update={"n_excluded_texts": len(excluded)}) for name, c in results.items()}
    for name, what, how, details in writes:
        calibration = results[name]
        write_setting(out, f"{name}_none_bias", calibration.bias, (
            f"calibrated on {len(examples)} M2E2 train sentences of the calibration slice no tuning pass trained on "
            f"({names}; seed {seed}; {calibration.n_gold} gold {what}s): {what} F1 {calibration.f1:.3f} there "
            f"({_interval_note(calibration)}; P {calibration.precision:.3f} / R {calibration.recall:.3f}); "
            f"{how}; reamo calibrate-events"),
            calibration.model_dump(), about_key=details)
    for name, what in (("trigger", "trigger F1"), ("argument", "argument F1")):
        if f"{name}_head" in results:
            _keep_head_if_better(out, f"{name}_head_none_bias", results[f"{name}_head"], results[name],
                                 f"{name}_head_calibration", what)
    return results
