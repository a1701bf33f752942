"""The `reamo` command as a user types it: version, extract with --json, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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
