"""The benchmark runner: predict every example of a dataset with a system (and the baselines), score, report.

Predictions go to `out_dir/predictions/<system>.jsonl`, one `PredictionLine` per example, appended and fsynced line
by line, so a run that is killed loses at most the line being written: the rerun drops that torn line, skips every
id already there and appends the rest (`PredictionStore`). Nothing is ever predicted or written twice.

What the agent is asked per dataset (`DATASETS`): GMNER -> tasks ner with PER/LOC/ORG/OTHER; MNRE -> tasks re with
the MNRE relation names (the model writes the short name, e.g. "member_of"; `MNRE_RELATION_ALIASES` maps it back to
"/per/org/member_of"); M2E2 -> ner + ee with the ACE entity types and the 8 M2E2 event types. Dataset images are not
shipped, so the agent runs text-only unless `image_dir` holds the files named in `Example.image`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from reamo.files import write_atomic
from reamo.eval.scoring import EvalReport, score_system
from tqdm.auto import tqdm

from reamo.datasets import (
    GMNER_ENTITY_TYPES,
    M2E2_ENTITY_TYPES,
    M2E2_EVENT_TYPES,
    MNRE_RELATION_TYPES,
    MNRE_SHORT_NAMES,
    MNRE_SHORT_RELATION_TYPES,
    SPLITS,
    DatasetError,
    Example,
    read_dataset,
    read_jsonl,
)
from reamo.schema import Labels, Mention, Problem, Result, Task

logger = logging.getLogger(__name__)

Predictor = Callable[[Example], Result]
DEFAULT_SPLIT = {"gmner": "dev", "mnre": "val", "m2e2": "dev"}

# MNRE's label set, most frequent first on train (fixed by the release; "None" = no relation).
MNRE_RELATIONS = MNRE_RELATION_TYPES


def _aliases(labels: Sequence[str]) -> dict[str, str]:
    """Short name (last path part) -> full label; a short name shared by two labels maps to the more frequent."""
    aliases: dict[str, str] = {short: full for full, short in MNRE_SHORT_NAMES.items() if full in labels}
    for label in labels:  # most frequent first, so setdefault keeps the more frequent one
        aliases.setdefault(label.rsplit("/", 1)[-1], label)
        aliases.setdefault(label, label)
    return aliases


MNRE_RELATION_ALIASES = _aliases(MNRE_RELATIONS)
ACE_ENTITY_TYPES = M2E2_ENTITY_TYPES


class DatasetSpec(BaseModel):
    """How the agent is prompted for one dataset."""

    model_config = ConfigDict(extra="forbid")

    tasks: tuple[Task, ...]
    labels: Labels | None = None
    relation_aliases: dict[str, str] = {}
    given_pairs: bool = False  # MNRE: give the example's (head, tail) pair, as MNRE is scored (classification)


DATASETS: dict[str, DatasetSpec] = {
    "gmner": DatasetSpec(tasks=("ner",), labels=Labels(entity_types=GMNER_ENTITY_TYPES)),
    "mnre": DatasetSpec(
        tasks=("re",),
        # the short names the default was tuned on ("member_of"); the aliases map them back to the MNRE labels
        labels=Labels(entity_types=GMNER_ENTITY_TYPES, relation_types=MNRE_SHORT_RELATION_TYPES),
        relation_aliases=MNRE_RELATION_ALIASES,
        given_pairs=True,
    ),
    "m2e2": DatasetSpec(tasks=("ner", "ee"), labels=Labels(entity_types=ACE_ENTITY_TYPES,
                                                           event_types=M2E2_EVENT_TYPES)),
}


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def load_examples(data: str | os.PathLike[str], limit: int | None = None) -> tuple[list[Example], str]:
    """Examples of "gmner:dev" / "mnre:val" / "m2e2:dev" (a bare "gmner" means its eval split) or of a jsonl file
    in our Example format; returns them with a label for the data ("gmner:dev" or the path)."""
    text = str(data)
    name, _, split = text.partition(":")
    if name in SPLITS and not Path(text).exists():
        split = split or DEFAULT_SPLIT[name]
        return read_dataset(name, split, limit=limit), f"{name}:{split}"  # type: ignore[arg-type]
    path = Path(text)
    if not path.is_file():
        raise DatasetError(
            f"unknown data {text!r}: give gmner:dev, mnre:val, m2e2:dev (or :train) or a .jsonl file of Examples "
            "written by reamo.datasets.write_jsonl"
        )
    examples = read_jsonl(path)
    return (examples[:limit] if limit is not None else examples), str(path)


# ---------------------------------------------------------------------------------------------------------------
# Resumable prediction store
# ---------------------------------------------------------------------------------------------------------------


class PredictionLine(BaseModel):
    """One line of a predictions file."""

    model_config = ConfigDict(extra="forbid")

    id: str
    seconds: float = 0.0
    error: str | None = None
    result: Result


class PredictionStore:
    """Append-only jsonlines of `PredictionLine`s that survives being killed mid-write.

    `recover()` reads what is there: complete lines are kept (first copy of an id wins), a torn last line (no
    trailing newline, left by a kill) is cut off, unreadable or duplicate complete lines are dropped by an atomic
    rewrite. `append()` writes one line and flushes + fsyncs it before returning.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def recover(self) -> dict[str, PredictionLine]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        lines: dict[str, PredictionLine] = {}
        kept: list[bytes] = []
        rewrite = False
        for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
            try:
                line = PredictionLine.model_validate_json(raw)
            except ValidationError as error:
                logger.warning("%s:%d: dropping unreadable line (%s)", self.path, number, error.errors()[0]["msg"])
                rewrite = True
                continue
            if line.id in lines:
                logger.warning("%s:%d: dropping a second line for id %s", self.path, number, line.id)
                rewrite = True
                continue
            lines[line.id] = line
            kept.append(raw)
        if rewrite:
            self._rewrite(kept)
        elif end < len(data):
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path,
                           len(data) - end)
            with self.path.open("r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        return lines

    def _rewrite(self, lines: Sequence[bytes]) -> None:
        write_atomic(self.path, b"".join(raw + b"\n" for raw in lines), fsync=True)

    def append(self, line: PredictionLine) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        self._handle.write(line.model_dump_json().encode("utf-8") + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------------------------------


class AgentPredictor:
    """Runs `Agent.extract` on an example with the dataset's tasks and labels (see `DATASETS`)."""

    def __init__(self, agent: Any, spec: DatasetSpec, image_dir: str | os.PathLike[str] | None = None,
                 name: str = "reamo") -> None:
        self.agent = agent
        self.spec = spec
        self.image_dir = Path(image_dir) if image_dir else None
        self.name = name

    @property
    def batch_size(self) -> int:
        """Examples run together by `predict_batch` (1 when each needs its own media)."""
        if self.image_dir is not None or not hasattr(self.agent, "extract_batch"):
            return 1
        return int(getattr(getattr(self.agent, "settings", None), "batch_size", 8))

    def predict_batch(self, examples: Sequence[Example]) -> list[Result]:
        """Text-only examples through one batched pipeline run (`Agent.extract_batch`); given pairs too."""
        pairs = [given_pair(e) if self.spec.given_pairs else None for e in examples]
        results = self.agent.extract_batch(
            [e.text for e in examples], tasks=self.spec.tasks, labels=self.spec.labels,
            pairs=[[(p[0].text, p[1].text)] if p else None for p in pairs])
        for result, pair in zip(results, pairs, strict=True):
            self.map_relation_names(result)
            if pair:
                snap_to_pair(result, *pair)
        return results

    def map_relation_names(self, result: Result) -> None:
        """Short relation names the model writes ("member_of") -> the dataset's labels."""
        for relation in result.relations:
            relation.type = self.spec.relation_aliases.get(relation.type.strip(), relation.type)

    def __call__(self, example: Example) -> Result:
        image = None
        if self.image_dir is not None and example.image and (self.image_dir / example.image).is_file():
            image = self.image_dir / example.image
        pair = given_pair(example) if self.spec.given_pairs else None
        result = self.agent.extract(text=example.text, image=image, tasks=self.spec.tasks, labels=self.spec.labels,
                                    pairs=[(pair[0].text, pair[1].text)] if pair else None)
        self.map_relation_names(result)
        if pair:
            snap_to_pair(result, *pair)
        return result


def triple_examples(lines: Sequence[Example]) -> list[Example]:
    """MNRE lines as sentences for full triple extraction: MNRE lists every pair of a sentence's annotated entities
    as its own line, so scoring each line's one triple would count a sentence's other (correct) triples as wrong.
    One example per sentence, its gold the union of its lines' relations (no given pair left in `meta`)."""
    from reamo.datasets import group_mnre

    out = []
    for example in group_mnre(lines):
        meta = {k: v for k, v in example.meta.items() if k not in ("head", "tail", "relation")}
        out.append(example.model_copy(update={"meta": meta}))
    return out


def given_pair(example: Example) -> tuple[Mention, Mention] | None:
    """The (head, tail) mentions of an MNRE line, or None for examples without one."""
    if "head" not in example.meta or "tail" not in example.meta:
        return None
    return Mention.model_validate(example.meta["head"]), Mention.model_validate(example.meta["tail"])


def snap_to_pair(result: Result, head: Mention, tail: Mention) -> None:
    """The pair was given with its spans: a predicted relation naming the pair's texts gets the given spans (the
    aligner would pick the first occurrence of a repeated name)."""
    for relation in result.relations:
        if relation.head.text.strip() == head.text and relation.tail.text.strip() == tail.text:
            relation.head, relation.tail = head.model_copy(), tail.model_copy()


def predictor_name(predictor: Any, default: str = "system") -> str:
    name = getattr(predictor, "name", None) or getattr(predictor, "__name__", None)
    return str(name) if name and name != "<lambda>" else default


def _failed(example: Example, error: BaseException) -> Result:
    message = f"{type(error).__name__}: {error}"
    return Result(text=example.text, tasks=list(example.gold.tasks),
                  problems=[Problem(message=message, stage="generate")])


def predict_all(predictor: Predictor, examples: Sequence[Example], path: str | os.PathLike[str],
                desc: str = "predict") -> dict[str, PredictionLine]:
    """Predict the examples not yet in `path` (resumable, see `PredictionStore`); returns every line by id.

    A predictor that raises on an example gets an empty Result with the error as a problem (and `error` set), so
    one bad example never stops the run; `predict_batch(examples)` is used in chunks when the predictor has it.
    """
    store = PredictionStore(path)
    done = store.recover()
    todo = [e for e in examples if e.id not in done]
    batch_size = int(getattr(predictor, "batch_size", 1)) if hasattr(predictor, "predict_batch") else 1
    if len(done) and todo:
        logger.info("%s: resuming, %d done, %d to go", path, len(examples) - len(todo), len(todo))
    with store, tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="ex",
                     dynamic_ncols=True, disable=None) as progress:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            started = time.perf_counter()
            outcomes: list[tuple[Result, str | None]]
            try:
                if batch_size > 1:
                    outcomes = [(r, None) for r in predictor.predict_batch(chunk)]  # type: ignore[attr-defined]
                else:
                    outcomes = [(predictor(chunk[0]), None)]
                seconds = [(time.perf_counter() - started) / len(chunk)] * len(chunk)
            except Exception as error:  # noqa: BLE001 - one failure must not lose the run; it is recorded
                if batch_size > 1:  # redo one by one so only the bad example fails
                    outcomes, seconds = [], []
                    for example in chunk:
                        mark = time.perf_counter()
                        try:
                            outcomes.append((predictor(example), None))
                        except Exception as inner:  # noqa: BLE001
                            logger.warning("%s failed: %s", example.id, inner)
                            outcomes.append((_failed(example, inner), f"{type(inner).__name__}: {inner}"))
                        seconds.append(time.perf_counter() - mark)
                else:
                    logger.warning("%s failed: %s", chunk[0].id, error)
                    outcomes = [(_failed(chunk[0], error), f"{type(error).__name__}: {error}")]
                    seconds = [time.perf_counter() - started]
            for example, (result, error_text), secs in zip(chunk, outcomes, seconds, strict=True):
                line = PredictionLine(id=example.id, seconds=secs, error=error_text, result=result)
                store.append(line)
                done[example.id] = line
            progress.update(len(chunk))
    return done


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


def _decider(head: Any, head_name: str, head_bias: float | None, bias: float | None,
             labels: Sequence[Sequence[str]]) -> str:
    """How one kind of decision is made for a dataset whose requests ask among each of `labels`."""
    if head is not None and head_bias is not None and all(head.covers(options) for options in labels):
        return (f"the {head_name.replace('_', ' ')} (the LLM's {head.config.describe_reads()}, "
                f"`reamo fit-{head_name.replace('_', '-')}`) with margin {head_bias}")
    return f"rank classification of the model's answers with margin {bias}"


def _event_notes(agent: Any, settings: Any, spec: DatasetSpec | None) -> list[str]:
    """How the agent decided the events it is scored on."""
    trigger_bias = getattr(settings, "trigger_none_bias", None)
    if trigger_bias is None:
        event_bias = getattr(settings, "event_none_bias", None)
        if event_bias is None:
            return []
        return ["reamo keeps the events it writes only when it preferred starting its Events line with an event "
                f"over 'None' by more than {event_bias} (calibrated on held-out M2E2 train sentences, "
                "`reamo calibrate-events`)"]
    from reamo.ontology import event_roles

    types = list(spec.labels.event_types) if spec is not None and spec.labels is not None else []
    triggers = _decider(getattr(agent, "trigger_head", None), "trigger_head",
                        getattr(settings, "trigger_head_none_bias", None), trigger_bias, [types])
    note = f"reamo asks each trigger candidate for an event type or none, decided by {triggers}"
    argument_bias = getattr(settings, "argument_none_bias", None)
    if argument_bias is not None:
        roles = [event_roles(t, spec.labels.event_roles if spec is not None and spec.labels else None) for t in types]
        arguments = _decider(getattr(agent, "argument_head", None), "argument_head",
                             getattr(settings, "argument_head_none_bias", None), argument_bias,
                             [r for r in roles if r])
        note += f"; each entity of an accepted event's window for a role of its type or none, decided by {arguments}"
    return [note + " (margins calibrated on held-out M2E2 train sentences, `reamo calibrate-events`)"]


def _triple_notes(agent: Any, settings: Any) -> list[str]:
    """How the agent decided the full triples it is scored on."""
    bias = getattr(settings, "triple_none_bias", None)
    if bias is None:
        return ["reamo writes the relations of full triple extraction freely (no triple_none_bias set)"]
    from reamo.decisions import triple_decider

    head = triple_decider(agent)
    name = "triple_head" if head is not None and head is getattr(agent, "triple_head", None) else "relation_head"
    how = _decider(head, name, getattr(settings, "triple_head_none_bias", None), bias,
                   [DATASETS["mnre"].labels.relation_types])
    return [f"reamo asks each pair of the entities it extracted, both ways, for a relation or none, decided by {how} "
            "(margin calibrated on held-out MNRE train sentences, `reamo calibrate-triples`)"]


def _notes(source: str, image_dir: Path | None, systems: dict[str, Any]) -> list[str]:
    notes = []
    if source == "gmner" and image_dir is None:
        notes.append(
            "GMNER tweet images are not available here, so every system ran text-only and predicts 'no region' for "
            "every entity: the gmner and eeg rows count a prediction as grounded-correct only when its gold entity "
            "has no box (ungroundable), which caps their recall at the ungroundable share of gold entities."
        )
    if source == "mnre" and "majority" in systems:
        notes.append(
            "majority = the most frequent non-None relation on MNRE train for every pair (predicting None everywhere "
            "scores F1 0); its triples use the given gold pair, so its 're' row is an oracle-pair floor."
        )
    if source in ("gmner", "m2e2") and "spacy" in systems:
        notes.append(
            "spacy = en_core_web_sm NER with the type mapping in reamo.eval.baselines (numeric types dropped)"
            + ("; it predicts no events, so its et/ea rows are 0." if source == "m2e2" else ".")
        )
    if source == "m2e2":
        notes.append("M2E2 split: ours (article-level sha1 % 10 == 0 -> dev); no official split exists. Its gold "
                     "entities follow ACE and include nominal mentions ('soldiers', 'police'), which a name "
                     "tagger such as spaCy cannot find.")
    return notes


def run_eval(
    data: str | os.PathLike[str],
    agent: Any,
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    baselines: bool | dict[str, Predictor] = True,
    image_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    plots: bool = True,
    speech: bool = False,
    triples: bool = False,
) -> EvalReport:
    """Predict, score and report one dataset. `agent`: a `reamo.Agent` or any callable `Example -> Result`.

    `speech`: the speech version: each sentence spoken with espeak-ng, the agent given the audio alone.
    `triples`: MNRE without the given pair: the agent finds the pairs itself (full triple extraction).

    Writes into `out_dir`: predictions/<system>.jsonl (resumable), report.md, scores.json and PNG plots.
    `baselines`: True for `default_baselines(source)`, False for none, or a dict name -> predictor.
    """
    from reamo.eval.baselines import default_baselines
    from reamo.eval.report import write_report

    examples, label = load_examples(data, limit)
    if not examples:
        raise DatasetError(f"{label}: no examples to evaluate")
    if triples and examples[0].source == "mnre":
        examples = triple_examples(examples)
        label = f"{label} (triples: {len(examples)} sentences)"
    source, split = examples[0].source, examples[0].split
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)

    spec = DATASETS.get(source, DatasetSpec(tasks=tuple(examples[0].gold.tasks)))
    if hasattr(agent, "extract"):
        if triples:
            spec = spec.model_copy(update={"given_pairs": False})
        if speech:
            from reamo.eval.speech import SpeechPredictor

            main: Predictor = SpeechPredictor(agent, spec, out / "speech", name=name or "reamo-speech")
        else:
            main = AgentPredictor(agent, spec, image_dir, name=name or "reamo")
    else:
        main = agent
    main_name = name or predictor_name(main)
    systems: dict[str, Predictor] = {main_name: main}
    if baselines is True:
        extra = default_baselines(source)
    else:
        extra = dict(baselines) if baselines else {}
    for baseline_name, predictor in extra.items():
        if baseline_name != main_name:
            systems[baseline_name] = predictor

    reports = {}
    lines_by_system: dict[str, dict[str, PredictionLine]] = {}
    for system_name, predictor in systems.items():
        lines = predict_all(predictor, examples, out / "predictions" / f"{system_name}.jsonl",
                            desc=f"{system_name} on {label}")
        lines_by_system[system_name] = lines
        chosen = [lines[e.id] for e in examples]
        seconds = sum(line.seconds for line in chosen) / len(chosen)
        reports[system_name] = score_system(
            system_name, examples, [line.result for line in chosen],
            n_failed=sum(1 for line in chosen if line.error), seconds_per_example=seconds,
        )
    notes = _notes(source, Path(image_dir) if image_dir else None, systems)
    if speech and hasattr(agent, "extract"):
        from reamo.eval.speech import heard_share

        heard, total = heard_share(examples, [lines_by_system[main_name][e.id].result for e in examples])
        if total and spec.given_pairs:
            notes.append(f"ASR: {heard} of {total} gold pair entities ({100 * heard / total:.1f}%) occur "
                         "(case-insensitive) in the transcript the agent read; the pair is given by name, so a "
                         "misheard name still scores, but the model must relate names its text may not contain.")
        elif total:
            notes.append(f"ASR ceiling: {heard} of {total} gold entity/trigger mentions ({100 * heard / total:.1f}%) "
                         "occur (case-insensitive) in the transcript the agent read; exact-match recall cannot "
                         "exceed that share.")
    settings = getattr(agent, "settings", None)
    if source == "mnre" and settings is not None and not triples:
        bias = getattr(settings, "pair_none_bias", None)
        head_bias = getattr(settings, "pair_head_none_bias", None)
        relation_head = getattr(agent, "relation_head", None)
        if bias is not None and head_bias is not None and relation_head is not None \
                and relation_head.covers(DATASETS["mnre"].labels.relation_types):
            how = (f"the relation head (layer {relation_head.config.layer} of the LLM, `reamo fit-relation-head`) "
                   f"names the best relation when it beats None by more than {head_bias} (margin calibrated on "
                   "held-out MNRE train pairs, `reamo calibrate-pairs`)")
        elif bias is not None:
            how = ("it ranks None and every relation by the model's log-likelihood of writing it and names the best "
                   f"relation when it beats None by more than {bias} (margin calibrated on held-out MNRE train "
                   "pairs, `reamo calibrate-pairs`)")
        else:
            how = "greedy decoding decides between a relation and None"
        notes.append("reamo is given each gold pair; " + how)
    if source == "mnre" and settings is not None and triples:
        notes.extend(_triple_notes(agent, settings))
    if "ee" in DATASETS.get(source, DatasetSpec(tasks=())).tasks and settings is not None:
        notes.extend(_event_notes(agent, settings, DATASETS.get(source)))
    report = EvalReport(data=label, source=source, split=split, n_examples=len(examples), limit=limit,
                        system=main_name, systems=reports, notes=notes)
    write_report(report, out, plots=plots)
    return report


