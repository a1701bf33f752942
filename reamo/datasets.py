"""Readers for the benchmark datasets (GMNER, MNRE, M2E2) into one record, `Example`, with gold as a `Result`.

Every reader builds the example text by joining the dataset's tokens with single spaces and converts token offsets
to character offsets into that text, so gold spans always slice back to the gold mention text and the scorers in
`reamo.eval` can compare predictions by character span whatever the source.

Data location: `root` argument, else the environment variable `REAMO_DATA_DIR`, else `../shared/data` next to the
repository root. Lines that cannot be parsed are logged with `file:line` and skipped (or raised with `strict=True`).

Per-dataset conventions (documented because the sources leave them open):

* GMNER: one example per tweet. A gold entity whose text equals an `<object><name>` of the tweet's VOC file gets one
  `ImageRegion` per box of that name (VOC pixel coordinates copied as they are); other entities get
  `NoRegion(modality="image")`. Image size goes to `meta["image_width"]` / `meta["image_height"]`.
* MNRE: one example per line (one entity pair). The two entities have no type in MNRE, so both get the placeholder
  type `MNRE_ENTITY_TYPE` ("ENTITY") and `gold.tasks == ["re"]`: score MNRE on relations, not on NER. Relation
  "None" is kept out of `gold.relations`, but the pair and its label are kept in `meta["head"]`, `meta["tail"]`,
  `meta["relation"]` for relation classification given the pair.
* M2E2: one example per sentence. No official split; an article (sentence id minus its trailing `_<n>`) goes to
  "dev" when `int(sha1(article_id), 16) % 10 == 0`, else to "train", so sentences of one article (which share their
  images) never straddle the split. Sizes: train 5,249 sentences / 932 events, dev 764 / 173. The source's detokenized
  mention text (e.g. "Israel's") differs from the token join ("Israel 's") in ~2% of mentions; the token join wins.
  The article's image file names go to `meta["images"]` (`image` stays None: they are not per sentence).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reamo.files import atomic_path
from reamo.errors import ReamoError
from reamo.schema import Argument, Box, Entity, Event, ImageRegion, Mention, NoRegion, Relation, Result, TextSpan

logger = logging.getLogger(__name__)

# Label sets of the three datasets: the single source for training prompts (reamo.tuning) and evaluation
# prompts (reamo.eval), so a tuned model is always asked with the labels it was trained on.
GMNER_ENTITY_TYPES = ["PER", "ORG", "LOC", "OTHER"]
M2E2_ENTITY_TYPES = ["PER", "ORG", "GPE", "LOC", "FAC", "VEH", "WEA", "VALUE"]
M2E2_EVENT_TYPES = [
    "Conflict:Attack", "Movement:Transport", "Life:Die", "Justice:Arrest-Jail", "Contact:Meet",
    "Conflict:Demonstrate", "Contact:Phone-Write", "Transaction:Transfer-Money",
]
MNRE_RELATION_TYPES = [  # most frequent first (MNRE train)
    "/per/per/peer", "/per/org/member_of", "/loc/loc/contain", "/per/misc/present_in", "/org/loc/locate_at",
    "/per/loc/place_of_residence", "/misc/loc/held_on", "/org/org/subsidiary", "/per/per/alternate_names",
    "/per/per/couple", "/per/misc/nationality", "/misc/misc/part_of", "/org/org/alternate_names",
    "/per/loc/place_of_birth", "/per/misc/awarded", "/per/per/charges", "/per/per/parent", "/per/per/siblings",
    "/per/per/neighbor", "/per/per/alumi", "/per/misc/religion", "/per/misc/race",
]


def _short_relation_names(labels: list[str]) -> dict[str, str]:
    """Full MNRE label -> the short name prompts use ("member_of"): a third of the prompt tokens of the full
    labels. A name two labels share keeps its type prefix on the less frequent one ("org/alternate_names")."""
    short: dict[str, str] = {}
    for label in labels:  # most frequent first
        name = label.rsplit("/", 1)[-1]
        short[label] = name if name not in short.values() else "/".join(label.strip("/").split("/")[1:])
    return short


MNRE_SHORT_NAMES = _short_relation_names(MNRE_RELATION_TYPES)
MNRE_SHORT_RELATION_TYPES = [MNRE_SHORT_NAMES[label] for label in MNRE_RELATION_TYPES]


Source = Literal["gmner", "mnre", "m2e2"]
DATA_DIR_ENV = "REAMO_DATA_DIR"
MNRE_ENTITY_TYPE = "ENTITY"
MNRE_NO_RELATION = "None"
M2E2_DEV_MODULUS = 10
SPLITS: dict[str, tuple[str, ...]] = {"gmner": ("train", "dev"), "mnre": ("train", "val"), "m2e2": ("train", "dev")}


class DatasetError(ReamoError, ValueError):
    """A dataset file that is missing or unreadable; the message names the path and the fix."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data directory or one of its files is not where it was looked for."""


