"""`reamo memory --measure`: will a preset fit this GPU, and how fast is it? Measured before any download.

The preset's LLM is built with random weights of its exact shapes (a transformers config from the preset's
`llm_architecture`, saved as safetensors shards in a temporary folder with a small word-level tokenizer) and its
ImageBind encoder with `checkpoint=None`, then loaded through the normal `ReamoModel.from_config` path (NF4 + double
quantisation for `reamo-7b-4bit`). Reported:

- load: memory after loading, against `reamo.memory.estimate`'s weights;
- peak: the highest memory while generating `new_tokens` after a `context`-token prompt in a batch of `batch`,
  against the full inference estimate at that context (it must not be below: it is what `check_fits` refuses on);
- speed: new tokens per second at batch 1 and at `speed_batch`, for each decoding mode (`DECODING_MODES`: the
  default "eager", "static" cache, "compile" = transformers' compiled decoding), so a GPU session can pick one;
- training: the peak of one QLoRA optimizer step (LoRA + projectors, gradient checkpointing, bf16 autocast on CUDA)
  on `train_rows` x `train_seq` tokens, against the training estimate.

On CUDA memory is `torch.cuda.max_memory_allocated` (tensors; the CUDA context and allocator cache come on top); on
CPU it is the process's resident memory (RSS, peak via /proc/self/status VmHWM), which includes Python and torch
themselves: there the numbers show that the path runs (CI runs the tiny preset), not what a GPU needs.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from reamo.errors import ConfigError
from reamo.memory import GIB, estimate

logger = logging.getLogger(__name__)

SHARD_BYTES = 2 * GIB
TOKENIZER_WORDS = 2000  # word-level vocabulary of the stand-in tokenizer (the LLM's vocabulary can be larger)


class SpeedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decoding: str
    batch: int
    new_tokens: int
    seconds: float | None = None
    tokens_per_s: float | None = None
    error: str | None = None


class TrainingStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int
    sequence: int
    seconds: float | None = None
    peak_gib: float | None = None
    estimate_gib: float
    sliced_logits: bool | None = None
    error: str | None = None


class MeasureReport(BaseModel):
    """What `measure` found; `describe()` is the table the CLI prints."""

    model_config = ConfigDict(extra="forbid")

    preset: str
    device: str
    memory: str
    versions: dict[str, str]
    build_seconds: float
    load_seconds: float
    load_gib: float
    load_estimate_gib: float
    context: int
    batch: int
    new_tokens: int
    peak_gib: float
    peak_estimate_gib: float
    speed: list[SpeedRow]
    training: TrainingStep | None = None

    @property
    def estimate_covers_peak(self) -> bool:
        return self.peak_estimate_gib >= self.peak_gib

    def describe(self) -> str:
        cpu = self.device == "cpu"
        note = " (CPU RSS: includes Python and torch; compare only on a GPU)" if cpu else ""
        lines = [f"measured {self.preset} with random weights on {self.device} ({self.memory}){note}",
                 "  " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                 f"  build {self.build_seconds:.1f} s, load {self.load_seconds:.1f} s",
                 f"  {'loaded':<40} {_size(self.load_gib)}   estimate {_size(self.load_estimate_gib)}",
                 f"  {f'peak, {self.context} tokens x {self.batch} + {self.new_tokens} new':<40} "
                 f"{_size(self.peak_gib)}   estimate {_size(self.peak_estimate_gib)}"
                 + ("" if cpu else f"  ({'holds' if self.estimate_covers_peak else 'BELOW the peak'}, "
                                   f"{(self.peak_estimate_gib / self.peak_gib - 1) * 100:+.0f}%)")]
        for row in self.speed:
            result = f"{row.tokens_per_s:8.1f} tokens/s" if row.tokens_per_s is not None else f"failed: {row.error}"
            lines.append(f"  {f'decoding {row.decoding}, batch {row.batch}, {row.new_tokens} new tokens':<40} {result}")
        if self.training is not None:
            step = self.training
            label = f"QLoRA step, {step.rows} x {step.sequence} tokens"
            if step.error is not None or step.peak_gib is None:
                lines.append(f"  {label:<40} failed: {step.error}")
            else:
                lines.append(f"  {label:<40} {_size(step.peak_gib)}   estimate {_size(step.estimate_gib)}  "
                             f"({step.seconds:.1f} s; logits "
                             f"{'of target positions only' if step.sliced_logits else 'of every position'})")
        return "\n".join(lines)


def _size(gib: float) -> str:
    return f"{gib:7.2f} GiB" if abs(gib) >= 1 else f"{gib * 1024:7.1f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# Memory readings
# ---------------------------------------------------------------------------------------------------------------


def _proc_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class _Meter:
    """Current and peak memory: CUDA tensors on a GPU, the process's RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @property
    def kind(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.cuda else "process RSS"

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def current(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return _proc_status("VmRSS") or 0

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        found = _proc_status("VmHWM")
        if found is not None:
            return found
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------------------
# Random weights of a preset's shapes
# ---------------------------------------------------------------------------------------------------------------


def build_random_llm(architecture: dict[str, Any], folder: Path, dtype: torch.dtype = torch.float16,
                     seed: int = 0) -> Path:
    """A hub-style LLM folder: config.json, safetensors shards (+ index) of random weights with the architecture's
    exact shapes (norms 1, everything else N(0, 0.02)), and a word-level tokenizer whose words `w3`, `w4`, ... are
    one token each. Shards are made and written one at a time: building a 7B needs one shard (2 GiB) of memory."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(architecture)
    config = AutoConfig.for_model(raw.pop("model_type", "llama"), **raw)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    del model
    size = torch.empty((), dtype=dtype).element_size()
    plan: list[list[str]] = [[]]  # tensor names per shard, each shard at most SHARD_BYTES (or one big tensor)
    used = 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * size
        if plan[-1] and used + nbytes > SHARD_BYTES:
            plan.append([])
            used = 0
        plan[-1].append(name)
        used += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for index, names in enumerate(plan, start=1):
        file = f"model-{index:05d}-of-{len(plan):05d}.safetensors"
        shard = {name: torch.ones(shapes[name], dtype=dtype) if name.endswith("norm.weight")
                 else (torch.randn(shapes[name], generator=generator) * 0.02).to(dtype) for name in names}
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map |= {name: file for name in names}
        del shard
    total = sum(torch.Size(shape).numel() * size for shape in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1), encoding="utf-8")
    _word_tokenizer(config.vocab_size).save_pretrained(folder)
    return folder


def _word_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = min(TOKENIZER_WORDS, vocab_size)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def _prompt(model: Any, tokens: int, seed: int) -> str:
    """A prompt of exactly `tokens` tokens (counting the BOS the model adds) of the stand-in tokenizer's words."""
    rng = random.Random(seed)
    bos = 1 if getattr(model.tokenizer, "add_bos_token", False) and model.tokenizer.bos_token_id is not None else 0
    text = " ".join(f"w{rng.randrange(3, min(TOKENIZER_WORDS, len(model.tokenizer)))}" for _ in range(tokens - bos))
    if len(model.tokenize_with_placeholders(text)) != tokens:
        raise ConfigError(f"the stand-in tokenizer did not give a {tokens}-token prompt")
    return text


# ---------------------------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------------------------


def measure(
    preset: str = "tiny",
    context: int = 2048,
    batch: int = 1,
    new_tokens: int = 32,
    speed_batch: int = 16,
    speed_prompt: int = 64,
    speed_tokens: int = 128,
    decoding: tuple[str, ...] = ("eager", "static", "compile"),
    train_rows: int | None = 4,
    train_seq: int = 1024,
    device: str = "auto",
    folder: str | Path | None = None,
) -> MeasureReport:
    """Build `preset` with random weights here and measure it (see the module docstring); `train_rows=None` skips
    the QLoRA step. `folder`: where to build the random LLM (default: a temporary folder, removed afterwards)."""
    import peft
    import transformers

    from reamo.model.modeling_reamo import DECODING_MODES, ReamoModel, _configure_decoding
    from reamo.presets import get_preset

    unknown = [mode for mode in decoding if mode not in DECODING_MODES]
    if unknown:
        raise ConfigError(f"unknown decoding mode(s) {unknown}; choose from {', '.join(DECODING_MODES)}")
    chosen = get_preset(preset)
    if chosen.llm_architecture is None:
        raise ConfigError(f"preset {preset!r} has no llm_architecture to build random weights from")
    config = chosen.config.model_copy(update={"device": device})
    target = config.torch_device()
    if target.type != "cuda" and preset != "tiny":
        raise ConfigError(f"measuring {preset!r} needs a CUDA GPU (random full-size weights on CPU would take hours); "
                          "on CPU, use --preset tiny to check that the path runs")
    meter = _Meter(target)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    device_name = torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="reamo-measure-") as scratch:
        llm_dir = Path(folder) if folder is not None else Path(scratch) / "llm"
        started = time.perf_counter()
        weight_dtype = torch.float32 if config.dtype == "float32" else torch.float16
        build_random_llm(chosen.llm_architecture, llm_dir, dtype=weight_dtype)
        build_seconds = time.perf_counter() - started
        encoder = config.encoder.model_copy(update={"checkpoint": None}) if config.encoder is not None else None
        config = config.model_copy(update={"llm": str(llm_dir), "encoder": encoder})

        meter.reset_peak()
        before = 0 if meter.cuda else meter.current()
        started = time.perf_counter()
        model = ReamoModel.from_config(config)
        model.eval()
        load_seconds = time.perf_counter() - started
        load_bytes = meter.current() - before
        inference = estimate(config, context=context + new_tokens, batch=batch)
        weights = sum(p.bytes for p in inference.parts if p.name not in ("kv cache", "activations"))
        logger.info("loaded %s in %.1f s: %.2f GiB", preset, load_seconds, load_bytes / GIB)

        prompt = _prompt(model, context, seed=1)
        stop_none = _no_stopping()
        meter.reset_peak()
        model.generate([prompt] * batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       stopping_criteria=stop_none)
        peak = meter.peak() - before

        speed: list[SpeedRow] = []
        short = _prompt(model, speed_prompt, seed=2)
        generation = model.llm.generation_config
        loaded_settings = (generation.cache_implementation, getattr(generation, "compile_config", None))
        quantizer = getattr(model.llm, "hf_quantizer", None)
        quantizer_class = type(quantizer)
        for mode in decoding:
            _configure_decoding(model.llm, mode)
            for size in dict.fromkeys((1, speed_batch)):
                speed.append(_time_generation(model, mode, short, size, speed_tokens, stop_none, target))
            generation.cache_implementation, generation.compile_config = loaded_settings
            if quantizer is not None:
                quantizer.__class__ = quantizer_class
        del model
        meter.reset_peak()

        training = None
        if train_rows is not None:
            training = _training_step(config, train_rows, train_seq, meter, before)

    return MeasureReport(
        preset=preset, device=device_name, memory=meter.kind, versions=versions, build_seconds=round(build_seconds, 2),
        load_seconds=round(load_seconds, 2), load_gib=load_bytes / GIB, load_estimate_gib=weights / GIB,
        context=context, batch=batch, new_tokens=new_tokens, peak_gib=peak / GIB,
        peak_estimate_gib=inference.total_gib, speed=speed, training=training,
    )


def _no_stopping() -> Any:
    """No stopping criteria: random weights repeat themselves, and the repetition stop would end the run early."""
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([])


def _time_generation(model: Any, mode: str, prompt: str, batch: int, tokens: int, stop: Any,
                     device: torch.device) -> SpeedRow:
    """Tokens per second of `model.generate` (greedy, exactly `tokens` new tokens a row) after warm-up runs (two for
    "compile": one compiles, one records the CUDA graphs)."""
    row = SpeedRow(decoding=mode, batch=batch, new_tokens=tokens)
    try:
        for _ in range(2 if mode == "compile" else 1):
            model.generate([prompt] * batch, max_new_tokens=tokens, min_new_tokens=tokens, stopping_criteria=stop)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate([prompt] * batch, max_new_tokens=tokens, min_new_tokens=tokens, stopping_criteria=stop)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row.seconds = time.perf_counter() - started
        row.tokens_per_s = batch * tokens / row.seconds
    except Exception as error:  # noqa: BLE001 - one mode failing (e.g. compilation) must not hide the others
        logger.warning("decoding %s at batch %d failed: %s", mode, batch, error)
        row.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
    return row


def _training_step(config: Any, rows: int, sequence: int, meter: _Meter, before: int) -> TrainingStep:
    """One optimizer step as the trainer takes it: LoRA + projectors trainable, gradient checkpointing, AdamW,
    bf16 autocast on CUDA when the config computes in bfloat16; targets on the second half of each row."""
    from reamo.model.modeling_reamo import ReamoModel

    predicted = estimate(config, context=sequence, batch=rows, training=True)
    step = TrainingStep(rows=rows, sequence=sequence, estimate_gib=predicted.total_gib)
    model = None
    try:
        meter.reset_peak()
        started = time.perf_counter()
        model = ReamoModel.from_config(config, training=True)
        model.requires_grad_(False)
        for name, parameter in model.llm.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
        model.projectors.requires_grad_(True)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads()
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        device = model.device
        generator = torch.Generator().manual_seed(3)
        vocab = min(TOKENIZER_WORDS, len(model.tokenizer))
        ids = torch.randint(3, vocab, (rows, sequence), generator=generator).to(device)
        labels = ids.clone()
        labels[:, : sequence // 2] = -100
        mask = torch.ones_like(ids)
        autocast = device.type == "cuda" and config.dtype == "bfloat16"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            embeds = model.llm.get_input_embeddings()(ids)
            loss = model(embeds, mask, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step.seconds = time.perf_counter() - started
        step.peak_gib = (meter.peak() - before) / GIB
        step.sliced_logits = model._slices_logits()
    except Exception as error:  # noqa: BLE001 - report it with the inference numbers rather than lose them
        logger.warning("QLoRA step failed: %s", error)
        step.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
    finally:
        del model
        gc.collect()
    return step
