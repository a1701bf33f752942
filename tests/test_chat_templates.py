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


def test_gemma_turns_put_the_system_text_in_the_first_user_turn(tokenizer) -> None:
    """Gemma has no system role: the system text opens the first user turn; the assistant's role is "model"."""
    messages = [
        {"role": "system", "content": "Extract entities."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Text: Nadal in Paris"}]},
        {"role": "assistant", "content": "Entities: (Nadal, PER)(Paris, LOC)",
         "tool_calls": [{"type": "function", "function": {"name": "ImageSegmentation", "arguments": {"target": "Nadal"}}}]},
        {"role": "user", "content": "Text: Messi in Miami"},
    ]
    expected = (
        "<start_of_turn>user\nExtract entities.\n\n<image>\nText: Nadal in Paris<end_of_turn>\n"
        "<start_of_turn>model\nEntities: (Nadal, PER)(Paris, LOC)\n"
        "<Module>ImageSegmentation</Module><Instruction>Nadal</Instruction><end_of_turn>\n"
        "<start_of_turn>user\nText: Messi in Miami<end_of_turn>\n<start_of_turn>model\n"
    )
    assert render(tokenizer, "gemma_reamo", messages) == expected
    # a system message alone (the shared prompt start the agent caches) is still written, as a user turn
    alone = tokenizer.apply_chat_template(messages[:1], chat_template=load_chat_template("gemma_reamo"),
                                          tokenize=False, add_generation_prompt=False)
    assert alone == "<start_of_turn>user\nExtract entities.<end_of_turn>\n"


def test_gemma_prompt_is_the_start_of_the_trained_text(tokenizer) -> None:
    """What tuning needs of every template: the generation prompt is a prefix of the prompt + answer rendering."""
    messages = [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Text: Nadal"},
                {"role": "assistant", "content": "Entities: (Nadal, PER)"}]
    template = load_chat_template("gemma_reamo")
    prompt = tokenizer.apply_chat_template(messages[:-1], chat_template=template, tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert full.startswith(prompt) and full[len(prompt):] == "Entities: (Nadal, PER)<end_of_turn>\n"
