"""Memory estimates: hand-computed totals for the paper's presets, real tiny models for counts and the KV cache."""

from __future__ import annotations

import pytest
import torch

from reamo.memory import (
    GIB,
    MemoryBudgetError,
    check_fits,
    encoder_parameter_counts,
    estimate,
    kv_cache_bytes,
    llm_parameter_counts,
)
from reamo.model.imagebind_encoder import ImageBindEncoder, ImageBindEncoderConfig

# Vicuna-7B v1.5 (LLaMA-2-7B): hidden 4096, 32 layers, 32 heads (head_dim 128), intermediate 11008, vocab 32000
H, L, I, V = 4096, 32, 11008, 32000
LINEAR = L * (4 * H * H + 3 * H * I)  # q, k, v, o + gate, up, down = 6,476,005,376
REST = 2 * V * H + (2 * L + 1) * H  # embed_tokens + lm_head (untied) + RMSNorm weights
NF4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + 8-bit absmax per 64 + fp32 per 256 absmax
# ImageBind-huge trunks Reamo feeds: ViT-H vision (32 x 1280) + ViT-B audio (12 x 768); ~12 d^2 per block
ENCODER = 12 * 1280**2 * 32 + 12 * 768**2 * 12
PROJECTORS = 3 * (1024 * H + H + H * H + H)  # mlp2x_gelu per modality, one token each
LORA = L * 128 * (4 * (H + H) + 3 * (H + I))  # r=128 on every linear layer
KV_2K = 2 * L * 32 * 128 * 2048 * 2  # = 1 GiB at 16-bit
# inference peak = prefill: one layer's tensors + LoRA's float32 input copy + one dequantized NF4 weight (the largest,
# I x H) + the attention mask + one layer's KV being grown + the last position's logits (bf16, float32 copy, scores)
ACTIVATIONS_2K = 2048 * (4 * H + 3 * I) * 2 + 2048 * I * 4 + I * H * 2 + 2048 * 2048 * 2 + KV_2K // L + V * (2 + 8)


def test_7b_4bit_fits_8_gib_and_fp16_does_not_fit_13() -> None:
    quant = estimate("reamo-7b-4bit", context=2048)
    by_hand = (LINEAR * NF4 + REST * 2 + ENCODER * 2 + PROJECTORS * 4 + LORA * 4 + KV_2K + ACTIVATIONS_2K)
    assert quant.part("llm (nf4 linears)").parameters == LINEAR
    assert quant.part("llm (embeddings, norms)").parameters == REST
    assert quant.part("lora adapters").parameters == LORA
    assert quant.part("projectors").parameters == PROJECTORS
    assert quant.part("encoder (imagebind)").parameters == pytest.approx(ENCODER, rel=0.01)  # + embeddings, heads
    assert quant.total_bytes == pytest.approx(by_hand, rel=0.005)
    assert by_hand / GIB < 7.9 and quant.total_gib < 8

    full = estimate("reamo-7b", context=2048)
    assert full.part("llm").bytes == (LINEAR + REST) * 2 == 6_738_415_616 * 2
    by_hand_full = (LINEAR + REST) * 2 + ENCODER * 2 + PROJECTORS * 2 + LORA * 4 + KV_2K + ACTIVATIONS_2K - I * H * 2
    assert full.total_bytes == pytest.approx(by_hand_full, rel=0.005)
    assert full.total_gib > 13

    # the KV cache grows linearly with context x batch
    assert estimate("reamo-7b-4bit", context=4096, batch=2).part("kv cache").bytes == 4 * KV_2K
    # QLoRA training: fp32 gradient + 2 Adam moments for adapters and projectors only
    train = estimate("reamo-7b-4bit", context=1024, batch=4, training=True)
    assert train.part("gradients + adam").bytes == (LORA + PROJECTORS) * 12
    assert "kv cache" not in [p.name for p in train.parts]
    assert "llm" in estimate("reamo-7b-4bit").describe()


def test_kv_cache_formula_matches_a_real_cache(tiny_llm_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    config = model.config
    batch, context = 3, 17
    with torch.no_grad():
        out = model(input_ids=torch.ones((batch, context), dtype=torch.long), use_cache=True)
    real = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    head_dim = config.hidden_size // config.num_attention_heads
    assert real == kv_cache_bytes(config.num_hidden_layers, config.num_key_value_heads, head_dim, context, batch, 4)
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention is counted right


def test_meta_device_counts_equal_real_models(tiny_llm_dir) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    total, linear, _ = llm_parameter_counts(AutoConfig.from_pretrained(tiny_llm_dir))
    real = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert total == real.num_parameters()
    assert linear == sum(m.weight.numel() for n, m in real.named_modules()
                         if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    tiny = ImageBindEncoderConfig.tiny()
    counts = encoder_parameter_counts(tiny)
    # the encoder keeps only the vision and audio towers (the others are dropped after loading)
    assert counts["vision"] + counts["audio"] == sum(p.numel() for p in ImageBindEncoder(tiny).model.parameters())


def test_check_fits_refuses_with_the_shortfall() -> None:
    full = estimate("reamo-7b")
    available = 8 * GIB
    needed = full.total_bytes * 1.05
    with pytest.raises(MemoryBudgetError) as error:
        check_fits(full, available_bytes=available)
    message = str(error.value)
    assert f"short by {(needed - available) / GIB:.2f} GiB" in message
    assert "reamo-7b-4bit" in message and "llm 12.55 GiB" in message
    assert check_fits(estimate("reamo-7b-4bit"), available_bytes=10 * GIB) == 10 * GIB
