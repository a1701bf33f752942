"""Long documents against their sentences one by one: does reading a long text in windows lose what the model finds?

A document is made of consecutive M2E2 dev sentences (news, whole articles in order) up to `--words` words; the
agent extracts entities from it as one text (read in sentence windows, `reamo.segmenting`) and from each sentence
alone (batched). Each document entity is assigned to the sentence its span lies in; the report gives the entities
per sentence both ways, their ratio (issue target: within 10%) and how many sentences got the very same entities.

    python -m eval.long_documents --words 3000
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def build_document(sentences: list[str], words: int) -> tuple[str, list[int]]:
    """Sentences joined by spaces until `words` words, and each sentence's start offset in the document."""
    parts: list[str] = []
    starts: list[int] = []
    offset = count = 0
    for sentence in sentences:
        if count >= words:
            break
        starts.append(offset)
        parts.append(sentence)
        offset += len(sentence) + 1
        count += len(sentence.split())
    return " ".join(parts), starts


def compare(agent: Any, sentences: list[str], words: int = 3000) -> dict[str, Any]:
    """Entities per sentence, read as one long document vs one sentence at a time (same agent, `ner` only)."""
    document, starts = build_document(sentences, words)
    used = sentences[:len(starts)]
    mark = time.perf_counter()
    whole = agent.extract(text=document, tasks=("ner",))
    whole_s = time.perf_counter() - mark
    mark = time.perf_counter()
    alone = agent.extract_batch(used, tasks=("ner",))
    alone_s = time.perf_counter() - mark
    in_document: list[set[str]] = [set() for _ in used]
    for entity in whole.entities:
        if entity.span is not None:
            in_document[bisect.bisect_right(starts, entity.span.start) - 1].add(entity.text)
    one_by_one = [{e.text for e in result.entities} for result in alone]
    n_document = sum(len(s) for s in in_document)
    n_alone = sum(len(s) for s in one_by_one)
    return {
        "words": len(document.split()), "sentences": len(used), "windows": max(len(whole.windows), 1),
        "tokens": len(agent.model.tokenizer(document, add_special_tokens=False)["input_ids"]),
        "entities_document": n_document, "entities_one_by_one": n_alone,
        "entities_per_sentence_document": n_document / len(used),
        "entities_per_sentence_one_by_one": n_alone / len(used),
        "ratio": n_document / n_alone if n_alone else float("nan"),
        "sentences_same_entities": sum(a == b for a, b in zip(in_document, one_by_one)) / len(used),
        "seconds_document": whole_s, "seconds_one_by_one": alone_s,
        "problems": [p.message for p in whole.problems],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from reamo.agent import Agent
    from reamo.datasets import read_m2e2

    sentences = [example.text for example in read_m2e2("dev")]
    report = compare(Agent.from_pretrained("default"), sentences, args.words)
    print(json.dumps(report, indent=1))  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
