"""Instruction examples -> token ids with loss only on the assistant answer, media tensors, padded batches.

The prompt is rendered by the model's chat template with the generation prompt, exactly as `ReamoModel.render_prompt`
does at inference; the answer is what the template adds when the assistant turn is rendered too (the target text
plus the template's end-of-turn tokens), so the model learns to stop where generation stops.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from reamo.errors import ConfigError
from reamo.model import ReamoModel
from reamo.model.modeling_reamo import PLACEHOLDER_IDS
from reamo.tuning.data import InstructionExample

logger = logging.getLogger(__name__)
IGNORE = -100


def tokenize_example(model: ReamoModel, example: InstructionExample) -> tuple[list[int], list[int]]:
    """(input ids with negative media placeholders, labels with IGNORE on the prompt)."""
    from reamo.chat_templates import load_chat_template

    if not example.messages or example.messages[-1].get("role") != "assistant":
        raise ConfigError(f"example {example.id}: the last message must be the assistant target")
    template = load_chat_template(model.config.chat_template)
    render = model.tokenizer.apply_chat_template
    prompt = render(example.messages[:-1], chat_template=template, add_generation_prompt=True, tokenize=False)
    full = render(example.messages, chat_template=template, add_generation_prompt=False, tokenize=False)
    if not full.startswith(prompt):
        raise ConfigError(
            f"chat template {model.config.chat_template!r} renders the prompt of {example.id} differently with and "
            "without the answer; the template must render the generation prompt as the start of the assistant turn"
        )
    prompt_ids = model.tokenize_with_placeholders(prompt)
    answer_ids = model.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + list(answer_ids)


def resolve_media(reference: str, media_root: str | None) -> Path:
    path = Path(reference).expanduser()
    if not path.is_absolute() and media_root:
        path = Path(media_root).expanduser() / path
    return path


class InstructionDataset(Dataset):
    """Pre-tokenized examples; media of encoded modalities are loaded and preprocessed per item."""

    def __init__(self, model: ReamoModel, examples: list[InstructionExample], max_seq_len: int,
                 media_root: str | None = None) -> None:
        self.model = model
        self.media_root = media_root
        self.items: list[tuple[list[int], list[int], dict[str, str]]] = []
        self.groups: list[str] = []  # each item's system message: items of one group share their prompt's start
        too_long = 0
        for example in examples:
            ids, labels = tokenize_example(model, example)
            length = len(ids) + sum(model.config.tokens_per_input - 1 for i in ids if i < 0)
            if length > max_seq_len:
                too_long += 1
                continue
            encoded = {m: ref for m, ref in example.media.items() if m in model.encoded_modalities}
            for modality, reference in encoded.items():
                if not resolve_media(reference, media_root).is_file():
                    raise ConfigError(
                        f"example {example.id}: {modality} file {resolve_media(reference, media_root)} not found; "
                        "the model encodes this modality, so the file must exist (set data.media_root to the "
                        "folder holding the dataset's media)"
                    )
            self.items.append((ids, labels, encoded))
            first = example.messages[0]
            self.groups.append(str(first.get("content")) if first.get("role") == "system" else "")
        if too_long:
            logger.warning("dropped %d of %d examples longer than max_seq_len=%d tokens", too_long, len(examples),
                           max_seq_len)
        if not self.items:
            raise ConfigError(f"no training examples left (max_seq_len={max_seq_len} drops {too_long} of "
                              f"{len(examples)}); raise max_seq_len or add data")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids, labels, references = self.items[index]
        media: dict[str, list[torch.Tensor]] = {}
        for modality, reference in references.items():
            media[modality] = [self.preprocess(modality, resolve_media(reference, self.media_root))]
        return {"input_ids": ids, "labels": labels, "media": media}

    def preprocess(self, modality: str, path: Path) -> torch.Tensor:
        from reamo.media import load_audio, load_image, load_video

        encoder = self.model.encoder
        if modality == "image":
            return encoder.preprocess_image(load_image(path))
        if modality == "audio":
            return encoder.preprocess_audio(load_audio(path))
        return encoder.preprocess_video(load_video(path))


class PrefixGroupedSampler(Sampler[int]):
    """Random order in which each run of `batch_size` indices (one batch; the trainer passes an optimizer step's
    rows, so its micro-batches split it evenly) comes from one group where possible.

    Groups are the examples' system messages, so a batch's prompts share their first tokens and the trainer
    computes that shared prefix once per batch (`ReamoModel.forward_shared_prefix`). Within a group the order is
    random, the batches' order is random, and what is left of each group (fewer than a batch) is pooled into mixed
    batches, so every example is seen exactly once per epoch. Deterministic for (seed, epoch): a resumed run skips
    the same batches it already trained on.
    """

    def __init__(self, groups: list[str], batch_size: int, seed: int = 0) -> None:
        self.groups, self.batch_size, self.seed, self.epoch = groups, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"prefix-groups-{self.seed}-{self.epoch}")
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        by_group: dict[str, list[int]] = {}
        for index in order:
            by_group.setdefault(self.groups[index], []).append(index)
        full: list[list[int]] = []
        rest: list[int] = []
        for members in by_group.values():
            cut = len(members) - len(members) % self.batch_size
            full += [members[i : i + self.batch_size] for i in range(0, cut, self.batch_size)]
            rest += members[cut:]
        rng.shuffle(rest)
        mixed = [rest[i : i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        last = [mixed.pop()] if mixed and len(mixed[-1]) < self.batch_size else []
        out = full + mixed
        rng.shuffle(out)
        return out + last  # a short batch only at the very end, so runs of batch_size stay batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.groups)


def shared_prefix_length(rows: list[list[int]], labels: list[list[int]], minimum: int = 8) -> int:
    """How many leading tokens every row has in common, stopping before any media placeholder (negative id) and
    before the token that predicts a row's first target; 0 when that is under `minimum` or there is one row."""
    if len(rows) < 2:
        return 0
    limit = min(next((i for i, label in enumerate(row) if label != IGNORE), len(row)) for row in labels) - 1
    length = 0
    for column in zip(*rows):
        if length >= limit or column[0] < 0 or any(token != column[0] for token in column):
            break
        length += 1
    return length if length >= minimum else 0


def collate(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Right-padded ids / labels + lengths; media stay per example (each placeholder takes one tensor)."""
    longest = max(len(item["input_ids"]) for item in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    for row, item in enumerate(batch):
        ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
        labels[row, : len(item["labels"])] = torch.tensor(item["labels"])
    lengths = torch.tensor([len(item["input_ids"]) for item in batch])
    return {"input_ids": ids, "labels": labels, "lengths": lengths, "media": [item["media"] for item in batch]}


def expand_labels(ids: list[int], labels: list[int], tokens_per_input: int) -> list[int]:
    """Labels aligned with `ReamoModel.embed`'s output: a placeholder becomes `tokens_per_input` IGNOREs."""
    out: list[int] = []
    placeholder_ids = set(PLACEHOLDER_IDS.values())
    for token, label in zip(ids, labels, strict=True):
        out.extend([IGNORE] * tokens_per_input if token in placeholder_ids else [label])
    return out
