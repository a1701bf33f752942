"""Jinja chat templates shipped with Reamo, used through `tokenizer.apply_chat_template(..., chat_template=...)`.

- ``vicuna_v1.1``: Vicuna v1.1 / LLaVA "USER: ... ASSISTANT:" with ``</s>`` after each reply; media items in a
  content list become LLaVA-style ``<image>`` / ``<video>`` / ``<audio>`` placeholders.
- ``chatml_reamo``: ChatML for the embedded default (SmolLM2-Instruct), same placeholder and tool-call rendering.
- ``gemma_reamo``: Gemma 3 turns for the Gemma-3-270M base (system text in the first user turn), same rendering.
"""

from __future__ import annotations

from importlib import resources

TEMPLATE_NAMES = ("vicuna_v1.1", "chatml_reamo", "gemma_reamo")


def load_chat_template(name: str) -> str:
    """Return the Jinja source of a shipped template by name (e.g. "vicuna_v1.1")."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown chat template {name!r}; shipped templates: {', '.join(TEMPLATE_NAMES)}")
    return resources.files(__name__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")
