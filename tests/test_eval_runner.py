"""The benchmark runner: resumable predictions (a torn last line from a kill), scoring and the written report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reamo.eval.runner import (
    MNRE_RELATION_ALIASES,
    PredictionLine,
    PredictionStore,
    load_examples,
    predict_all,
    run_eval,
)
from reamo.tools.registry import ToolRegistry

from reamo.agent import Agent, AgentSettings
from reamo.datasets import Example, write_jsonl
from reamo.model import ReamoConfig, ReamoModel
from reamo.schema import Result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Oracle:
    """Returns the gold result (a perfect system) and remembers which ids it was asked for."""

    name = "oracle"

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, example: Example) -> Result:
        self.calls.append(example.id)
        if example.id == self.fail_on:
            raise RuntimeError("boom")
        return example.gold.model_copy(deep=True)


@pytest.fixture(scope="module")
def gmner20() -> list[Example]:
    """Twenty GMNER-like tweets the test makes: the store / resume logic needs ids and gold, not the dataset."""
    from reamo.schema import Entity, TextSpan

    examples = []
    for i in range(20):
        text = f"Rafael Nadal plays number {i} in Paris"
        gold = Result(text=text, tasks=["ner"], entities=[
            Entity(text="Rafael Nadal", type="PER", span=TextSpan(start=0, end=12)),
            Entity(text="Paris", type="LOC", span=TextSpan(start=len(text) - 5, end=len(text)))])
        examples.append(Example(id=f"gmner:test:{i}", text=text, gold=gold, source="gmner", split="dev"))
    return examples


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_resume_after_torn_line_has_no_duplicates_and_loses_nothing(gmner20, tmp_path) -> None:
    path = tmp_path / "predictions.jsonl"
    first = Oracle()
    predict_all(first, gmner20[:8], path)
    assert first.calls == [e.id for e in gmner20[:8]]

    # A kill in the middle of writing line 9: half a line, no newline.
    torn = PredictionLine(id=gmner20[8].id, result=gmner20[8].gold).model_dump_json()
    with path.open("ab") as handle:
        handle.write(torn[: len(torn) // 2].encode("utf-8"))

    second = Oracle()
    lines = predict_all(second, gmner20, path)
    assert second.calls == [e.id for e in gmner20[8:]]  # the torn example is redone, done ones are skipped
    ids = _ids(path)
    assert ids == [e.id for e in gmner20]  # every id exactly once, in order
    assert path.read_bytes().endswith(b"\n")
    assert all(PredictionLine.model_validate_json(line) for line in path.read_text().splitlines())
    assert set(lines) == set(ids)

    third = Oracle()
    predict_all(third, gmner20, path)
    assert third.calls == []  # nothing left to do


def test_store_drops_duplicate_and_garbage_complete_lines(gmner20, tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    good = [PredictionLine(id=e.id, result=e.gold).model_dump_json() for e in gmner20[:3]]
    path.write_text("\n".join([good[0], good[1], "{not json", good[1], good[2]]) + "\n", encoding="utf-8")
    lines = PredictionStore(path).recover()
    assert list(lines) == [e.id for e in gmner20[:3]]
    assert _ids(path) == [e.id for e in gmner20[:3]]


def test_a_failing_example_is_recorded_and_the_run_goes_on(gmner20, tmp_path) -> None:
    oracle = Oracle(fail_on=gmner20[2].id)
    lines = predict_all(oracle, gmner20[:5], tmp_path / "p.jsonl")
    assert len(lines) == 5
    assert lines[gmner20[2].id].error == "RuntimeError: boom"
    assert lines[gmner20[2].id].result.entities == []
    assert lines[gmner20[2].id].result.problems[0].message == "RuntimeError: boom"


@pytest.mark.needs_data
def test_gmner_report_with_oracle_and_spacy_baseline(tmp_path) -> None:
    report = run_eval("gmner:dev", Oracle(), tmp_path, limit=30, baselines=True)
    assert list(report.systems) == ["oracle", "spacy"]
    oracle = report.systems["oracle"]
    for task in ("ner", "gmner", "mner", "eeg"):
        for mode in ("exact", "relaxed"):
            assert report.f1(task, mode) == pytest.approx(1.0)
    assert 0.0 < report.f1("ner", system="spacy") < 1.0
    assert oracle.grounding_ious and all(iou == pytest.approx(1.0) for iou in oracle.grounding_ious)
    # a perfect system puts every gold entity on the diagonal of the confusion table
    assert all(set(row) == {gold} for gold, row in oracle.confusion.items())
    assert any(note.startswith("GMNER tweet images are not available") for note in report.notes)

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| ner | exact | " in markdown and "| gmner | relaxed | " in markdown
    assert "oracle F1" in markdown and "spacy F1" in markdown
    assert "| PER |" in markdown
    scores = json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))
    assert scores["n_examples"] == 30 and set(scores["systems"]) == {"oracle", "spacy"}
    for name in ("f1_per_type_ner.png", "pr_scatter_ner.png", "confusion_oracle.png", "confusion_spacy.png",
                 "iou_oracle.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not (tmp_path / "iou_spacy.png").exists()  # spaCy predicts no boxes
    assert len(_ids(tmp_path / "predictions" / "spacy.jsonl")) == 30


@pytest.mark.needs_data
def test_mnre_relation_classification_and_majority_baseline(tmp_path) -> None:
    report = run_eval("mnre:val", Oracle(), tmp_path, limit=40)
    assert report.f1("rc") == pytest.approx(1.0) and report.f1("re") == pytest.approx(1.0)
    majority = report.systems["majority"]
    rc = majority.row("rc")
    assert rc is not None and set(rc.per_type) >= {"/per/per/peer"}
    assert rc.scores.n_pred == 40  # one relation for every pair
    assert "| rc | exact |" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.needs_data
def test_m2e2_scores_entities_triggers_and_arguments(tmp_path) -> None:
    report = run_eval("m2e2:dev", Oracle(), tmp_path, limit=25, baselines=False, plots=False)
    tasks = {row.task for row in report.systems["oracle"].rows}
    assert tasks == {"ner", "et", "ea"}
    assert report.f1("ner") == pytest.approx(1.0)


class InventsAnEvent(Oracle):
    """The gold result, plus an Attack event on the first word of every sentence whose gold has none."""

    name = "inventor"

    def __call__(self, example: Example) -> Result:
        from reamo.schema import Event, Mention, TextSpan

        result = super().__call__(example)
        if not result.events:
            word = example.text.split()[0]
            result.events.append(Event(type="Conflict:Attack", trigger=Mention(
                text=word, span=TextSpan(start=example.text.index(word), end=example.text.index(word) + len(word)))))
        return result


@pytest.mark.needs_data
def test_m2e2_report_counts_event_free_sentences_given_an_event(tmp_path) -> None:
    from reamo.datasets import read_m2e2

    n_free = sum(1 for e in read_m2e2("dev")[:40] if not e.gold.events)
    assert 0 < n_free < 40
    report = run_eval("m2e2:dev", Oracle(), tmp_path / "oracle", limit=40, baselines={"inventor": InventsAnEvent()},
                      plots=False)
    assert report.systems["oracle"].event_free.n_event_free == n_free
    assert report.systems["oracle"].event_free.n_given_an_event == 0
    assert report.systems["inventor"].event_free.n_given_an_event == n_free
    assert report.systems["inventor"].event_free.share == pytest.approx(1.0)
    text = (tmp_path / "oracle" / "report.md").read_text(encoding="utf-8")
    assert f"- inventor: {n_free} of {n_free} (100.0%)" in text and "- oracle: 0 of" in text
    gmner = run_eval("gmner:dev", Oracle(), tmp_path / "gmner", limit=5, baselines=False, plots=False)
    assert gmner.systems["oracle"].event_free is None


def test_jsonl_data_and_unknown_data(gmner20, tmp_path) -> None:
    path = tmp_path / "examples.jsonl"
    write_jsonl(gmner20[:4], path)
    examples, label = load_examples(path, limit=3)
    assert [e.id for e in examples] == [e.id for e in gmner20[:3]] and label == str(path)
    with pytest.raises(ValueError, match="gmner:dev"):
        load_examples(tmp_path / "nothing.jsonl")


@pytest.mark.needs_data
def test_agent_runs_through_the_runner(tiny_llm_dir, tmp_path) -> None:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    agent = Agent(model, registry=ToolRegistry(), settings=AgentSettings(max_new_tokens=4, few_shot=False))
    report = run_eval("mnre:val", agent, tmp_path, limit=3, baselines=False, plots=False)
    assert report.system == "reamo" and report.systems["reamo"].n_failed == 0
    lines = [PredictionLine.model_validate_json(line)
             for line in (tmp_path / "predictions" / "reamo.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line.result.tasks == ["re"] for line in lines)


@pytest.mark.needs_data
def test_batched_text_predictions_match_one_by_one(tiny_llm_dir, tmp_path) -> None:
    from reamo.eval.runner import DATASETS, AgentPredictor

    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    agent = Agent(model, registry=ToolRegistry(), settings=AgentSettings(max_new_tokens=6, few_shot=False))
    examples, _ = load_examples("gmner:dev", limit=5)
    predictor = AgentPredictor(agent, DATASETS["gmner"])
    assert predictor.batch_size > 1
    batched = predictor.predict_batch(examples)
    single = [predictor(e) for e in examples]
    assert [r.raw_output for r in batched] == [r.raw_output for r in single]
    assert all(r.text == e.text and r.tasks == ["ner"] for r, e in zip(batched, examples, strict=True))
    # given pairs are ranked in batches too, with the same answers as one by one
    ranking = Agent(model, registry=ToolRegistry(), settings=AgentSettings(few_shot=False, pair_none_bias=-1e6))
    pairs = AgentPredictor(ranking, DATASETS["mnre"])
    examples, _ = load_examples("mnre:val", limit=4)
    batched = pairs.predict_batch(examples)
    assert [r.raw_output for r in batched] == [pairs(e).raw_output for e in examples]
    assert all(r.relations and r.relations[0].score is not None for r in batched)  # -1e6: always a relation


class PairEcho:
    """Stands in for an Agent: records the given pairs and names the first pair's texts with a fixed relation."""

    def __init__(self) -> None:
        self.pairs: list = []

    def extract(self, text, image=None, tasks=(), labels=None, pairs=None):
        from reamo.schema import Mention, Relation

        self.pairs.append(pairs)
        if not pairs:
            return Result(text=text, tasks=list(tasks))
        head, tail = pairs[0]
        # spans of the first occurrence, as the aligner would give them
        return Result(text=text, tasks=list(tasks), relations=[Relation(
            head=Mention(text=head), type="member_of", tail=Mention(text=tail))])


