"""Chat templates render through `tokenizer.apply_chat_template`, compared with known literal prompts."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from reamo.chat_templates import load_chat_template

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return AutoTokenizer.from_pretrained(str(tiny_llm_dir))


def render(tokenizer, name, messages, **kwargs):
    return tokenizer.apply_chat_template(
        messages, chat_template=load_chat_template(name), tokenize=False, add_generation_prompt=True, **kwargs
    )


def test_vicuna_v11_matches_fastchat_literal(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who is Rafael Nadal?"},
    ]
    expected = f"{VICUNA_SYSTEM} USER: Hello ASSISTANT: Hi there</s>USER: Who is Rafael Nadal? ASSISTANT:"
    assert render(tokenizer, "vicuna_v1.1", messages) == expected


def test_vicuna_llava_placeholders_and_custom_system(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Extract entities."},
        {"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Who is this?"}]},
    ]
    assert render(tokenizer, "vicuna_v1.1", messages) == "Extract entities. USER: <image>\n<audio>\nWho is this? ASSISTANT:"


def test_tool_calls_render_in_reamo_protocol(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Find Nadal"},
        {
            "role": "assistant",
            "content": "Entities: (Nadal, PER)",
            "tool_calls": [
                {"type": "function", "function": {"name": "ImageSegmentation", "arguments": {"target": "Nadal"}}},
                {"type": "function", "function": {"name": "AudioSegmentation", "arguments": {"target": "Nadal", "entity_type": "PER"}}},
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]
    text = render(tokenizer, "vicuna_v1.1", messages)
    assert (
        "ASSISTANT: Entities: (Nadal, PER)\n<Module>ImageSegmentation</Module><Instruction>Nadal</Instruction>\n"
        '<Module>AudioSegmentation</Module><Instruction>{"target": "Nadal", "entity_type": "PER"}</Instruction></s>'
    ) in text
    chatml = render(tokenizer, "chatml_reamo", messages)
    assert "<|im_start|>assistant\nEntities: (Nadal, PER)\n<Module>ImageSegmentation</Module>" in chatml


def test_chatml_literal_and_tools_in_system(tokenizer) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render(tokenizer, "chatml_reamo", messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    tools = [{"type": "function", "function": {"name": "ImageSegmentation", "description": "Segment it.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    with_tools = render(tokenizer, "chatml_reamo", messages, tools=tools)
    assert "- ImageSegmentation: Segment it." in with_tools


def test_unknown_template_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shipped templates"):
        load_chat_template("alpaca")