def evaluate_model(
    data: str | os.PathLike[str],
    model: str = "default",
    out_dir: str | os.PathLike[str] = "reamo-eval",
    limit: int | None = None,
    baselines: bool = True,
    image_dir: str | os.PathLike[str] | None = None,
    max_new_tokens: int | None = None,
    speech: bool = False,
    triples: bool = False,
    greedy_pairs: bool = False,
    precision: str = "float32",
) -> EvalReport:
    """The `reamo eval` entry: `model` is "default", a saved model folder, or a baseline name ("spacy",
    "majority") to score a baseline on its own."""
    from reamo.eval.baselines import MajorityRelation, SpacyNer

    if model in ("spacy", "majority"):
        examples, _ = load_examples(data, limit=1)
        source = examples[0].source if examples else "gmner"
        system: Any = SpacyNer.for_dataset(source) if model == "spacy" else MajorityRelation()
        return run_eval(data, system, out_dir, limit=limit, baselines=baselines, image_dir=image_dir)
    from reamo.agent import Agent

    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    settings["precision"] = precision
    if greedy_pairs:
        settings["pair_none_bias"] = None
    agent = Agent.from_pretrained(model, **settings)
    return run_eval(data, agent, out_dir, limit=limit, baselines=baselines, image_dir=image_dir, speech=speech,
                    triples=triples)
