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
    assert picture.size[0] > 200 and len(set(picture.convert("L").getdata())) > 2  # something was drawn
    with pytest.raises(gr.Error, match="no graph database"):
        show_neighbourhood(str(tmp_path / "missing"), name, 1)