@pytest.mark.needs_data
def test_mnre_is_asked_with_the_gold_pair_and_triples_mode_without(tmp_path) -> None:
    agent = PairEcho()
    report = run_eval("mnre:val", agent, tmp_path / "pairs", limit=40, baselines=False, plots=False)
    examples, _ = load_examples("mnre:val", limit=40)
    assert agent.pairs == [[(e.meta["head"]["text"], e.meta["tail"]["text"])] for e in examples]
    gold = [e.meta["relation"] for e in examples]
    rc = report.systems["reamo"].row("rc").scores
    # "member_of" maps back to /per/org/member_of and lands on the given pair's spans
    assert rc.n_pred == 40 and rc.tp == gold.count("/per/org/member_of") > 0
    triples = PairEcho()
    run_eval("mnre:val", triples, tmp_path / "triples", limit=2, baselines=False, plots=False, triples=True)
    assert triples.pairs == [None, None]


def test_mnre_short_relation_names_map_back() -> None:
    assert MNRE_RELATION_ALIASES["org/alternate_names"] == "/org/org/alternate_names"
    assert MNRE_RELATION_ALIASES["member_of"] == "/per/org/member_of"
    assert MNRE_RELATION_ALIASES["alternate_names"] == "/per/per/alternate_names"  # the more frequent one
    assert MNRE_RELATION_ALIASES["/org/org/alternate_names"] == "/org/org/alternate_names"


