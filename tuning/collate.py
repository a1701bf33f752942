"""Instruction examples -> token ids with loss only on the assistant answer, media tensors, padded batches.

The prompt is rendered by the model's chat template with the generation prompt, exactly as `ReamoModel.render_prompt`
does at inference; the answer is what the template adds when the assistant turn is rendered too (the target text
plus the template's end-of-turn tokens), so the model learns to stop where generation stops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

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