class Example(BaseModel):
    """One gold-annotated input: the text, its gold `Result` (char spans into `text`) and where it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    gold: Result
    image: str | None = Field(default=None, description="image file name in the source release (not shipped)")
    source: Source
    split: str
    meta: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Locations and small helpers
# ---------------------------------------------------------------------------------------------------------------


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding `gmner/`, `mnre/` and `m2e2/`: `root`, else $REAMO_DATA_DIR, else ../shared/data."""
    if root is not None:
        path = Path(root)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV])
    else:
        path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"data directory not found: {path}; put the datasets there (gmner/, mnre/, m2e2/), "
            f"set {DATA_DIR_ENV} or pass root= to the reader"
        )
    return path


def _dataset_file(root: str | os.PathLike[str] | None, source: Source, name: str) -> Path:
    path = data_root(root) / source / name
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{source} file not found: {path}; place the {source} release file '{name}' there, "
            f"set {DATA_DIR_ENV} or pass root= to the reader"
        )
    return path


def _check_split(source: Source, split: str) -> None:
    if split not in SPLITS[source]:
        raise DatasetError(f"unknown {source} split {split!r}; choose one of {', '.join(SPLITS[source])}")


def _bad_line(path: Path, line: int | None, why: str, strict: bool) -> None:
    message = f"{path}:{line}: {why}" if line else f"{path}: {why}"
    if strict:
        raise DatasetError(message)
    logger.warning("skipping %s", message)