def test_speech_version_realigns_mentions_onto_the_written_sentence() -> None:
    from reamo.eval.speech import realign
    from reamo.schema import Entity, Mention, Relation, TextSpan, TimeSpan

    written = "Rafael Nadal gets engaged to Mery Perello in Mallorca"
    heard = Result(
        text="rafael nadal gets engaged to murray perrello in mallorca",
        entities=[
            Entity(text="rafael nadal", type="PER", span=TextSpan(start=0, end=12),
                   groundings=[TimeSpan(start=0.4, end=0.9)]),
            Entity(text="murray perrello", type="PER", span=TextSpan(start=29, end=44)),
        ],
        relations=[Relation(head=Mention(text="rafael nadal"), type="couple", tail=Mention(text="Mallorca"))],
    )
    moved = realign(heard, written)
    assert moved.text == written
    assert moved.entities[0].span == TextSpan(start=0, end=12) and moved.entities[0].groundings  # time span kept
    assert moved.entities[1].span is None  # ASR got the name wrong: it cannot count as correct
    assert moved.relations[0].tail.span == TextSpan(start=45, end=53)


def test_calibration_picks_the_margin_with_the_best_mnre_f1() -> None:
    from reamo.eval.calibrate import PairScore, best_bias

    peer, member = "/per/per/peer", "/per/org/member_of"
    scores = [PairScore(id=str(i), gold=g, margin=m, label=l) for i, (g, m, l) in enumerate([
        (peer, 1.5, peer), (member, 1.0, member), (peer, 0.4, member), ("None", -0.2, peer),
        ("None", -0.8, peer), ("None", -1.0, member), (member, -1.6, member)])]
    calibration = best_bias(scores)
    # 4 gold relations; above a margin of 0.7 the two top pairs are predicted, both right: P 1, R 0.5, F1 2/3
    # (lower margins add a wrong label and Nones: 0.571, 0.5, ...; higher ones drop a right one: 0.4)
    assert calibration.bias == pytest.approx(0.7)
    assert calibration.f1 == pytest.approx(2 / 3) and calibration.recall == pytest.approx(0.5)
    assert calibration.argmax_f1 == pytest.approx(4 / 7)  # margin 0: three predicted, two right (P 2/3, R 1/2)


