"""How much accelerator memory a Reamo model needs, estimated before anything is loaded.

Loading a 7B model onto a GPU that is too small fails minutes later with an out-of-memory error; the estimate
takes a second and names the parts, so `check_fits` can refuse up front with the shortfall and what to change.

Parameter counts come from instantiating the architectures without memory: the LLM under
`with torch.device("meta")`; ImageBind calls `.item()` on a tensor while it builds, which meta tensors refuse, so
it falls back to `accelerate.init_empty_weights` (parameters moved to meta as they are registered).

Terms (bytes): weights = parameters x bytes per parameter (fp32 4, fp16/bf16 2, NF4 0.5 plus the double-quant
constants: one 8-bit absmax per 64 weights and one fp32 per 256 absmax); LoRA adapters in fp32 (peft upcasts
them); projectors in fp32 when the LLM is 4-bit (as `ReamoModel` builds them), else the compute dtype; KV cache =
2 x layers x kv_heads x head_dim x context x batch x bytes; activations a rough term (below). Training adds, per
trainable parameter, an fp32 gradient and two fp32 Adam moments (QLoRA: the adapters and projectors are the only
trainable parts). The encoder counts only the ImageBind trunks the model feeds the LLM (vision for image / video,
audio for audio): the text / depth / thermal / IMU trunks are not needed on the accelerator.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from reamo.errors import ConfigError
from reamo.model import ReamoConfig
from reamo.model.imagebind_encoder import ImageBindEncoderConfig

logger = logging.getLogger(__name__)

GIB = 1024**3
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
NF4_BLOCK = 64  # weights per absmax (bitsandbytes blocksize for 4-bit)
NF4_DOUBLE_QUANT_BLOCK = 256  # absmax values per second-level fp32 constant
NF4_BYTES = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DOUBLE_QUANT_BLOCK)  # = 0.51587 bytes per weight
ADAM_BYTES = 4 + 4 + 4  # fp32 gradient + two fp32 moments, per trainable parameter
ENCODER_KEYS = {"image": "vision", "video": "vision", "audio": "audio"}


class MemoryPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    bytes: int
    parameters: int | None = None
    bytes_per_parameter: float | None = None
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


class MemoryEstimate(BaseModel):
    """The breakdown and total for one configuration, context length, batch size and mode."""

    model_config = ConfigDict(extra="forbid")

    model: str
    context: int
    batch: int
    training: bool
    parts: list[MemoryPart]
    total_bytes: int

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def part(self, name: str) -> MemoryPart:
        for item in self.parts:
            if item.name == name:
                return item
        raise KeyError(f"no part {name!r}; parts: {[p.name for p in self.parts]}")

    def describe(self) -> str:
        """A small table for logs and the CLI (printed before loading)."""
        mode = "training" if self.training else "inference"
        lines = [f"memory estimate for {self.model} ({mode}, context {self.context}, batch {self.batch}):"]
        for item in self.parts:
            params = f"{item.parameters / 1e6:10.1f} M x {item.bytes_per_parameter:g} B" if item.parameters else " " * 17
            lines.append(f"  {item.name:<22} {params}  {item.gib:7.2f} GiB  {item.note}")
        lines.append(f"  {'total':<22} {'':17}  {self.total_gib:7.2f} GiB")
        return "\n".join(lines)


class MemoryBudgetError(ConfigError):
    """The estimate does not fit the memory available; the message names the shortfall and what to change."""


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts without memory
# ---------------------------------------------------------------------------------------------------------------


def llm_architecture(config: ReamoConfig, architecture: dict[str, Any] | None = None) -> Any:
    """The LLM's transformers config: given, from its folder's config.json, or from the preset it matches."""
    from transformers import AutoConfig

    if architecture is not None:
        raw = dict(architecture)
        return AutoConfig.for_model(raw.pop("model_type", "llama"), **raw)
    local = Path(config.llm).expanduser()
    if (local / "config.json").is_file():
        return AutoConfig.from_pretrained(str(local))
    from reamo.presets import PRESET_NAMES, get_preset

    for name in PRESET_NAMES:
        preset = get_preset(name)
        if preset.llm_architecture and config.llm in (preset.llm_folder, preset.llm_hub_id):
            raw = dict(preset.llm_architecture)
            return AutoConfig.for_model(raw.pop("model_type"), **raw)
    raise ConfigError(
        f"cannot size the LLM {config.llm!r}: its config.json is not on disk and it is not a preset's LLM; put the "
        "model folder there or pass architecture= (a transformers config dict: hidden_size, num_hidden_layers, ...)"
    )


@functools.lru_cache(maxsize=16)
def _llm_counts(config_json: str) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(total parameters, parameters in linear layers of the decoder, {linear name: (in, out)}) on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_json)
    architecture = AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture)
    output = model.get_output_embeddings()
    linears: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            linears[name] = (module.in_features, module.out_features)
    linear_params = sum(i * o for i, o in linears.values())
    return sum(p.numel() for p in model.parameters()), linear_params, linears


def llm_parameter_counts(architecture: Any) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Parameters of a causal LM built from `architecture` on the meta device (no memory, about a second for 7B)."""
    return _llm_counts(json.dumps(architecture.to_diff_dict() | {"model_type": architecture.model_type},
                                  sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _encoder_counts(config_json: str) -> dict[str, int]:
    from reamo.model.imagebind_encoder import _import_imagebind_model

    sizes = json.loads(config_json)
    module = _import_imagebind_model()
    try:
        with torch.device("meta"):
            model = module.ImageBindModel(**sizes)
    except RuntimeError:  # ImageBind calls .item() on a linspace while building its trunks
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = module.ImageBindModel(**sizes)
    counts: dict[str, int] = {}
    for part in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
        for key, sub in getattr(model, part).items():
            counts[key] = counts.get(key, 0) + sum(p.numel() for p in sub.parameters())
    return counts


def encoder_parameter_counts(encoder: ImageBindEncoderConfig) -> dict[str, int]:
    """ImageBind parameters per modality key (vision, text, audio, depth, thermal, imu), without memory."""
    return _encoder_counts(json.dumps(encoder.model_dump(exclude={"checkpoint"}), sort_keys=True))


def lora_parameters(linears: dict[str, tuple[int, int]], r: int, target_modules: list[str] | str) -> int:
    """r x (in + out) per adapted linear layer ("all-linear" = every linear but the output head, as peft does)."""
    if target_modules == "all-linear":
        chosen = linears.values()
    else:
        names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        chosen = [shape for name, shape in linears.items() if name.rsplit(".", 1)[-1] in names]
    return sum(r * (i + o) for i, o in chosen)


def projector_parameters(in_dim: int, hidden: int, tokens: int, kind: str) -> int:
    if kind == "linear":
        return in_dim * hidden * tokens + hidden * tokens
    return in_dim * hidden + hidden + hidden * hidden * tokens + hidden * tokens


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, context: int, batch: int, bytes_per_value: float) -> int:
    """Keys and values of every layer for `context` tokens of `batch` sequences."""
    return int(2 * layers * kv_heads * head_dim * context * batch * bytes_per_value)


# ---------------------------------------------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------------------------------------------


def estimate(
    config: ReamoConfig | str,
    context: int = 2048,
    batch: int = 1,
    training: bool = False,
    trainable: tuple[str, ...] = ("lora", "projector"),
    gradient_checkpointing: bool = True,
    architecture: dict[str, Any] | None = None,
) -> MemoryEstimate:
    """Accelerator memory for `config` (a ReamoConfig or a preset name) at `context` tokens x `batch` sequences.

    Inference is sized at its peak, the prefill of the whole context (h = hidden, I = intermediate, b = compute
    bytes, B = batch, C = context; transformers' generate keeps logits for the last position only):

        weights + KV cache(C) + one layer's prefill tensors    B x C x (4h + 3I) x b
                              + LoRA's float32 input copy      B x C x I x 4              (with LoRA, b < 4)
                              + one dequantized weight         max(in x out) x b          (4-bit: bitsandbytes
                                                                                           dequantizes for prefill)
                              + attention mask                 B x C x C x b              (SDPA's fused kernels
                                                                                           keep no C x C scores)
                              + one layer's KV being grown     KV cache / layers          (torch.cat per step)
                              + last-position logits           B x vocab x (b + 8)        (+ float32 copy + scores)

    A 4-bit LLM is counted as inference loads it: non-quantized weights in the compute dtype (only training runs
    peft's prepare_model_for_kbit_training, which upcasts them, the residual stream and the KV cache to float32).
    Training adds gradients + Adam moments and activations: with gradient checkpointing each layer's input, one
    layer recomputed (~34 h bytes per token at 16-bit, Korthikanti et al. 2022) and float32 logits + their gradient
    for every position (the upper bound: where the LM can keep logits by a mask, only target positions are computed).
    """
    name = config if isinstance(config, str) else Path(config.llm).name
    if isinstance(config, str):
        from reamo.presets import get_preset

        preset = get_preset(config)
        architecture = architecture or preset.llm_architecture
        config = preset.config
    if context < 1 or batch < 1:
        raise ConfigError(f"context and batch must be positive (got context={context}, batch={batch})")
    arch = llm_architecture(config, architecture)
    total_params, linear_params, linears = llm_parameter_counts(arch)
    compute = DTYPE_BYTES[config.dtype]
    hidden, layers = arch.hidden_size, arch.num_hidden_layers
    heads = arch.num_attention_heads
    kv_heads = getattr(arch, "num_key_value_heads", None) or heads
    head_dim = getattr(arch, "head_dim", None) or hidden // heads
    intermediate = getattr(arch, "intermediate_size", 4 * hidden)
    parts: list[MemoryPart] = []

    if config.load_in_4bit:
        parts.append(MemoryPart(name="llm (nf4 linears)", bytes=int(linear_params * NF4_BYTES), parameters=linear_params,
                                bytes_per_parameter=round(NF4_BYTES, 4), note="4-bit NF4 + double-quant constants"))
        rest = total_params - linear_params
        # peft's prepare_model_for_kbit_training (run before adding LoRA for training) upcasts these to fp32
        rest_bytes = 4.0 if training else compute
        parts.append(MemoryPart(name="llm (embeddings, norms)", bytes=int(rest * rest_bytes), parameters=rest,
                                bytes_per_parameter=rest_bytes,
                                note=("float32 (upcast for k-bit training)" if training else config.dtype)
                                + ", not quantized"))
    else:
        parts.append(MemoryPart(name="llm", bytes=int(total_params * compute), parameters=total_params,
                                bytes_per_parameter=compute, note=config.dtype))

    modalities = list(dict.fromkeys(config.modalities)) if config.encoder is not None else []
    if config.encoder is not None and modalities:
        counts = encoder_parameter_counts(config.encoder)
        keys = sorted({ENCODER_KEYS[m] for m in modalities})
        used = sum(counts[k] for k in keys)
        parts.append(MemoryPart(name="encoder (imagebind)", bytes=int(used * compute), parameters=used,
                                bytes_per_parameter=compute,
                                note=f"trunks {'+'.join(keys)} of {sum(counts.values()) / 1e6:.0f} M, frozen"))
        projector_each = projector_parameters(config.encoder.out_embed_dim, hidden, config.tokens_per_input,
                                              config.projector_type)
        projector = projector_each * len(modalities)
        projector_bytes = 4.0 if config.load_in_4bit else compute
        parts.append(MemoryPart(name="projectors", bytes=int(projector * projector_bytes), parameters=projector,
                                bytes_per_parameter=projector_bytes,
                                note=f"{len(modalities)} x {config.projector_type}"))
    else:
        projector = 0

    lora = 0
    if config.lora is not None:
        lora = lora_parameters(linears, config.lora.r, config.lora.target_modules)
        parts.append(MemoryPart(name="lora adapters", bytes=lora * 4, parameters=lora, bytes_per_parameter=4.0,
                                note=f"r={config.lora.r}, fp32"))

    if training:
        learned = (lora if "lora" in trainable else 0) + (projector if "projector" in trainable else 0)
        parts.append(MemoryPart(name="gradients + adam", bytes=learned * ADAM_BYTES, parameters=learned,
                                bytes_per_parameter=float(ADAM_BYTES), note="fp32 grad + 2 moments"))
        # Korthikanti et al. (2022): ~34 x hidden bytes per token per layer at 16-bit with flash attention;
        # with checkpointing only each layer's input is kept, plus one layer recomputed during backward.
        per_layer = 34 * hidden * context * batch * compute / 2
        kept = layers * hidden * context * batch * compute if gradient_checkpointing else layers * per_layer
        recompute = per_layer if gradient_checkpointing else 0
        logits = batch * context * arch.vocab_size * 4 * 2  # fp32 logits and their gradient
        parts.append(MemoryPart(name="activations", bytes=int(kept + recompute + logits),
                                note="rough; " + ("gradient checkpointing" if gradient_checkpointing else "no checkpointing")))
    else:
        parts.append(MemoryPart(name="kv cache", bytes=kv_cache_bytes(layers, kv_heads, head_dim, context, batch, compute),
                                note=f"2 x {layers} layers x {kv_heads} kv heads x {head_dim} x {context} x {batch}"))
        prefill = batch * context * (4 * hidden + 3 * intermediate) * compute  # one layer's live tensors in prefill
        lora_copy = batch * context * intermediate * 4 if config.lora is not None and compute < 4 else 0
        dequantized = max((i * o for i, o in linears.values()), default=0) * compute if config.load_in_4bit else 0
        mask = batch * context * context * compute
        growing = kv_cache_bytes(1, kv_heads, head_dim, context, batch, compute)
        logits = batch * arch.vocab_size * (compute + 8)  # generate keeps only the last position's logits
        parts.append(MemoryPart(name="activations", bytes=int(prefill + lora_copy + dequantized + mask + growing + logits),
                                note="prefill peak: one layer, mask, last-position logits"))

    return MemoryEstimate(model=name, context=context, batch=batch, training=training, parts=parts,
                          total_bytes=sum(p.bytes for p in parts))


def available_memory() -> tuple[int, str]:
    """Free bytes on the first CUDA device, else the machine's available RAM (where the model would then live)."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), f"free on {torch.cuda.get_device_name(0)}"
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE")), "available RAM (no CUDA device)"
    except (ValueError, OSError, AttributeError) as error:
        raise ConfigError("cannot tell how much memory is available; pass available_bytes=") from error


def check_fits(estimate: MemoryEstimate, available_bytes: int | None = None, headroom: float = 0.05) -> int:
    """Return the available bytes, or raise `MemoryBudgetError` naming the shortfall and the largest parts.

    `headroom` is kept free for the CUDA context, allocator fragmentation and the grounding tools.
    """
    where = "given"
    if available_bytes is None:
        available_bytes, where = available_memory()
    needed = int(estimate.total_bytes * (1 + headroom))
    if needed <= available_bytes:
        logger.info("memory: needs ~%.2f GiB (+%d%% headroom), %.2f GiB %s", estimate.total_gib, headroom * 100,
                    available_bytes / GIB, where)
        return available_bytes
    largest = sorted(estimate.parts, key=lambda p: p.bytes, reverse=True)[:3]
    mode = "training" if estimate.training else "inference"
    hints = ["a 4-bit preset (reamo-7b-4bit)"] if not any("nf4" in p.name for p in estimate.parts) else []
    hints += [f"a shorter context (now {estimate.context})"] if estimate.context > 512 else []
    hints += [f"a smaller batch (now {estimate.batch})"] if estimate.batch > 1 else []
    hints += ["a GPU with more memory"]
    raise MemoryBudgetError(
        f"{estimate.model} ({mode}, context {estimate.context}, batch {estimate.batch}) needs an estimated "
        f"{needed / GIB:.2f} GiB ({estimate.total_gib:.2f} GiB + {headroom:.0%} headroom; largest parts: "
        + ", ".join(f"{p.name} {p.gib:.2f} GiB" for p in largest)
        + f") but only {available_bytes / GIB:.2f} GiB is {where}: short by {(needed - available_bytes) / GIB:.2f} GiB."
        f" Try {', or '.join(hints)}."
    )


# ---------------------------------------------------------------------------------------------------------------
# Batched generation throughput
# ---------------------------------------------------------------------------------------------------------------


def benchmark_generation(model: Any, prompt: str, batch_sizes: tuple[int, ...] = (1, 2, 4),
                         max_new_tokens: int = 16) -> list[dict[str, float]]:
    """Tokens per second of `ReamoModel.generate` (left-padded batches) at each batch size, same prompt repeated."""
    rows: list[dict[str, float]] = []
    for size in batch_sizes:
        started = time.perf_counter()
        model.generate([prompt] * size, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - started
        tokens = size * max_new_tokens  # min_new_tokens = max_new_tokens: every row generates exactly that many
        rows.append({"batch": size, "seconds": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds})
    return rows
