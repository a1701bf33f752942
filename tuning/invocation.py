"""Stage 4 data: invocation / meta-response dialogues over modality combinations.

The user gives some mix of text (T), image (I), audio (A) and video (V); the assistant answers with the
extractions plus one tool call per entity whose evidence is in a medium. Where the sentence's content lives:

* T in the mix: the text is the sentence;
* otherwise the "carrier" medium holds it: the speech says it (A), else the image shows it as text (I), else the
  video's frames show it (V); every mention then gets a call for the carrier;
* audio in a mix with text narrates the same sentence (all mentions are spoken: AudioSegmentation for each);
* an image with text: GMNER tweets attach their real photo reference and the entities with gold boxes get calls;
  for other sources the photo sometimes shows one or two entity names as text (a sign, a caption), which then get
  calls; a video with text shows a few entity names as on-screen captions (lower thirds), which get calls.

For models without an encoder the media reach the prompt as describer-style text (`reamo.tuning.contexts`) plus
"[image attached]" notes, exactly as the agent renders them for the embedded default.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from reamo.datasets import Example
from reamo.schema import Labels
from reamo.tuning.contexts import (
    audio_context,
    gmner_image_context,
    image_text_context,
    safe_name,
    video_context,
)
from reamo.tuning.data import (
    GMNER_ENTITY_TYPES,
    M2E2_ENTITY_TYPES,
    M2E2_EVENT_TYPES,
    MNRE_SHORT_RELATION_TYPES,
    BuildOptions,
    InstructionExample,
    gmner_boxed,
    make_example,
    short_relations,
    refuse_eval_split,
    vary_labels,
)

COMBINATIONS: tuple[str, ...] = ("T", "I", "A", "V", "T+I", "T+A", "T+V", "I+A", "T+I+A", "V+A")
LETTER_MODALITY = {"I": "image", "A": "audio", "V": "video"}


def mentions(example: Example) -> list[str]:
    """Every mention text of the gold (entities, relation ends, event arguments), in first-seen order."""
    gold = example.gold
    texts = [e.text for e in gold.entities]
    texts += [m.text for r in gold.relations for m in (r.head, r.tail)]
    texts += [a.entity.text for e in gold.events for a in e.arguments]
    return list(dict.fromkeys(texts))


def task_and_labels(example: Example, rng: random.Random, options: BuildOptions) -> tuple[tuple[str, ...], Labels]:
    if example.source == "gmner":
        return ("ner",), Labels(entity_types=vary_labels(GMNER_ENTITY_TYPES, rng, options))
    if example.source == "mnre":
        return ("re",), Labels(entity_types=list(GMNER_ENTITY_TYPES),
                               relation_types=vary_labels(MNRE_SHORT_RELATION_TYPES, rng, options))
    return ("ner", "ee"), Labels(entity_types=vary_labels(M2E2_ENTITY_TYPES, rng, options),
                                 event_types=vary_labels(M2E2_EVENT_TYPES, rng, options))


def invocation_example(
    example: Example,
    combination: str,
    split: str,
    rng: random.Random,
    options: BuildOptions,
    audio_path: str | None = None,
    audio_seconds: float | None = None,
    stage: int = 4,
) -> InstructionExample:
    """One dialogue for `example` with the media of `combination` (e.g. "T+I+A")."""
    letters = set(combination.split("+"))
    if not letters <= {"T", "I", "A", "V"}:
        raise ValueError(f"unknown modality combination {combination!r}; use letters T, I, A, V joined by '+'")
    sentence = example.text
    everything = mentions(example)
    carrier = None if "T" in letters else next(m for m in ("A", "I", "V") if m in letters)
    key = safe_name(example.id)
    media: dict[str, str] = {}
    contexts: dict[str, str] = {}
    grounded: dict[str, list[str]] = {}
    if "A" in letters:
        media["audio"] = audio_path or f"speech/{key}.wav"
        contexts["audio"] = audio_context(sentence, audio_seconds)
        grounded["audio"] = everything
    if "I" in letters:
        if carrier == "I":
            media["image"] = f"poster/{key}.jpg"
            contexts["image"] = image_text_context(media["image"], sentence, rng)
            grounded["image"] = everything
        elif example.source == "gmner" and example.image:
            media["image"] = example.image
            contexts["image"] = gmner_image_context(example, rng)
            grounded["image"] = gmner_boxed(example)
        else:
            media["image"] = f"photo/{key}.jpg"
            shown = rng.sample(everything, min(len(everything), rng.randint(0, 2)))
            contexts["image"] = image_text_context(media["image"], " ".join(shown), rng) if shown else "\n".join([
                f"Image {media['image']!r}: 1024x768 pixels.", "No readable text in the image.", "No faces detected."])
            grounded["image"] = shown
    if "V" in letters:
        media["video"] = f"video/{key}.mp4"
        if carrier == "V":
            captions = [sentence]
            grounded["video"] = everything
        else:
            captions = rng.sample(everything, min(len(everything), rng.randint(0, 2)))
            grounded["video"] = captions
        contexts["video"] = video_context(media["video"], captions, rng)
    tasks, labels = task_and_labels(example, rng, options)
    gold = example.gold
    return make_example(
        id=f"{example.id}#s{stage}:{combination}", source=example.source, split=split, stage=stage,
        text=sentence if "T" in letters else "", tasks=tasks, labels=labels, entities=gold.entities,
        relations=short_relations(gold.relations), events=gold.events, grounded=grounded, contexts=contexts, media=media, rng=rng,
        options=options,
    )


def invocation_examples(
    examples: Iterable[Example],
    split: str,
    seed: int = 0,
    combinations: Sequence[str] = COMBINATIONS,
    options: BuildOptions | None = None,
) -> list[InstructionExample]:
    """One dialogue per example, cycling through `combinations` (shuffled order, so each gets an equal share)."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"invocation-{seed}")
    out = []
    order = list(combinations)
    for index, example in enumerate(examples):
        if index % len(order) == 0:
            rng.shuffle(order)
        out.append(invocation_example(example, order[index % len(order)], split, rng, options))
    return out
