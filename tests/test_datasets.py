"""Readers on the real GMNER / MNRE / M2E2 files (../shared/data or $REAMO_DATA_DIR), plus location, error and jsonlines
handling (those run without the datasets)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from reamo.datasets import (
    DATA_DIR_ENV,
    DatasetError,
    DatasetNotFoundError,
    Example,
    m2e2_split_of,
    read_gmner,
    read_jsonl,
    read_m2e2,
    read_mnre,
    write_jsonl,
)
from reamo.schema import ImageRegion, NoRegion

from conftest import data_dir

DATA = data_dir()


@pytest.fixture(scope="module")
def gmner_dev() -> list[Example]:
    return read_gmner("dev", root=DATA, strict=True)


@pytest.fixture(scope="module")
def m2e2() -> dict[str, list[Example]]:
    return {split: read_m2e2(split, root=DATA, strict=True) for split in ("train", "dev")}


def _assert_spans_slice_back(examples: list[Example]) -> None:
    for example in examples:
        assert example.gold.text == example.text
        mentions = list(example.gold.entities)
        mentions += [m for r in example.gold.relations for m in (r.head, r.tail)]
        mentions += [e.trigger for e in example.gold.events]
        mentions += [a.entity for e in example.gold.events for a in e.arguments]
        for mention in mentions:
            assert mention.span is not None
            assert example.text[mention.span.start : mention.span.end] == mention.text, example.id


@pytest.mark.needs_data
def test_gmner_dev_counts_and_groundings(gmner_dev: list[Example]) -> None:
    assert len(gmner_dev) == 1500
    entities = [e for ex in gmner_dev for e in ex.gold.entities]
    assert len(entities) == 2450
    assert Counter(e.type for e in entities) == {"PER": 1072, "ORG": 595, "LOC": 407, "OTHER": 376}
    grounded = [e for e in entities if any(isinstance(g, ImageRegion) for g in e.groundings)]
    assert len(grounded) == 991  # the README's "about 60% ungroundable"
    ungrounded = [e for e in entities if not any(isinstance(g, ImageRegion) for g in e.groundings)]
    assert len(ungrounded) == 2450 - 991
    for entity in ungrounded:
        assert entity.ungroundable and [type(g) for g in entity.groundings] == [NoRegion]
    _assert_spans_slice_back(gmner_dev)
    assert len({ex.id for ex in gmner_dev}) == 1500


@pytest.mark.needs_data
def test_gmner_tweet_with_two_boxes_for_one_entity(gmner_dev: list[Example]) -> None:
    tweet = next(ex for ex in gmner_dev if ex.id == "gmner:dev:O_4862")
    assert tweet.image == "O_4862.jpg" and tweet.gold.media == {"image": "O_4862.jpg"}
    assert (tweet.meta["image_width"], tweet.meta["image_height"]) == (600, 398)
    (entity,) = tweet.gold.entities
    assert (entity.text, entity.type) == ("Taylor Swift", "PER")
    assert [g.box.xyxy for g in entity.groundings] == [(32.0, 1.0, 275.0, 398.0), (300.0, 2.0, 600.0, 398.0)]


@pytest.mark.needs_data
def test_gmner_first_tweet_text_and_limit() -> None:
    (first,) = read_gmner("dev", root=DATA, limit=1)
    assert first.id == "gmner:dev:1768609"
    assert first.text.startswith("RT @ DrottM : MT @ tedcruz45 : Ted Cruz speaks")
    assert [(e.text, e.type, e.span.start) for e in first.gold.entities] == [("Ted Cruz", "PER", 31)]


@pytest.mark.needs_data
def test_mnre_lines_parse_and_pairs_are_kept() -> None:
    val = read_mnre("val", root=DATA, strict=True)
    train = read_mnre("train", root=DATA, strict=True)
    assert (len(train), len(val)) == (12247, 1624)
    assert sum(len(ex.gold.relations) for ex in val) == 624  # 1,000 of the 1,624 pairs are "None"
    assert Counter(ex.meta["relation"] for ex in val)["None"] == 1000
    assert len({ex.meta["relation"] for ex in train}) == 23
    _assert_spans_slice_back(val)
    first = val[0]
    assert first.gold.tasks == ["re"] and {e.type for e in first.gold.entities} == {"ENTITY"}
    head = first.meta["head"]
    assert first.text[head["span"]["start"] : head["span"]["end"]] == head["text"]
    for ex in val:
        if ex.meta["relation"] == "None":
            assert not ex.gold.relations and len(ex.gold.entities) == 2


@pytest.mark.needs_data
def test_m2e2_split_is_deterministic_disjoint_and_sized(m2e2: dict[str, list[Example]]) -> None:
    train, dev = m2e2["train"], m2e2["dev"]
    assert (len(train), len(dev)) == (5249, 764)  # documented in reamo.datasets
    assert (sum(len(e.gold.events) for e in train), sum(len(e.gold.events) for e in dev)) == (932, 173)
    assert {e.id for e in read_m2e2("dev", root=DATA)} == {e.id for e in dev}
    assert not {e.meta["sentence_id"] for e in train} & {e.meta["sentence_id"] for e in dev}
    assert not {e.meta["article_id"] for e in train} & {e.meta["article_id"] for e in dev}
    assert all(m2e2_split_of(e.meta["sentence_id"]) == "dev" for e in dev)
    _assert_spans_slice_back(train + dev)


@pytest.mark.needs_data
def test_m2e2_uses_token_text_not_detokenized_text(m2e2: dict[str, list[Example]]) -> None:
    examples = m2e2["train"] + m2e2["dev"]
    entity_texts = {e.text for ex in examples for e in ex.gold.entities}
    assert "Israel 's Supreme Court" in entity_texts and "Israel's Supreme Court" not in entity_texts
    event = next(ev for ex in examples for ev in ex.gold.events if ev.arguments)
    assert event.type in {"Conflict:Attack", "Movement:Transport", "Life:Die", "Justice:Arrest-Jail", "Contact:Meet",
                          "Conflict:Demonstrate", "Contact:Phone-Write", "Transaction:Transfer-Money"}


def test_missing_data_dir_names_the_place_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"gmner.*dev\.txt.*REAMO_DATA_DIR"):
        read_gmner("dev", root=tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        read_mnre("val")
    with pytest.raises(DatasetError, match="choose one of train, val"):
        read_mnre("dev", root=DATA)


def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gmner").mkdir()
    conll = tmp_path / "gmner" / "dev.txt"
    conll.write_text("IMGID:1\nHello\tO\nParis\tB-LOC\nbroken line\n\nIMGID:2\nBob\tB-PER\n", encoding="utf-8")
    (tmp_path / "mnre").mkdir()
    (tmp_path / "mnre" / "val.txt").write_text(
        "{'token': ['a', 'b'], 'h': {'name': 'a', 'pos': [0, 1]}, 't': {'name': 'b', 'pos': [1, 2]}, "
        "'img_id': 'x.jpg', 'relation': 'None'}\n__import__('os').system('echo pwned')\n", encoding="utf-8")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="reamo.datasets"):
        tweets = read_gmner("dev")
        pairs = read_mnre("val")
    assert [(t.text, [e.text for e in t.gold.entities]) for t in tweets] == [
        ("Hello Paris", ["Paris"]), ("Bob", ["Bob"])]
    assert len(pairs) == 1 and pairs[0].gold.relations == []
    assert f"{conll}:4" in caplog.text and f"{tmp_path / 'mnre' / 'val.txt'}:2" in caplog.text
    with pytest.raises(DatasetError, match=r"dev\.txt:4"):
        read_gmner("dev", strict=True)


@pytest.mark.needs_data
def test_jsonl_round_trip(tmp_path: Path, gmner_dev: list[Example], caplog: pytest.LogCaptureFixture) -> None:
    examples = gmner_dev[:20] + read_mnre("val", root=DATA, limit=5)
    path = tmp_path / "out" / "examples.jsonl"
    assert write_jsonl(examples, path) == 25
    assert read_jsonl(path) == examples
    assert not list(path.parent.glob("*.tmp"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "broken"}\n')
    with caplog.at_level(logging.WARNING, logger="reamo.datasets"):
        assert len(read_jsonl(path)) == 25
    assert f"{path}:26" in caplog.text
