"""Calibrates the given-pair relation decision ("a relation, or None?") of a model on MNRE *train* pairs it was not
tuned on, never on dev.

A small tuned LLM puts most of its first-token probability on "None", the most common answer, so greedy decoding
almost never names a relation. `Agent.classify_pairs` instead answers with a relation when P(" (") reaches a
threshold; this module picks the threshold that maximises MNRE's micro F1 (None excluded) on held-out train pairs
and writes it as an AgentSettings value (`weights/default/settings.json` for the shipped default).
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
from reamo.eval.metrics import pair_label, relation_classification_scores
from reamo.eval.runner import DATASETS, given_pair, snap_to_pair
from tqdm.auto import tqdm

from reamo.datasets import Example, read_mnre

logger = logging.getLogger(__name__)


class PairScore(BaseModel):
    """One held-out pair: the model's P(relation first) and the label it writes when made to answer one."""

    model_config = ConfigDict(extra="forbid")

    id: str
    gold: str
    p_relation: float
    label: str


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float
    f1: float
    precision: float
    recall: float
    greedy_f1: float  # the same pairs at threshold 0.5: about greedy decoding's decision (" (" vs " None" hold ~99%)
    n_pairs: int
    n_excluded_texts: int


def held_out_pairs(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` MNRE train lines whose sentence the model was not tuned on, in MNRE's natural label mix."""
    lines = [e for e in read_mnre("train") if e.text not in exclude_texts]
    return random.Random(f"calibrate-{seed}").sample(lines, min(limit, len(lines)))


def score_pairs(agent: Any, examples: Sequence[Example]) -> list[PairScore]:
    """P(relation) and the forced-relation label for each pair (aliases mapped back to MNRE labels)."""
    spec = DATASETS["mnre"]
    out = []
    for example in tqdm(examples, desc="calibrating pairs"):
        head, tail = given_pair(example)  # type: ignore[misc]
        request = agent.prepare(example.text, None, None, None, spec.tasks, spec.labels, [(head.text, tail.text)])
        [p_relation] = agent.model.next_token_probs(request.prompt + "Relations:", request.features, [" ("])
        prefix = "Relations: ("
        raw = prefix + agent.model.generate([request.prompt + prefix], [request.features], max_new_tokens=48)[0]
        result = agent.finish(raw, request.text, spec.tasks, request.media, request.context, {}, request.started)
        for relation in result.relations:
            relation.type = spec.relation_aliases.get(relation.type.strip(), relation.type)
        snap_to_pair(result, head, tail)
        out.append(PairScore(id=example.id, gold=str(example.meta["relation"]), p_relation=p_relation,
                             label=pair_label(result, head, tail)))
    return out


def best_threshold(scores: Sequence[PairScore]) -> Calibration:
    """The threshold (a midpoint between observed probabilities) with the highest micro F1, None excluded."""
    gold = [s.gold for s in scores]

    def f1_at(threshold: float) -> Any:
        return relation_classification_scores(gold, [s.label if s.p_relation >= threshold else "None" for s in scores])

    values = sorted({round(s.p_relation, 4) for s in scores})
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.5]
    best = max(candidates, key=lambda t: (f1_at(t).f1, t))
    chosen = f1_at(best)
    return Calibration(threshold=round(best, 4), f1=chosen.f1, precision=chosen.precision, recall=chosen.recall,
                       greedy_f1=f1_at(0.5).f1, n_pairs=len(scores), n_excluded_texts=0)


def training_texts(config_path: str | os.PathLike[str]) -> set[str]:
    """Every sentence a tuning recipe trains on (its user turns), to keep them out of calibration."""
    from reamo.model.embedded_default import load_default_model
    from reamo.tuning.config import TrainConfig
    from reamo.tuning.trainer import build_examples

    config = TrainConfig.from_yaml(config_path)
    model, _ = load_default_model(tuned=False) if config.model == "default" else (None, False)
    if model is None:
        from reamo.model import ReamoModel

        model = ReamoModel.from_pretrained(str(config.model))
    texts = set()
    for item in build_examples(config, model):
        content = item.messages[1]["content"]
        body = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        texts |= {line.removeprefix("Text: ") for line in body.splitlines() if line.startswith("Text: ")}
    return texts


def calibrate(agent: Any, config_path: str | os.PathLike[str], out: str | os.PathLike[str], limit: int = 300,
              seed: int = 0) -> Calibration:
    """Score held-out train pairs, pick the threshold, write {"pair_relation_threshold": t, "_about": ...}."""
    excluded = training_texts(config_path)
    examples = held_out_pairs(excluded, limit, seed)
    scores = score_pairs(agent, examples)
    calibration = best_threshold(scores).model_copy(update={"n_excluded_texts": len(excluded)})
    target = Path(out)
    values = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    values["pair_relation_threshold"] = calibration.threshold
    values["_about"] = {
        "pair_relation_threshold": (
            f"calibrated on {calibration.n_pairs} MNRE train pairs whose sentences {Path(config_path).name} does "
            f"not train on (seed {seed}): micro F1 {calibration.f1:.3f} there vs {calibration.greedy_f1:.3f} "
            "with greedy decoding's decision; reamo calibrate-pairs"
        ),
        "calibration": calibration.model_dump(),
    }
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)
    return calibration
