"""The `reamo` command as a user types it: version, extract with --json, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from reamo import __version__
from reamo.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "reamo.cli", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_missing_file_and_empty_input_are_one_line_errors(tmp_path) -> None:
    result = runner.invoke(app, ["extract", "--text", "x", "--image", str(tmp_path / "nope.jpg")])
    assert result.exit_code == 2 and "--image file not found" in result.output
    result = runner.invoke(app, ["extract"])
    assert result.exit_code == 2 and "nothing to extract from" in result.output
    result = runner.invoke(app, ["extract", "--text", "x", "--max-new-tokens", "0"])
    assert result.exit_code == 2


def test_unsupported_media_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"this is not an image at all")
    result = runner.invoke(app, ["extract", "--text", "Nadal", "--image", str(bad), "--tasks", "ner"])
    assert result.exit_code == 2
    assert "photo.jpg" in result.output and "Traceback" not in result.output


def test_extract_writes_json_on_the_embedded_default(tmp_path) -> None:
    out = tmp_path / "result.json"
    result = runner.invoke(
        app,
        ["extract", "--text", "Rafael Nadal gets engaged to Mery Perello in Mallorca", "--tasks", "ner,re",
         "--json", str(out), "--max-new-tokens", "60"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["text"].startswith("Rafael Nadal") and data["tasks"] == ["ner", "re"]
    assert "Entities" in result.output
    for entity in data["entities"]:
        assert data["text"][entity["span"]["start"] : entity["span"]["end"]].casefold() == entity["text"].casefold()


# ---------------------------------------------------------------------------------------------------------------
# Issue 27: inputs are checked before the model loads (~10 s), each with one line that says what to do
# ---------------------------------------------------------------------------------------------------------------


class _FakeAgent:
    """Stands in for the model: records what extract() got."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def extract(self, **kwargs):
        from reamo.schema import Result

        self.calls.append(kwargs)
        return Result(text=kwargs.get("text") or "", tasks=list(kwargs["tasks"].split(",")))

    def chat(self, messages):
        return {"role": "assistant", "content": f"heard {messages[-1]['content']}"}


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[_FakeAgent]:
    """Agent.from_pretrained replaced: each load is recorded (and answers with a fake agent)."""
    loads: list[_FakeAgent] = []

    def from_pretrained(cls, *args, **kwargs):
        loads.append(_FakeAgent())
        return loads[-1]

    monkeypatch.setattr("reamo.agent.Agent.from_pretrained", classmethod(from_pretrained))
    return loads


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "   \t "], "nothing to extract from: --text is empty or only whitespace"),
        (["--text", "Nadal", "--tasks", "xyz"], "--tasks: unknown task(s) xyz; choose from ner, re, ee"),
        (["--text", "Nadal", "--tasks", "ner,events"], "unknown task(s) events; choose from ner, re, ee"),
        (["--text", "Nadal", "--labels", "PER,,ORG"], "--labels 'PER,,ORG': give comma-separated, non-empty"),
        (["--text", "caf\udce9 in Paris"], "--text is not valid UTF-8 (byte 0xe9 at character 3)"),
    ],
    ids=["whitespace-text", "unknown-task", "one-unknown-task", "empty-label", "non-utf8-text"],
)
def test_bad_input_is_refused_before_the_model_loads(args: list[str], message: str, model_loads: list) -> None:
    result = runner.invoke(app, ["extract", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert model_loads == []


@pytest.mark.parametrize(("flag", "kind"), [("--image", "an image"), ("--audio", "an audio"), ("--video", "a video")])
def test_a_directory_as_media_says_so(tmp_path, flag: str, kind: str, model_loads: list) -> None:
    result = runner.invoke(app, ["extract", "--text", "Nadal", flag, str(tmp_path)])
    assert result.exit_code == 2
    assert f"{flag} is a directory, not a file: {tmp_path}; give {kind} file" in result.output, result.output
    assert model_loads == []


def test_non_utf8_bytes_on_the_real_command_line() -> None:
    """The bytes as a shell passes them (not a str): one line, exit 2, no traceback, no model."""
    out = subprocess.run([sys.executable, "-m", "reamo.cli", "extract", "--text", b"caf\xe9 in Paris"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--text is not valid UTF-8 (byte 0xe9" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_valid_labels_and_tasks_reach_the_agent_normalized(model_loads: list) -> None:
    result = runner.invoke(app, ["extract", "--text", "Rafael Nadal in Paris", "--tasks", " re , NER ",
                                 "--labels", "PER, LOC"])
    assert result.exit_code == 0, result.output
    [agent] = model_loads
    [call] = agent.calls
    assert call["tasks"] == "ner,re" and call["labels"] == ["PER", "LOC"]


def test_chat_answers_a_non_utf8_line_with_an_error_and_goes_on(model_loads: list) -> None:
    result = runner.invoke(app, ["chat"], input=b"caf\xe9\nhello\n\n")
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8" in result.output and "heard hello" in result.output
    assert "Traceback" not in result.output


def test_batch_checks_tasks_and_corpus_before_starting(tmp_path) -> None:
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text('{"id": "1", "text": "Nadal"}\n', encoding="utf-8")
    result = runner.invoke(app, ["batch", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--tasks", "xyz"])
    assert result.exit_code == 2 and "--tasks: unknown task(s) xyz" in result.output, result.output
    result = runner.invoke(app, ["batch", "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--corpus not found" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_printed_relations_and_events_show_their_margins(monkeypatch) -> None:
    """Every decision shows the score it was kept with (how far it beat "None")."""
    from rich.console import Console

    import reamo.cli as cli
    from reamo.schema import Argument, Event, Mention, Relation, Result

    result = Result(text="Nadal met Federer", tasks=["ner", "re", "ee"], relations=[
        Relation(head=Mention(text="Nadal"), type="peer", tail=Mention(text="Federer"), score=2.4213)],
        events=[Event(type="Contact:Meet", trigger=Mention(text="met"), score=-0.351, arguments=[
            Argument(role="Entity", entity=Mention(text="Nadal"), score=0.694)])])
    console = Console(record=True, width=200)
    monkeypatch.setattr(cli, "console", console)
    cli.print_result(result)
    text = console.export_text()
    assert "margin" in text and "2.42" in text and "-0.35" in text and "Entity: Nadal (0.69)" in text
