"""`reamo kg` as a user types it: build from predictions, canned query, Cypher, export."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from reamo.cli import app
from reamo.datasets import read_gmner

runner = CliRunner()


def test_kg_build_query_export(tmp_path, shared_data) -> None:
    examples = read_gmner("dev", limit=30)
    predictions = tmp_path / "predictions.jsonl"
    with predictions.open("w") as handle:
        for example in examples:
            handle.write(json.dumps({"id": example.id, "result": json.loads(example.gold.to_json())}) + "\n")
    db = tmp_path / "kg"
    built = runner.invoke(app, ["kg", "build", str(predictions), "--db", str(db)])
    assert built.exit_code == 0, built.output
    again = runner.invoke(app, ["kg", "build", str(predictions), "--db", str(db)])
    assert again.exit_code == 0, again.output
    counted = runner.invoke(app, ["kg", "query", "MATCH (d:Document) RETURN count(d) AS n", "--db", str(db), "--json"])
    assert counted.exit_code == 0, counted.output
    assert json.loads(counted.output)[0]["n"] == len(examples)  # idempotent: no duplicates after the re-run
    name = examples[0].gold.entities[0].text
    where = runner.invoke(app, ["kg", "where-is", name, "--db", str(db)])
    assert where.exit_code == 0, where.output
    mentions = sum(e.text.casefold() == name.casefold() for ex in examples for e in ex.gold.entities)
    assert f"{mentions} row(s)" in where.output  # one row per text mention of the entity
    out = tmp_path / "graph.ttl"
    exported = runner.invoke(app, ["kg", "export", "--db", str(db), "--format", "ttl", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert out.stat().st_size > 0


def test_ui_graph_tab_draws_the_neighbourhood(tmp_path, shared_data) -> None:
    import gradio as gr
    import pytest

    from reamo.kg import build_graph
    from reamo.ui.app import show_neighbourhood

    examples = read_gmner("dev", limit=20)
    build_graph(((e.id, e.gold) for e in examples), tmp_path / "kg", progress=False)
    name = examples[0].gold.entities[0].text
    picture = show_neighbourhood(str(tmp_path / "kg"), name, 1)
    import numpy as np

    assert picture.size[0] > 200 and len(np.unique(np.asarray(picture.convert("L")))) > 2  # something was drawn
    # what a client sees names no server path and does not tell whether a folder exists
    with pytest.raises(gr.Error, match="no knowledge graph is configured for this server") as caught:
        show_neighbourhood(None, name, 1)
    assert "--kg-db FOLDER" in caught.value.message
    for folder in (tmp_path / "missing", tmp_path):  # absent / present but no graph: the same words
        with pytest.raises(gr.Error) as caught:
            show_neighbourhood(str(folder), name, 1)
        assert str(tmp_path) not in caught.value.message and "cannot be read" in caught.value.message
    # the operator names the one folder at start-up: `reamo ui --kg-db FOLDER` checks it before anything loads
    started = runner.invoke(app, ["ui", "--kg-db", str(tmp_path / "missing")])
    assert started.exit_code == 2 and "no knowledge graph there" in started.stderr, started.output


def _small_graph(folder) -> None:
    from reamo.kg import build_graph
    from reamo.schema import Box, Entity, ImageRegion, Result, TextSpan, TimeSpan

    nadal = Entity(text="Rafael Nadal", type="PER", span=TextSpan(start=0, end=12), groundings=[
        ImageRegion(box=Box(x1=100, y1=80, x2=260, y2=230), score=0.9, source="grounding-dino"),
        TimeSpan(start=0.4, end=1.1, score=0.8, source="whisper")])
    build_graph([("tweet-0001", Result(text="Rafael Nadal wins in Mallorca", entities=[nadal]))], folder,
                progress=False)


def _one_error_line(result) -> str:
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_kg_errors_are_one_line_and_exit_2(tmp_path) -> None:
    from pathlib import Path

    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    sources = [passwd] + [Path("/etc/passwd")] * Path("/etc/passwd").is_file()
    for source in sources:
        line = _one_error_line(runner.invoke(app, ["kg", "build", str(source), "--db", str(tmp_path / "db")]))
        assert f"{source} holds no usable lines; the first problem is line 1: not JSON" in line
    assert not (tmp_path / "db").exists()  # nothing was created for it
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "is empty" in _one_error_line(runner.invoke(app, ["kg", "build", str(empty), "--db", str(tmp_path / "db")]))
    assert "file not found" in _one_error_line(runner.invoke(app, ["kg", "build", str(tmp_path / "nope.jsonl")]))

    missing = str(tmp_path / "no-graph")
    for command in (["kg", "query", "MATCH (n) RETURN n"], ["kg", "where-is", "Nadal"], ["kg", "relations", "x"],
                    ["kg", "events", "x"], ["kg", "export", "--format", "ttl"]):
        line = _one_error_line(runner.invoke(app, [*command, "--db", missing]))
        assert "no knowledge graph in" in line and "reamo kg build" in line

    db = tmp_path / "kg"
    _small_graph(db)
    line = _one_error_line(runner.invoke(app, ["kg", "query", "MATC (n) RETURN n", "--db", str(db)]))
    assert "the graph database rejected the query: Parser exception" in line
    out = tmp_path / "evil.csv"
    line = _one_error_line(runner.invoke(app, ["kg", "query", f"COPY (RETURN 'x' AS x) TO '{out}'", "--db", str(db)]))
    assert "read-only queries cannot touch files or the network: COPY is refused" in line and not out.exists()
    line = _one_error_line(runner.invoke(app, ["kg", "query", "LOAD FROM '/etc/passwd' (file_format='csv', "
                                               "delim=':') RETURN *", "--db", str(db)]))
    assert "LOAD is refused" in line and "root" not in line
    line = _one_error_line(runner.invoke(app, ["kg", "query", "INSTALL httpfs", "--db", str(db)]))
    assert "INSTALL is refused (INSTALL downloads an extension from the network)" in line


def test_kg_where_is_fits_80_columns(tmp_path) -> None:
    db = tmp_path / "kg"
    _small_graph(db)
    shown = runner.invoke(app, ["kg", "where-is", "Rafael Nadal", "--db", str(db)], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80
    for value in ("tweet-0001", "modality", 'chars 0-12 "Rafael Nadal"', "box 100,80,260,230", "0.40-1.10 s",
                  "0.90", "grounding-dino", "3 row(s)"):
        assert value in shown.output, value
    full = runner.invoke(app, ["kg", "where-is", "Rafael Nadal", "--db", str(db), "--json"])
    rows = json.loads(full.output)
    assert {r["kind"] for r in rows} == {"text", "image", "audio"}
    assert next(r for r in rows if r["kind"] == "image")["box"] == [100, 80, 260, 230]
