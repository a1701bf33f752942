"""Corpus extraction on a local Ray with 2 CPU actors: every id once, resumable, results that parse as `Result`."""

from __future__ import annotations

import functools
import json

import pyarrow.parquet as pq
import pytest

from reamo.corpus import done_ids, extract_corpus, pretrained_agent, read_results
from reamo.errors import ConfigError
from reamo.model import ReamoConfig, ReamoModel
from reamo.schema import Result

ray = pytest.importorskip("ray", reason="corpus extraction needs Ray Data: pip install 'reamo[corpus]'")
pytestmark = pytest.mark.slow  # ~75 s: Ray start-up plus two actor processes importing torch, three runs

TEXTS = [
    "Rafael Nadal gets engaged to Mery Perello in Mallorca.",
    "Barack Obama visited Berlin in 2013.",
    "Apple opened a store in Paris.",
    "Serena Williams won in Melbourne.",
    "The United Nations met in Geneva.",
    "Lionel Messi joined Inter Miami.",
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
def test_two_actors_extract_each_id_once_and_resume_skips_them(tmp_path, tiny_llm_dir, local_ray) -> None:
    model_dir = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).save_pretrained(
        tmp_path / "tiny-reamo")
    factory = functools.partial(pretrained_agent, str(model_dir), max_new_tokens=8, few_shot=False)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out"

    stats = extract_corpus(corpus, out, factory, num_actors=2, batch_size=2, tasks="ner,re")
    assert (stats.total, stats.skipped, stats.processed, stats.succeeded, stats.failed) == (6, 0, 6, 6, 0)
    rows = [row for path in sorted(out.glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert sorted(r["id"] for r in rows) == sorted(f"doc-{i}" for i in range(6))  # each id exactly once
    files = len(list(out.glob("part-*.parquet")))
    assert 3 <= files <= 6  # one atomic file per actor call (batches of at most 2)
    results = read_results(out)
    for index, text in enumerate(TEXTS):
        result = results[f"doc-{index}"]
        assert isinstance(result, Result) and result.text == text and result.tasks == ["ner", "re"]
        assert Result.model_validate_json(result.model_dump_json()) == result
    assert not list(out.glob(".*.tmp"))  # no temporaries left behind

    again = extract_corpus(corpus, out, factory, num_actors=2, batch_size=2, tasks="ner,re")
    assert (again.total, again.skipped, again.processed) == (6, 6, 0)
    assert len(list(out.glob("part-*.parquet"))) == files  # nothing rewritten

    # a crash left a damaged file: its ids are set aside and extracted again, the others are skipped
    damaged = min(out.glob("part-*.parquet"))
    lost = set(pq.read_table(damaged).column("id").to_pylist())
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert done_ids(out) == {f"doc-{i}" for i in range(6)} - lost
    third = extract_corpus(corpus, out, factory, num_actors=2, batch_size=2, tasks="ner,re")
    assert (third.skipped, third.processed, third.succeeded) == (6 - len(lost), len(lost), len(lost))
    assert set(read_results(out)) == {f"doc-{i}" for i in range(6)}


@pytest.mark.timeout(300)
def test_bad_rows_are_recorded_and_bad_corpora_refused(tmp_path, tiny_llm_dir, local_ray) -> None:
    model_dir = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).save_pretrained(
        tmp_path / "tiny-reamo")
    factory = functools.partial(pretrained_agent, str(model_dir), max_new_tokens=4, few_shot=False)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "ok", "text": TEXTS[0], "image": None}) + "\n"
                      + json.dumps({"id": "missing-image", "text": TEXTS[1], "image": "nowhere.jpg"}) + "\n")
    stats = extract_corpus(corpus, tmp_path / "out", factory, num_actors=1, batch_size=2, tasks="ner")
    assert (stats.succeeded, stats.failed) == (1, 1)
    results = read_results(tmp_path / "out")
    assert isinstance(results["ok"], Result)
    assert "MediaError" in results["missing-image"] and "nowhere.jpg" in results["missing-image"]

    corpus.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    with pytest.raises(ConfigError, match="repeats ids"):
        extract_corpus(corpus, tmp_path / "out2", factory, num_actors=1)
    with pytest.raises(ConfigError, match="resume"):
        extract_corpus(tmp_path / "corpus.jsonl", tmp_path / "out", factory, resume=False)
