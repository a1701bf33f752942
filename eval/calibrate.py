"""Calibrates the given-pair relation decision ("which relation, or None?") of a model on MNRE *train* pairs it
was not tuned on, never on dev.

`Agent.classify_pairs` ranks "None" and every offered relation by the model's log-likelihood of writing it and
answers the best relation when it beats "None" by more than a margin (`AgentSettings.pair_none_bias`). This
module scores held-out train pairs once, picks the margin that maximises MNRE's micro F1 (None excluded) and writes
it as an AgentSettings value (`weights/default/settings.json` for the shipped default).
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
from reamo.eval.metrics import relation_classification_scores
from reamo.eval.runner import DATASETS, given_pair
from tqdm.auto import tqdm

from reamo.datasets import Example, mnre_calibration_held_out, read_mnre

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


def held_out_pairs(exclude_texts: set[str], limit: int, seed: int = 0) -> list[Example]:
    """`limit` lines of MNRE train's calibration sentences (`mnre_calibration_held_out`, never tuned on; minus any
    sentence in `exclude_texts`), in their natural label mix."""
    lines = [e for e in read_mnre("train") if mnre_calibration_held_out(e) and e.text not in exclude_texts]
    return random.Random(f"calibrate-{seed}").sample(lines, min(limit, len(lines)))


def score_pairs(agent: Any, examples: Sequence[Example]) -> list[PairScore]:
    """For each pair: the best-scoring relation (mapped back to its MNRE label) and its margin over "None"."""
    spec = DATASETS["mnre"]
    out = []
    for example in tqdm(examples, desc="calibrating pairs"):
        head, tail = given_pair(example)  # type: ignore[misc]
        request = agent.prepare(example.text, None, None, None, spec.tasks, spec.labels, [(head.text, tail.text)])
        relation, margin = agent.best_pair_relation(request, (head.text, tail.text))
        out.append(PairScore(id=example.id, gold=str(example.meta["relation"]),
                             label=spec.relation_aliases.get(relation, relation), margin=margin))
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
    """Score held-out train pairs, pick the margin, write {"pair_none_bias": b, "_about": ...} into `out`."""
    excluded = training_texts(config_path)
    examples = held_out_pairs(excluded, limit, seed)
    scores = score_pairs(agent, examples)
    calibration = best_bias(scores).model_copy(update={"n_excluded_texts": len(excluded)})
    target = Path(out)
    values = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    values.pop("pair_relation_threshold", None)  # the decision rule before rank classification
    values["pair_none_bias"] = calibration.bias
    about = values.get("_about") if isinstance(values.get("_about"), dict) else {}
    about.pop("pair_relation_threshold", None)
    about["pair_none_bias"] = (
        f"calibrated on {calibration.n_pairs} MNRE train pairs whose sentences {Path(config_path).name} does not "
        f"train on (seed {seed}): micro F1 {calibration.f1:.3f} there vs {calibration.argmax_f1:.3f} with the "
        "plain most-likely answer; reamo calibrate-pairs"
    )
    about["calibration"] = calibration.model_dump()
    values["_about"] = about
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)
    return calibration