def token_offsets(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character (start, end) of each token in `" ".join(tokens)`."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    return offsets


def _char_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> TextSpan:
    """Char span of tokens [start, end); raises ValueError on an empty or out-of-range token range."""
    if not 0 <= start < end <= len(offsets):
        raise ValueError(f"token range [{start}, {end}) is empty or outside the {len(offsets)} tokens")
    return TextSpan(start=offsets[start][0], end=offsets[end - 1][1])


def _mention(text: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> Mention:
    span = _char_span(offsets, start, end)
    return Mention(text=text[span.start : span.end], span=span)


def _name_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _limited(examples: Iterable[Example], limit: int | None) -> Iterator[Example]:
    for count, example in enumerate(examples):
        if limit is not None and count >= limit:
            return
        yield example


# ---------------------------------------------------------------------------------------------------------------
# GMNER
# ---------------------------------------------------------------------------------------------------------------


def _bio_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) token spans from BIO tags; an I- that does not continue its type opens a new entity."""
    spans: list[tuple[int, int, str]] = []
    current: list[Any] | None = None
    for index, tag in enumerate(tags):
        prefix, _, label = tag.partition("-")
        if prefix == "B" or (prefix == "I" and (current is None or current[2] != label)):
            if current:
                spans.append(tuple(current))  # type: ignore[arg-type]
            current = [index, index + 1, label]
        elif prefix == "I" and current is not None:
            current[1] = index + 1
        else:
            if current:
                spans.append(tuple(current))  # type: ignore[arg-type]
            current = None
    if current:
        spans.append(tuple(current))  # type: ignore[arg-type]
    return spans


def _read_voc(path: Path, strict: bool) -> tuple[dict[str, Any], list[tuple[str, Box]]]:
    """Image size and (object name, box) pairs of one Pascal-VOC file; unreadable boxes are reported and skipped."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        _bad_line(path, error.position[0], f"invalid XML: {error}", strict)
        return {}, []
    size: dict[str, Any] = {}
    for key in ("width", "height"):
        value = root.findtext(f"size/{key}")
        if value and value.strip().isdigit():
            size[f"image_{key}"] = int(value)
    objects: list[tuple[str, Box]] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        try:
            coords = [float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")]
            box = Box(x1=coords[0], y1=coords[1], x2=coords[2], y2=coords[3])
        except (ValueError, ValidationError) as error:
            _bad_line(path, None, f"object {name!r} has no valid <bndbox>: {error}", strict)
            continue
        if name:
            objects.append((name, box))
    return size, objects


def _gmner_tweets(path: Path, strict: bool) -> Iterator[tuple[str, int, list[str], list[str]]]:
    """(image id, line of the IMGID line, tokens, tags) per tweet of a CoNLL file."""
    image_id, first_line, tokens, tags = None, 0, [], []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\r\n")
            if line.startswith("IMGID:"):
                if image_id is not None and tokens:
                    yield image_id, first_line, tokens, tags
                image_id, first_line, tokens, tags = line[len("IMGID:") :].strip(), number, [], []
                continue
            if not line.strip():
                continue
            parts = line.split("\t")
            if image_id is None:
                _bad_line(path, number, "token line before the first IMGID: line", strict)
            elif len(parts) != 2 or not parts[0].strip() or parts[0] != parts[0].strip():
                _bad_line(path, number, f"expected 'token<TAB>tag', got {line!r}", strict)
            elif parts[1] != "O" and not parts[1].startswith(("B-", "I-")):
                _bad_line(path, number, f"tag {parts[1]!r} is not BIO", strict)
            else:
                tokens.append(parts[0])
                tags.append(parts[1])
    if image_id is not None and tokens:
        yield image_id, first_line, tokens, tags


def _gmner_example(
    image_id: str, line: int, tokens: list[str], tags: list[str], xml_dir: Path, split: str, strict: bool
) -> Example:
    text = " ".join(tokens)
    offsets = token_offsets(tokens)
    xml_path = xml_dir / f"{image_id}.xml"
    size, objects = _read_voc(xml_path, strict) if xml_path.is_file() else ({}, [])
    boxes_by_name: dict[str, list[Box]] = {}
    for name, box in objects:
        boxes_by_name.setdefault(name, []).append(box)
    boxes_by_key: dict[str, list[Box]] = {}
    for name, boxes in boxes_by_name.items():
        boxes_by_key.setdefault(_name_key(name), []).extend(boxes)

    entities, used_keys = [], set()
    for start, end, label in _bio_spans(tags):
        span = _char_span(offsets, start, end)
        mention = text[span.start : span.end]
        boxes = boxes_by_name.get(mention) or boxes_by_key.get(_name_key(mention), [])
        if boxes:
            used_keys.add(_name_key(mention))
            groundings: list[Any] = [ImageRegion(box=box, source="gold") for box in boxes]
        else:
            groundings = [NoRegion(modality="image", reason="no box in the GMNER annotation", source="gold")]
        entities.append(Entity(text=mention, type=label, span=span, groundings=groundings))
    unmatched = sorted(name for name in boxes_by_name if _name_key(name) not in used_keys)
    if unmatched:
        logger.debug("%s: boxes named %s match no entity of the tweet", xml_path, unmatched)
    image = f"{image_id}.jpg"
    gold = Result(text=text, tasks=["ner"], entities=entities, media={"image": image})
    meta = {"line": line, "has_xml": xml_path.is_file(), **size, "unmatched_objects": unmatched}
    return Example(id=f"gmner:{split}:{image_id}", text=text, gold=gold, image=image, source="gmner", split=split,
                   meta=meta)


def iter_gmner(split: str = "train", root: str | os.PathLike[str] | None = None, strict: bool = False
               ) -> Iterator[Example]:
    """GMNER tweets of `split` ("train" or "dev"), lazily."""
    _check_split("gmner", split)
    path = _dataset_file(root, "gmner", f"{split}.txt")
    xml_dir = path.parent / "xml"
    for image_id, line, tokens, tags in _gmner_tweets(path, strict):
        try:
            yield _gmner_example(image_id, line, tokens, tags, xml_dir, split, strict)
        except (ValueError, ValidationError) as error:
            _bad_line(path, line, f"tweet {image_id}: {error}", strict)


def read_gmner(split: str = "train", root: str | os.PathLike[str] | None = None, limit: int | None = None,
               strict: bool = False) -> list[Example]:
    """GMNER tweets with gold entities (PER/LOC/ORG/OTHER) and their gold boxes or NoRegion."""
    return list(_limited(iter_gmner(split, root, strict), limit))


# ---------------------------------------------------------------------------------------------------------------
# MNRE
# ---------------------------------------------------------------------------------------------------------------


def _mnre_example(row: dict[str, Any], split: str, number: int) -> Example:
    tokens = [str(token) for token in row["token"]]
    if any(not token or token != token.strip() or " " in token for token in tokens):
        raise ValueError("a token is empty or contains whitespace")
    text = " ".join(tokens)
    offsets = token_offsets(tokens)
    head = _mention(text, offsets, *row["h"]["pos"])
    tail = _mention(text, offsets, *row["t"]["pos"])
    relation = str(row["relation"])
    entities = [Entity(text=head.text, type=MNRE_ENTITY_TYPE, span=head.span)]
    if tail.span != head.span:
        entities.append(Entity(text=tail.text, type=MNRE_ENTITY_TYPE, span=tail.span))
    relations = [] if relation == MNRE_NO_RELATION else [Relation(head=head, type=relation, tail=tail)]
    image = str(row["img_id"]) if row.get("img_id") else None
    gold = Result(text=text, tasks=["re"], entities=entities, relations=relations,
                  media={"image": image} if image else {})
    meta = {
        "line": number,
        "head": head.model_dump(),
        "tail": tail.model_dump(),
        "relation": relation,
    }
    return Example(id=f"mnre:{split}:{number}", text=text, gold=gold, image=image, source="mnre", split=split,
                   meta=meta)


def iter_mnre(split: str = "train", root: str | os.PathLike[str] | None = None, strict: bool = False
              ) -> Iterator[Example]:
    """MNRE entity pairs of `split` ("train" or "val"), one example per line, lazily."""
    _check_split("mnre", split)
    path = _dataset_file(root, "mnre", f"{split}.txt")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = ast.literal_eval(line.strip())  # a literal parser: never `eval` on data
                if not isinstance(row, dict):
                    raise ValueError(f"expected a dict literal, got {type(row).__name__}")
                yield _mnre_example(row, split, number)
            except (ValueError, SyntaxError, KeyError, TypeError, ValidationError, MemoryError,
                    RecursionError) as error:
                _bad_line(path, number, f"{type(error).__name__}: {error}", strict)


def read_mnre(split: str = "train", root: str | os.PathLike[str] | None = None, limit: int | None = None,
              strict: bool = False) -> list[Example]:
    """MNRE pairs: gold has the two untyped entities and the relation (none when the label is "None")."""
    return list(_limited(iter_mnre(split, root, strict), limit))


MNRE_CALIBRATION_MODULUS = 10


def mnre_calibration_held_out(example: Example) -> bool:
    """True for the MNRE *train* sentences kept for calibrating decisions (about one in ten: sha1 of the sentence
    mod 10 == 0), which tuning never trains on; every pair of a sentence falls on the same side."""
    digest = hashlib.sha1(example.text.encode("utf-8")).hexdigest()
    return int(digest, 16) % MNRE_CALIBRATION_MODULUS == 0


def group_mnre(examples: Iterable[Example]) -> list[Example]:
    """One example per MNRE sentence (a line is one entity pair): all its non-None relations together, so a target
    never omits a relation the sentence has."""
    grouped: dict[tuple[str, str | None], Example] = {}
    for example in examples:
        key = (example.text, example.image)
        if key not in grouped:
            grouped[key] = example.model_copy(deep=True)
            continue
        gold = grouped[key].gold
        for relation in example.gold.relations:
            if all(relation.model_dump() != r.model_dump() for r in gold.relations):
                gold.relations.append(relation)
    return list(grouped.values())


def read_mnre_for_tuning(split: str = "train", root: str | os.PathLike[str] | None = None) -> list[Example]:
    """MNRE pairs tuning may use: the split without the calibration sentences (`mnre_calibration_held_out`)."""
    return [e for e in read_mnre(split, root=root) if not mnre_calibration_held_out(e)]


# ---------------------------------------------------------------------------------------------------------------
# M2E2
# ---------------------------------------------------------------------------------------------------------------


def m2e2_article_id(sentence_id: str) -> str:
    """The article a sentence id belongs to: "VOA_EN_NW_2016.04.19.3291980_7" -> "VOA_EN_NW_2016.04.19.3291980"."""
    head, sep, tail = sentence_id.rpartition("_")
    return head if sep and tail.isdigit() else sentence_id


def m2e2_split_of(sentence_id: str) -> str:
    """"dev" for about one article in ten (sha1 of the article id mod 10 == 0), else "train"; stable everywhere."""
    digest = hashlib.sha1(m2e2_article_id(sentence_id).encode("utf-8")).hexdigest()
    return "dev" if int(digest, 16) % M2E2_DEV_MODULUS == 0 else "train"


def m2e2_calibration_held_out(example: Example) -> bool:
    """True for the M2E2 *train* sentences kept for calibrating the event decisions (the articles with sha1 of the
    article id mod 10 == 1, about one in nine train sentences), which the event-decision tuning never trains on; dev
    is mod 10 == 0, so the two never meet."""
    digest = hashlib.sha1(m2e2_article_id(example.id.split(":")[-1]).encode("utf-8")).hexdigest()
    return example.split == "train" and int(digest, 16) % M2E2_DEV_MODULUS == 1


def _m2e2_example(row: dict[str, Any], split: str, number: int) -> Example:
    tokens = [str(token) for token in row["words"]]
    if any(not token or token != token.strip() or " " in token for token in tokens):
        raise ValueError("a token is empty or contains whitespace")
    text = " ".join(tokens)
    offsets = token_offsets(tokens)
    entities = []
    for item in row.get("golden-entity-mentions", []):
        mention = _mention(text, offsets, int(item["start"]), int(item["end"]))
        entities.append(Entity(text=mention.text, type=str(item["entity-type"]), span=mention.span))
    events = []
    for item in row.get("golden-event-mentions", []):
        trigger = item["trigger"]
        arguments = [
            Argument(role=str(arg["role"]), entity=_mention(text, offsets, int(arg["start"]), int(arg["end"])))
            for arg in item.get("arguments", [])
        ]
        events.append(Event(type=str(item["event_type"]),
                            trigger=_mention(text, offsets, int(trigger["start"]), int(trigger["end"])),
                            arguments=arguments))
    sentence_id = str(row["sentence_id"])
    gold = Result(text=text, tasks=["ner", "ee"], entities=entities, events=events)
    meta = {
        "line": number,
        "sentence_id": sentence_id,
        "article_id": m2e2_article_id(sentence_id),
        "sentence": row.get("sentence", ""),
        "images": list(row.get("image", [])),
    }
    return Example(id=f"m2e2:{split}:{sentence_id}", text=text, gold=gold, image=None, source="m2e2", split=split,
                   meta=meta)


def iter_m2e2(split: str = "train", root: str | os.PathLike[str] | None = None, strict: bool = False
              ) -> Iterator[Example]:
    """M2E2 sentences of our split ("train" or "dev", see `m2e2_split_of`), lazily."""
    _check_split("m2e2", split)
    path = _dataset_file(root, "m2e2", "text_only_event.jsonl")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if m2e2_split_of(str(row["sentence_id"])) != split:
                    continue
                yield _m2e2_example(row, split, number)
            except (ValueError, KeyError, TypeError, ValidationError) as error:
                _bad_line(path, number, f"{type(error).__name__}: {error}", strict)


def read_m2e2(split: str = "train", root: str | os.PathLike[str] | None = None, limit: int | None = None,
              strict: bool = False) -> list[Example]:
    """M2E2 sentences with typed entities (ACE types) and events (trigger, type, argument roles)."""
    return list(_limited(iter_m2e2(split, root, strict), limit))


READERS = {"gmner": read_gmner, "mnre": read_mnre, "m2e2": read_m2e2}


def read_dataset(source: Source, split: str, root: str | os.PathLike[str] | None = None, limit: int | None = None,
                 strict: bool = False) -> list[Example]:
    """Any of the three readers by name, e.g. `read_dataset("gmner", "dev")`."""
    if source not in READERS:
        raise DatasetError(f"unknown dataset {source!r}; choose one of {', '.join(READERS)}")
    return READERS[source](split, root=root, limit=limit, strict=strict)


# ---------------------------------------------------------------------------------------------------------------
# Our own jsonlines format
# ---------------------------------------------------------------------------------------------------------------


def write_jsonl(examples: Iterable[BaseModel], path: str | os.PathLike[str]) -> int:
    """Write one record (Example or any pydantic model) JSON per line, atomically (temp file in the same folder,
    then rename); returns the count."""
    count = 0
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(example.model_dump_json())
            handle.write("\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike[str], strict: bool = False) -> list[Example]:
    """Examples written by `write_jsonl`; invalid lines are reported with file:line and skipped (or raised)."""
    source = Path(path)
    if not source.is_file():
        raise DatasetNotFoundError(f"examples file not found: {source}; write it with reamo.datasets.write_jsonl")
    examples = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                examples.append(Example.model_validate_json(line))
            except ValidationError as error:
                _bad_line(source, number, str(error).splitlines()[0] + f" ({error.error_count()} errors)", strict)
    return examples