def test_heard_share_counts_gold_mentions_the_transcript_contains() -> None:
    from reamo.eval.speech import heard_share
    from reamo.schema import Entity

    gold = Result(text="Rafael Nadal met Mery Perello in Mallorca", entities=[
        Entity(text="Rafael Nadal", type="PER"), Entity(text="Mery Perello", type="PER"),
        Entity(text="Mallorca", type="LOC")])
    example = Example(id="x", text=gold.text, gold=gold, source="gmner", split="dev")
    heard = Result(text="rafael nadal met murray perrello in mallorca",
                   context='Speech transcript (3.0 s): "rafael nadal met murray perrello in mallorca"')
    assert heard_share([example], [heard]) == (2, 3)  # the misheard name cannot be found


def test_event_calibration_picks_the_margin_with_the_best_trigger_f1() -> None:
    from reamo.eval.calibrate import EventScore, best_event_bias

    scores = [EventScore(id=str(i), margin=m, correct=c, predicted=p, gold=g) for i, (m, c, p, g) in enumerate([
        (3.0, 1, 1, 1), (2.0, 1, 1, 1), (1.0, 0, 1, 0), (0.5, 0, 2, 0), (0.2, 0, 1, 1), (None, 0, 0, 1)])]
    calibration = best_event_bias(scores)
    # kept above 1.5: 2 right of 2 predicted, 4 gold -> P 1, R 0.5, F1 2/3; keeping everything: 2/6, 2/4 -> 0.4
    assert calibration.bias == pytest.approx(1.5)
    assert calibration.f1 == pytest.approx(2 / 3) and calibration.precision == 1.0 and calibration.recall == 0.5
    assert calibration.greedy_f1 == pytest.approx(0.4)
    assert calibration.n_with_events == 4


@pytest.mark.needs_data
def test_speech_report_gives_the_asr_ceiling(tmp_path) -> None:
    """The speech version really speaks each tweet (espeak-ng) and hands the agent the audio alone; a stand-in agent
    that 'hears' only the first word of each tweet leaves a ceiling the report must state."""

    class FirstWordHearer:
        settings = None

        def __init__(self) -> None:
            self.audio: list[Path] = []

        def extract(self, text=None, audio=None, tasks=(), labels=None, pairs=None, **_: object) -> Result:
            self.audio.append(Path(audio))
            assert text is None  # the audio alone
            return Result(text="", tasks=list(tasks), context=f'Speech transcript: "{self.heard.pop(0)}"')

    examples, _ = load_examples("gmner:dev", limit=2)
    agent = FirstWordHearer()
    agent.heard = [e.text.split()[0] for e in examples]
    report = run_eval("gmner:dev", agent, tmp_path, limit=2, baselines=False, plots=False, speech=True)
    assert len(agent.audio) == 2 and all(p.is_file() and p.stat().st_size > 1000 for p in agent.audio)
    heard = sum(1 for e, word in zip(examples, [e.text.split()[0] for e in examples])
                for g in e.gold.entities if g.text.casefold() in f'speech transcript: "{word}"'.casefold())
    total = sum(len(e.gold.entities) for e in examples)
    assert any(n.startswith(f"ASR ceiling: {heard} of {total} ") for n in report.notes)


@pytest.mark.needs_data
def test_calibration_keeps_out_the_sentences_of_every_tuning_pass(tiny_llm_dir, tmp_path) -> None:
    """A model tuned in two passes (the second continuing the first's adapter) is calibrated on sentences neither
    pass trained on."""
    import yaml
    from reamo.eval.calibrate import held_out_sentences, training_texts

    model = ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]).model_dump()
    recipes = []
    for seed in (0, 1):
        # the second pass continues a folder that is not there (a fresh clone has no runs/): only the recipe is read
        recipe = {"stage": 4, "model": model if seed == 0 else str(tmp_path / "pass0" / "final"),
                  "output_dir": str(tmp_path / f"pass{seed}"), "data": {"m2e2": 30, "gmner_text": 10, "seed": seed}}
        recipes.append(tmp_path / f"pass{seed}.yaml")
        recipes[-1].write_text(yaml.safe_dump(recipe), encoding="utf-8")
    first, second = training_texts(recipes[0]), training_texts(recipes[1])
    both = training_texts(recipes)
    assert both == first | second and len(both) > max(len(first), len(second))  # the seeds drew other sentences
    held = held_out_sentences(both, limit=5000)
    assert held and not {e.text for e in held} & both
    assert {e.text for e in held_out_sentences(first, limit=5000)} & second  # one recipe alone would leak pass 2
