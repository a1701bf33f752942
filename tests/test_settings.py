"""Where the agent's calibrated settings live: shipped with the package, overlaid by the user's own file (issue 27)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from reamo.cli import _DEFAULT_RECIPES
from reamo.errors import ConfigError
from reamo.eval.calibrate import write_setting
from reamo import files
from reamo.model import embedded_default

REPO_SHIPPED = embedded_default.SHIPPED_SETTINGS


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("REAMO_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shipped" / "settings.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"pair_none_bias": 0.2, "event_none_bias": 0.1, "_about": {"x": 1}}))
    monkeypatch.setattr(embedded_default, "SHIPPED_SETTINGS", path)
    return path


def test_user_settings_live_in_the_config_folder(config_dir: Path) -> None:
    assert files.user_config_dir() == config_dir
    assert embedded_default.user_settings_path() == config_dir / "settings.json"


def test_user_settings_overlay_the_shipped_ones_and_the_log_says_which_files(
        config_dir: Path, shipped: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reamo.model.embedded_default"):
        assert embedded_default.shipped_settings() == {"pair_none_bias": 0.2, "event_none_bias": 0.1}
    assert str(shipped) in caplog.text and str(config_dir) not in caplog.text
    config_dir.mkdir()
    user = embedded_default.user_settings_path()
    write_setting(user, "pair_none_bias", -0.5, "calibrated by me", {"n": 3}, about_key="calibration")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reamo.model.embedded_default"):
        assert embedded_default.shipped_settings() == {"pair_none_bias": -0.5, "event_none_bias": 0.1}
    assert f"{shipped} then {user}" in caplog.text


def test_a_broken_user_settings_file_is_named(config_dir: Path, shipped: Path) -> None:
    config_dir.mkdir()
    (config_dir / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"settings\.json: cannot read these agent settings"):
        embedded_default.shipped_settings()


def test_calibrate_defaults_write_the_user_file_and_read_the_packaged_recipes(
        tmp_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from any folder: recipes come from the installed package, the result goes to the user's settings."""
    from reamo.cli import app

    class Outcome(BaseModel):
        bias: float

    seen: dict = {}

    def fake_calibrate(agent, recipes, out, limit):
        seen.update(recipes=recipes, out=out, limit=limit)
        write_setting(out, "pair_none_bias", -0.25, "test", {}, about_key="calibration")
        return Outcome(bias=-0.25)

    monkeypatch.setattr("reamo.agent.Agent.from_pretrained", classmethod(lambda cls, *a, **k: object()))
    monkeypatch.setattr("reamo.eval.calibrate.calibrate", fake_calibrate)
    before = REPO_SHIPPED.read_bytes() if REPO_SHIPPED.is_file() else None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    result = CliRunner().invoke(app, ["calibrate-pairs", "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert seen["out"] == config_dir / "settings.json"
    assert json.loads(seen["out"].read_text())["pair_none_bias"] == -0.25
    packaged = Path(__import__("importlib").util.find_spec("reamo.tuning").submodule_search_locations[0])
    assert [p.name for p in seen["recipes"]] == list(_DEFAULT_RECIPES)  # one per pass, in order
    assert all(p.is_file() and p.parent == packaged / "configs" for p in seen["recipes"])
    assert (REPO_SHIPPED.read_bytes() if REPO_SHIPPED.is_file() else None) == before  # the package is untouched
    assert not list(elsewhere.iterdir())  # nothing written where the command was run

    explicit = tmp_path / "maintainer" / "settings.json"
    result = CliRunner().invoke(app, ["calibrate-pairs", "--out", str(explicit), "--config",
                                      str(seen["recipes"][0])])
    assert result.exit_code == 0, result.output
    assert seen["out"] == explicit and explicit.is_file() and len(seen["recipes"]) == 1

    result = CliRunner().invoke(app, ["calibrate-events", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "--config file not found" in result.output


def test_a_tuned_model_folder_carries_its_calibrated_settings(tmp_path: Path, tiny_llm_dir) -> None:
    """`reamo calibrate-* --model F --out F/settings.json`: the margins travel with the model they were fitted to,
    and an explicit argument still wins."""
    from reamo.agent import Agent
    from reamo.model import ReamoConfig, ReamoModel

    folder = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).save_pretrained(
        tmp_path / "tuned")
    assert Agent.from_pretrained(str(folder)).settings.pair_none_bias != -0.25
    write_setting(folder / "settings.json", "pair_none_bias", -0.25, "test", {"n": 1}, about_key="calibration")
    assert Agent.from_pretrained(str(folder)).settings.pair_none_bias == -0.25
    assert Agent.from_pretrained(str(folder), pair_none_bias=0.5).settings.pair_none_bias == 0.5
    (folder / "settings.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="settings.json: agent settings must be a JSON object"):
        Agent.from_pretrained(str(folder))
    # the folder's trigger head travels with it too, and one fitted on another model is refused at load
    from reamo.model.decision_heads import DecisionHead, DecisionHeadConfig

    (folder / "settings.json").unlink()
    hidden = Agent.from_pretrained(str(folder)).model.llm.config.hidden_size
    DecisionHead(DecisionHeadConfig(layer=1, labels=["None", "Contact:Meet"], hidden_size=hidden,
                                    answer_start="Events:")).save(folder, "trigger_head")
    assert Agent.from_pretrained(str(folder)).trigger_head.config.labels == ["None", "Contact:Meet"]
    DecisionHead(DecisionHeadConfig(layer=1, labels=["None", "Contact:Meet"], hidden_size=hidden + 1,
                                    answer_start="Events:")).save(folder, "trigger_head")
    with pytest.raises(ConfigError, match="fitted on another model"):
        Agent.from_pretrained(str(folder))
    (folder / "trigger_head.safetensors").unlink()
    DecisionHead(DecisionHeadConfig(layer=1, labels=["None", "couple"], hidden_size=hidden,
                                    answer_start="Relations:")).save(folder, "relation_head")
    loaded = Agent.from_pretrained(str(folder))
    assert loaded.relation_head.config.labels == ["None", "couple"] and loaded.trigger_head is None
    DecisionHead(DecisionHeadConfig(layer=99, labels=["None", "couple"], hidden_size=hidden,
                                    answer_start="Relations:")).save(folder, "relation_head")
    with pytest.raises(ConfigError, match="'relation_head'.*fitted on another model.*reamo fit-relation-head"):
        Agent.from_pretrained(str(folder))


def test_event_calibration_reports_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reamo calibrate-events` prints the calibrations it returns: they must say how many training sentences were
    kept out, as the written settings.json does (the printed copy said 0)."""
    from types import SimpleNamespace

    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a", "b", "c"})
    monkeypatch.setattr(calibrate, "held_out_m2e2_sentences", lambda excluded, limit, seed=0: ["s1", "s2"])
    scored = [calibrate.ScoredEventSentence(triggers=[(1.0, True, [(0.5, True), (-2.0, False)])], n_triggers=1,
                                            n_arguments=1),
              calibrate.ScoredEventSentence(triggers=[(-1.0, False, [(0.3, False)])], n_triggers=0, n_arguments=0)]
    monkeypatch.setattr(calibrate, "score_event_decisions", lambda agent, examples, written=None: scored)
    agent = SimpleNamespace(settings=SimpleNamespace(trigger_none_bias=None, argument_none_bias=None))
    out = tmp_path / "settings.json"
    result = calibrate.calibrate_event_decisions(agent, [tmp_path / "r.yaml"], out)
    written = json.loads(out.read_text())["_about"]
    for what in ("trigger", "argument"):
        assert result[what].n_excluded_texts == 3
        assert written[f"{what}_calibration"] == result[what].model_dump(mode="json")
    assert result["trigger"].f1 == 1.0 and result["trigger"].bias > -1.0
    assert result["trigger"].f1_interval is not None and "90% interval" in json.loads(out.read_text())["_about"][
        "trigger_none_bias"]


def test_event_calibration_with_a_trigger_head_calibrates_the_head_and_the_ranking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a trigger head, the ranking's margin (for event types the head does not know) comes from a run without
    the head, the head's margin and the arguments from a second run with it; the head is put back."""
    from types import SimpleNamespace

    from reamo.eval import calibrate
    from reamo.model.decision_heads import DecisionHeadConfig

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_m2e2_sentences", lambda excluded, limit, seed=0: ["s1", "s2"])
    head = SimpleNamespace(config=DecisionHeadConfig(layer=24, labels=["None", "Contact:Meet"], hidden_size=8,
                                                     answer_start="Events:"))
    by_head = [calibrate.ScoredEventSentence(triggers=[(3.0, True, [(0.5, True)]), (2.0, False, [])], n_triggers=1,
                                             n_arguments=1)]
    by_ranking = [calibrate.ScoredEventSentence(triggers=[(-0.5, True, [(-3.0, False)]), (-1.5, False, [])],
                                                n_triggers=1, n_arguments=1)]
    seen = []

    def score(agent, examples, written=None):
        seen.append((agent.trigger_head, agent.settings.trigger_head_none_bias))
        return by_head if agent.trigger_head is not None else by_ranking

    monkeypatch.setattr(calibrate, "score_event_decisions", score)
    agent = SimpleNamespace(trigger_head=head, settings=SimpleNamespace(
        trigger_none_bias=None, trigger_head_none_bias=None, argument_none_bias=None))
    out = tmp_path / "settings.json"
    result = calibrate.calibrate_event_decisions(agent, [tmp_path / "r.yaml"], out)
    assert seen == [(None, None), (head, -1e9)] and agent.trigger_head is head
    written = json.loads(out.read_text())
    assert 2.0 <= written["trigger_head_none_bias"] < 3.0 and -1.5 <= written["trigger_none_bias"] < -0.5
    assert written["argument_none_bias"] < 0.5  # the head's event keeps its right argument
    assert "trigger head (layer 24" in written["_about"]["trigger_head_none_bias"]
    assert written["_about"]["trigger_head_calibration"] == result["trigger_head"].model_dump(mode="json")
    assert written["_about"]["trigger_calibration"] == result["trigger"].model_dump(mode="json")


def test_triple_calibration_writes_its_margin_with_the_interval_of_its_f1(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_mnre_sentences", lambda excluded, limit, seed=0: ["s1", "s2", "s3"])
    sentences = [([(2.0, True), (0.5, False)], 1), ([(1.0, True)], 2), ([(-1.0, False)], 0)]
    monkeypatch.setattr(calibrate, "score_triples", lambda agent, examples: sentences)
    agent = SimpleNamespace(settings=SimpleNamespace(triple_none_bias=None))
    out = tmp_path / "settings.json"
    result = calibrate.calibrate_triples(agent, [tmp_path / "r.yaml"], out)
    # above 0.75: two answers, both right, of three gold triples (F1 0.8), better than also keeping 0.5 (2 of 3)
    assert result.bias == pytest.approx(0.75) and result.f1 == pytest.approx(0.8) and result.n_gold == 3
    low, high = result.f1_interval
    assert low <= 0.8 <= high
    written = json.loads(out.read_text())
    assert written["triple_none_bias"] == pytest.approx(0.75)
    assert written["_about"]["triple_calibration"]["f1_interval"] == [low, high]


def test_pair_calibration_writes_the_interval_of_its_f1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: set())
    monkeypatch.setattr(calibrate, "held_out_pairs", lambda excluded, limit, seed=0: ["p"] * 4)
    scores = [calibrate.PairScore(id="1", gold="/per/per/peer", label="/per/per/peer", margin=1.0),
              calibrate.PairScore(id="2", gold="None", label="/per/per/peer", margin=-2.0),
              calibrate.PairScore(id="3", gold="/per/loc/place_of_birth", label="/per/per/peer", margin=0.5),
              calibrate.PairScore(id="4", gold="/per/org/member_of", label="/per/org/member_of", margin=2.0)]
    monkeypatch.setattr(calibrate, "score_pairs", lambda agent, examples: scores)
    out = tmp_path / "settings.json"
    result = calibrate.calibrate(object(), [tmp_path / "r.yaml"], out)
    assert result.bias == pytest.approx(0.75) and result.f1 == pytest.approx(0.8)  # 2 right of 2 answers, 3 gold
    low, high = result.f1_interval
    assert low < 0.8 <= high
    written = json.loads(out.read_text())["_about"]
    assert written["calibration"]["f1_interval"] == [low, high] and "90% interval" in written["pair_none_bias"]
