"""Reamo's model: modality encoder -> projector -> LoRA-tuned LLaMA-family LLM, with media spliced at placeholders.

As in LLaVA / NExT-GPT, the prompt carries `<image>` / `<video>` / `<audio>` placeholders; each becomes
`tokens_per_input` projected encoder embeddings in the LLM's input sequence. Only the projector and the LoRA
adapter are trained, so only they (plus the config) are saved: `adapter/` (peft, safetensors) and
`projector.safetensors`, written into a temporary folder that is renamed into place when complete.

A folder may also hold `writer_adapter/`: a second LoRA adapter on the same base that writes the free-text answer
(`generations`), while `adapter/` makes every scored decision (rank classification, the decision heads' states).
Tuning passes that teach the decision formats can cost the free writing some accuracy; two adapters let each job
use the pass that does it best (see weights/default/MODEL_CARD.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.files import atomic_folder
from reamo.model.decision_heads import StateRead, as_reads
from reamo.model.imagebind_encoder import EncodedModality, ImageBindEncoder, ImageBindEncoderConfig
from reamo.model.prompt_lookup import PromptLookup
from reamo.model.shared_prefix import (
    KeyValues,
    PrefixCache,
    ScoringItem,
    TokenTree,
    common_prefix_length,
    tree_attention_mask,
)

logger = logging.getLogger(__name__)

# Rows x (1 + draft) tokens one decoding pass may feed before drafting stops paying: on 2 CPU cores a pass reads the
# weights once, and up to ~16 tokens cost about 1.5-1.8x one token (measured with the embedded default), so drafts
# are fed only while few rows are left writing (a single request, a batch's tail).
DRAFT_PASS_TOKENS = 16

CONFIG_NAME = "reamo_config.json"
PROJECTOR_NAME = "projector.safetensors"
ADAPTER_DIR = "adapter"
WRITER_ADAPTER_DIR = "writer_adapter"
ADAPTER_CONFIG = "adapter_config.json"  # peft's file naming a LoRA adapter folder
PLACEHOLDERS: dict[str, EncodedModality] = {"<image>": "image", "<video>": "video", "<audio>": "audio"}
PLACEHOLDER_IDS: dict[EncodedModality, int] = {"image": -200, "video": -201, "audio": -202}
_PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")")


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


class ReamoConfig(BaseModel):
    """Everything needed to rebuild a Reamo model; saved as `reamo_config.json`."""

    model_config = ConfigDict(extra="forbid")

    llm: str = Field(description="LLaMA-family causal LM: local folder or hub id (e.g. lmsys/vicuna-7b-v1.5)")
    llm_gguf_file: str | None = Field(default=None, description="GGUF file inside `llm` to load and dequantize")
    chat_template: str = "vicuna_v1.1"
    encoder: ImageBindEncoderConfig | None = None
    modalities: list[EncodedModality] = Field(default_factory=lambda: ["image", "video", "audio"])
    projector_type: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    tokens_per_input: int = Field(default=1, ge=1)
    lora: LoraSettings | None = None
    load_in_4bit: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(default="auto", description="'auto' = this process's CUDA device when there is one, else CPU")

    def torch_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per DDP rank
        return torch.device("cpu")

    def save(self, folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(self.model_dump_json(indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "ReamoConfig":
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"not a Reamo model folder: {folder} has no {CONFIG_NAME}; pass a folder written by "
                "ReamoModel.save_pretrained or 'default'"
            )
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


class RepetitionStop:
    """Stop a sequence once its text ends in the same item three times over, e.g. "(state, GPE)" x 3.

    Small models fall into such loops; every repeat is a duplicate the parser would merge anyway, so generating
    them only costs time (up to max_new_tokens). Per-row, as transformers' StoppingCriteria are.
    """

    def __init__(self, tokenizer: Any, window: int = 48, repeats: int = 3) -> None:
        self.tokenizer = tokenizer
        self.window = window
        self.pattern = re.compile(r"(.{4,120}?)" + r"\1" * (repeats - 1) + r"\s*$", re.DOTALL)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -self.window :], skip_special_tokens=True)
        return torch.tensor([bool(self.pattern.search(t)) for t in tails], device=input_ids.device)

    def repeats(self, generated: list[int]) -> bool:
        """The same check for one row's generated token ids."""
        return bool(self.pattern.search(self.tokenizer.decode(generated[-self.window:], skip_special_tokens=True)))


class Generation(BaseModel):
    """One generated text and why it stopped: "end" (end of sequence), "repetition" (`RepetitionStop`),
    "max_new_tokens" / "max_time" (cut: the answer may be incomplete), "unknown" (transformers' generate)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    stop: Literal["end", "repetition", "max_new_tokens", "max_time", "unknown"] = "end"


class Projector(nn.Module):
    """Encoder embedding [batch, in_dim] -> `tokens` LLM input embeddings [batch, tokens, hidden]."""

    def __init__(self, in_dim: int, hidden: int, tokens: int, kind: str) -> None:
        super().__init__()
        self.tokens, self.hidden = tokens, hidden
        if kind == "linear":
            self.net = nn.Linear(in_dim, hidden * tokens)
        elif kind == "mlp2x_gelu":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden * tokens))
        else:
            raise ConfigError(f"unknown projector type {kind!r}; use 'linear' or 'mlp2x_gelu'")

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding).view(embedding.shape[0], self.tokens, self.hidden)


INFERENCE_PRECISIONS = ("float32", "bfloat16", "auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX-512 BF16 / AMX via oneDNN); emulated bf16 is slower
    than float32. Asked through torch's own (private) probe; if a torch release drops it, assume not."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _quiet_load(config: ReamoConfig) -> contextlib.AbstractContextManager[None]:
    """While a model that is not 4-bit loads, bitsandbytes stays unimported (peft would import it, and on a CPU it
    reaches for the network and warns; see reamo/quiet.py); peft's one known deprecation warning is filtered."""
    from reamo.quiet import bitsandbytes_hidden, filter_known_warnings

    filter_known_warnings()
    return contextlib.nullcontext() if config.load_in_4bit else bitsandbytes_hidden()


def load_llm(config: ReamoConfig, decoding: str | None = None) -> tuple[nn.Module, Any]:
    """Load the causal LM and its tokenizer (optionally 4-bit NF4 with double quantisation through bitsandbytes).

    `decoding` picks how `generate` decodes (`DECODING_MODES`; default `$REAMO_DECODING`, else "eager": unchanged).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(config.dtype)}
    if config.llm_gguf_file:
        kwargs["gguf_file"] = config.llm_gguf_file
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ConfigError("load_in_4bit needs bitsandbytes: pip install 'reamo[gpu]'") from err
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
        )
    device = config.torch_device()
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    local = Path(config.llm).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if local.exists() else config.llm, gguf_file=config.llm_gguf_file
        )
        llm = AutoModelForCausalLM.from_pretrained(str(local) if local.exists() else config.llm, **kwargs)
    except OSError as err:
        raise CheckpointNotFoundError(
            f"LLM not found: {config.llm!r} ({err.__class__.__name__}). Pass a local folder with config.json, "
            "tokenizer files and *.safetensors of a LLaMA-family model (e.g. vicuna-7b-v1.5), or a hub id on a "
            "machine that can reach the hub"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _configure_decoding(llm, decoding or os.environ.get("REAMO_DECODING") or "eager")
    return llm, tokenizer


class ReamoModel(nn.Module):
    """LLM + optional ImageBind encoder + one projector per encoded modality."""

    def __init__(self, config: ReamoConfig, llm: nn.Module, tokenizer: Any, encoder: ImageBindEncoder | None) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoder = encoder
        hidden = llm.get_input_embeddings().embedding_dim
        device = self.device
        self.projectors = nn.ModuleDict()
        if encoder is not None:
            compute_dtype = torch.float32 if config.load_in_4bit and device.type == "cpu" else _torch_dtype(config.dtype)
            if config.load_in_4bit and device.type == "cuda":
                compute_dtype = torch.bfloat16
            encoder.to(device=device, dtype=compute_dtype)
            for modality in config.modalities:
                self.projectors[modality] = Projector(
                    encoder.out_dim, hidden, config.tokens_per_input, config.projector_type
                ).to(device=device, dtype=compute_dtype)
        # generate() on one model object from several threads must not interleave (peft / KV cache state)
        self._lock = threading.Lock()
        # key/values of recently used prompt starts (system turns), shared by generation and scoring (without a writer)
        self.prefix_cache = PrefixCache()
        self.adapter_merged = False  # `prepare_for_inference` folded a LoRA adapter into the LLM's weights
        # the LLM with the writer adapter (`add_writer`): it writes the free-text answers; None = `llm` writes them
        self.writer_llm: nn.Module | None = None
        self.writer_prefix_cache = PrefixCache()  # its own key/values: the two LLMs' weights differ

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ReamoConfig, training: bool = False, decoding: str | None = None) -> "ReamoModel":
        """Build the model; `training=True` (the trainer) prepares a 4-bit LLM for k-bit training (see `add_lora`)."""
        with _quiet_load(config):
            llm, tokenizer = load_llm(config, decoding)
            encoder = ImageBindEncoder(config.encoder) if config.encoder is not None else None
            model = cls(config, llm, tokenizer, encoder)
            if config.lora is not None:
                model.add_lora(config.lora, training=training)
        return model

    def add_lora(self, settings: LoraSettings, training: bool = True) -> None:
        """Wrap the LLM with a new LoRA adapter. With `training` and a 4-bit LLM, peft's
        `prepare_model_for_kbit_training` runs first (QLoRA: non-quantized weights upcast to float32, gradient
        checkpointing on); inference skips it: the upcast made the residual stream, activations and KV cache float32
        (a 2,415-token prompt peaked 3 GiB above the loaded 7B model instead of ~1.4 GiB)."""
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if self.config.load_in_4bit and training:
            self.llm = prepare_model_for_kbit_training(self.llm)
        lora = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules,
            task_type="CAUSAL_LM",
        )
        self.llm = get_peft_model(self.llm, lora)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, training: bool = False, decoding: str | None = None,
                        **overrides: Any) -> "ReamoModel":
        """Load a `save_pretrained` folder; its adapter is loaded frozen (the trainer unfreezes what it trains), and a
        4-bit LLM is prepared for k-bit training only with `training=True`, as in `add_lora`."""
        path = Path(folder).expanduser()
        config = ReamoConfig.load(path)
        if overrides:
            config = config.model_copy(update=overrides)
        with _quiet_load(config):
            llm, tokenizer = load_llm(config, decoding)
            encoder = ImageBindEncoder(config.encoder) if config.encoder is not None else None
            adapter = path / ADAPTER_DIR
            if adapter.is_dir():
                from peft import PeftModel

                if training and config.load_in_4bit:
                    from peft import prepare_model_for_kbit_training

                    llm = prepare_model_for_kbit_training(llm)
                llm = PeftModel.from_pretrained(llm, str(adapter), is_trainable=False)
        model = cls(config, llm, tokenizer, encoder)
        if not training and (path / WRITER_ADAPTER_DIR).is_dir():  # training continues `adapter/` only
            model.add_writer(path / WRITER_ADAPTER_DIR, decoding)
        projector_file = path / PROJECTOR_NAME
        if model.projectors and projector_file.is_file():
            model.projectors.load_state_dict(load_file(str(projector_file)))
        elif model.projectors:
            raise CheckpointNotFoundError(f"{projector_file} is missing; the model folder is incomplete")
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config, LoRA adapter and projector (safetensors only) atomically: all of it or nothing."""
        target = Path(folder).expanduser()
        with atomic_folder(target) as staging:
            self.config.save(staging)
            if self.projectors:
                state = {k: v.detach().contiguous().cpu() for k, v in self.projectors.state_dict().items()}
                save_file(state, str(staging / PROJECTOR_NAME))
            if hasattr(self.llm, "peft_config"):
                # LoRA leaves the embeddings alone: peft need not look for the base model's vocabulary (which it
                # cannot find for a local base and warns about at every checkpoint)
                self.llm.save_pretrained(str(staging / ADAPTER_DIR), safe_serialization=True,
                                         save_embedding_layers=False)
            if self.writer_llm is not None and hasattr(self.writer_llm, "peft_config"):
                self.writer_llm.save_pretrained(str(staging / WRITER_ADAPTER_DIR), safe_serialization=True,
                                                save_embedding_layers=False)
        return target

    def add_writer(self, adapter: str | os.PathLike, decoding: str | None = None) -> None:
        """Load a second copy of the base LLM with the LoRA adapter in `adapter` (a peft folder) as the writer:
        `generations` use it, scoring and hidden states keep `llm`. It costs the memory of a second LLM and no
        time: each job runs one LLM, with its adapter folded in by `prepare_for_inference`."""
        from peft import PeftModel

        folder = Path(adapter).expanduser()
        if not (folder / ADAPTER_CONFIG).is_file():
            raise CheckpointNotFoundError(f"no LoRA adapter in {folder} (expected {ADAPTER_CONFIG} and weights)")
        with _quiet_load(self.config):
            llm, _ = load_llm(self.config, decoding)
            writer = PeftModel.from_pretrained(llm, str(folder), is_trainable=False)
        writer.eval()
        with self._lock:
            self.writer_llm = writer
            self.writer_prefix_cache.clear()

    def prepare_for_inference(self, precision: str = "float32") -> str:
        """Make this model cheaper to run for extraction only; returns the precision chosen.

        * The LoRA adapter is folded into the LLM's weights (peft `merge_and_unload`): one matmul per layer instead
          of three plus peft's per-layer Python, ~25% faster decoding on CPU, the same answers (measured on the
          GMNER / MNRE / M2E2 dev sets). Not for a 4-bit LLM, whose merge would re-quantize the weights.
        * `precision`: "float32" keeps the weights as loaded; "bfloat16" casts the LLM (2-3x faster on a CPU with
          native bfloat16 kernels, answers differ in close calls); "auto" = bfloat16 on CUDA or such a CPU.
        A merged model cannot be trained further or saved as an adapter: load it again for that.
        """
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
        with self._lock:
            if hasattr(self.llm, "merge_and_unload") and not self.config.load_in_4bit:
                self.llm = self.llm.merge_and_unload()
                self.llm.eval()
                self.adapter_merged = True
            if hasattr(self.writer_llm, "merge_and_unload") and not self.config.load_in_4bit:
                self.writer_llm = self.writer_llm.merge_and_unload()
                self.writer_llm.eval()
            if precision == "auto":
                precision = "bfloat16" if self.device.type == "cuda" or cpu_has_native_bf16() else "float32"
            if precision == "bfloat16" and not self.config.load_in_4bit:
                self.llm.to(torch.bfloat16)
                if self.writer_llm is not None:
                    self.writer_llm.to(torch.bfloat16)
            self.prefix_cache.clear()  # cached key/values of the weights before
            self.writer_prefix_cache.clear()
        return precision

    # -- inputs --------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def encoded_modalities(self) -> tuple[str, ...]:
        return tuple(self.projectors.keys())

    @functools.cached_property
    def starts_with_bos(self) -> bool:
        """Whether the tokenizer starts a text with its BOS token: by `add_bos_token` (LLaMA-2 / Vicuna) or by its
        post-processor, with `add_bos_token` False (Gemma's, Llama 3's). Prompts are tokenized piece by piece without
        special tokens, so the BOS the model was pretrained with is added here, once."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return False
        if getattr(self.tokenizer, "add_bos_token", False):
            return True
        ids = self.tokenizer("a")["input_ids"]
        return bool(ids) and ids[0] == bos

    def tokenize_with_placeholders(self, prompt: str) -> list[int]:
        """Token ids of `prompt`, each `<image>`/`<video>`/`<audio>` replaced by its negative placeholder id."""
        ids: list[int] = [self.tokenizer.bos_token_id] if self.starts_with_bos else []
        for piece in _PLACEHOLDER_RE.split(prompt):
            if piece in PLACEHOLDERS:
                ids.append(PLACEHOLDER_IDS[PLACEHOLDERS[piece]])
            elif piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def encode_media(self, modality: EncodedModality, pixels_or_mel: torch.Tensor) -> torch.Tensor:
        """Preprocessed media [batch, ...] -> projected LLM embeddings [batch, tokens, hidden]."""
        if self.encoder is None or modality not in self.projectors:
            raise ConfigError(f"this model has no encoder/projector for {modality}; its modalities: {self.encoded_modalities}")
        embedding = self.encoder(modality, pixels_or_mel.to(self.device))
        projector = self.projectors[modality]
        return projector(embedding.to(next(projector.parameters()).dtype))

    def embed(
        self, ids: list[int], media: dict[EncodedModality, list[torch.Tensor]] | None = None
    ) -> torch.Tensor:
        """Input embeddings [length, hidden] for one sequence; the n-th placeholder of a modality takes media[m][n]."""
        media = media or {}
        embeddings = self.llm.get_input_embeddings()
        used = {m: 0 for m in PLACEHOLDER_IDS}
        pieces: list[torch.Tensor] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                pieces.append(embeddings(torch.tensor(run, device=self.device)))
                run.clear()

        for token in ids:
            modality = next((m for m, pid in PLACEHOLDER_IDS.items() if pid == token), None)
            if modality is None:
                run.append(token)
                continue
            flush()
            items = media.get(modality, [])
            if used[modality] >= len(items):
                raise ConfigError(f"prompt has more <{modality}> placeholders than {modality} inputs ({len(items)})")
            projected = items[used[modality]]
            used[modality] += 1
            pieces.append(projected.reshape(-1, projected.shape[-1]).to(embeddings.weight.dtype))
        flush()
        return torch.cat(pieces, dim=0)

    def batch_embeds(
        self, sequences: list[torch.Tensor], left_pad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad [length, hidden] sequences into [batch, max_len, hidden] + attention mask (left padding for generation)."""
        longest = max(s.shape[0] for s in sequences)
        hidden = sequences[0].shape[1]
        embeds = sequences[0].new_zeros((len(sequences), longest, hidden))
        mask = torch.zeros((len(sequences), longest), dtype=torch.long, device=sequences[0].device)
        for row, seq in enumerate(sequences):
            if left_pad:
                embeds[row, longest - seq.shape[0] :] = seq
                mask[row, longest - seq.shape[0] :] = 1
            else:
                embeds[row, : seq.shape[0]] = seq
                mask[row, : seq.shape[0]] = 1
        return embeds, mask

    # -- forward / generate ----------------------------------------------------------------------------------------
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> Any:
        """inputs_embeds [batch, length, hidden], attention_mask [batch, length], labels [batch, length] (-100 = ignore).

        With labels, logits are computed only where a target token is predicted (`logits_to_keep` as a boolean
        mask): the vocabulary projection is ~20% of a small LLM's compute, and an instruction example's target is a
        small part of it. The loss is the same mean token cross-entropy the LM's own `labels=` path gives.
        """
        if labels is None or not self._slices_logits():
            return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)
        targets = labels[:, 1:]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != -100
        output = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, logits_to_keep=keep)
        logits = output.logits.reshape(-1, output.logits.shape[-1])  # (n_targets, vocab)
        output.loss = nn.functional.cross_entropy(logits.float(), targets[targets != -100])
        return output

    def forward_shared_prefix(
        self,
        prefix_embeds: torch.Tensor,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> Any:
        """`forward` for a batch whose rows all start with the same prefix, computed once instead of once per row.

        prefix_embeds [prefix_len, hidden] is run with batch size 1; its key/value cache is repeated over the
        batch and the rows' own parts (inputs_embeds [batch, length, hidden], right-padded) attend to it.
        Mathematically the same as `forward` on the concatenated rows (gradients flow through the shared cache
        into the prefix), but an instruction prompt's system message is often half of each example, so training
        and candidate scoring cost up to half as much. `labels` index the rows' own parts; their first position
        must be -100 (a token predicted from the prefix is not scored here).
        """
        from transformers import DynamicCache

        batch, prefix_len = inputs_embeds.shape[0], prefix_embeds.shape[0]
        if prefix_len == 0:
            return self.forward(inputs_embeds, attention_mask, labels)
        if labels is not None and bool((labels[:, 0] != -100).any()):
            raise ValueError("labels[:, 0] must be -100: the first token after a shared prefix is not scored")
        cache = DynamicCache(config=self.llm.config)
        ones = attention_mask.new_ones((1, prefix_len))
        self.llm(inputs_embeds=prefix_embeds.unsqueeze(0), attention_mask=ones, use_cache=True, logits_to_keep=1,
                 **{self._cache_argument(): cache})
        cache.batch_repeat_interleave(batch)
        full_mask = torch.cat([ones.expand(batch, prefix_len), attention_mask], dim=1)
        positions = torch.arange(prefix_len, prefix_len + inputs_embeds.shape[1], device=inputs_embeds.device)
        kwargs: dict[str, Any] = {self._cache_argument(): cache, "use_cache": False,
                                  "position_ids": positions.unsqueeze(0).expand(batch, -1)}
        if labels is None or not self._slices_logits():
            return self.llm(inputs_embeds=inputs_embeds, attention_mask=full_mask, labels=labels, **kwargs)
        targets = labels[:, 1:]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != -100
        output = self.llm(inputs_embeds=inputs_embeds, attention_mask=full_mask, logits_to_keep=keep, **kwargs)
        logits = output.logits.reshape(-1, output.logits.shape[-1])
        output.loss = nn.functional.cross_entropy(logits.float(), targets[targets != -100])
        return output

    def _cache_argument(self) -> str:
        """The LM forward's name for a key/value cache: `cache` in newer transformers, `past_key_values` before."""
        import inspect

        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def _slices_logits(self) -> bool:
        """Whether the LM's forward keeps logits by a boolean [batch, length] `logits_to_keep` mask.

        A signature check is not enough: transformers 5.0-5.17 take `logits_to_keep` but index with it as
        `hidden_states[:, logits_to_keep, :]`, which raises IndexError for a 2-D mask. So the LM is asked once, with
        a tiny call (`_probe_logits_mask`: two positions, one kept), and the answer is kept on this model. Where it
        fails, `forward` computes all logits and the LM's own loss: the same loss, with more memory.
        """
        known = getattr(self, "_logits_mask_support", None)
        if known is None:
            known = _probe_logits_mask(self.llm)
            self._logits_mask_support = known
            if not known:
                logger.info("this transformers' LM cannot keep logits by a boolean mask: training computes all logits")
        return known

    # -- generation and scoring ------------------------------------------------------------------------------------
    def shared_prefix_length(self, ids: list[int], prefix: str | None) -> int:
        """How many leading tokens of `ids` are the request's shared start (`prefix`, e.g. its system turn) and can
        come from `prefix_cache`: the tokens the two tokenizations agree on, never a media placeholder, never the
        whole prompt (the last prompt position must be run to predict what follows); 0 = nothing worth caching."""
        if not prefix or self.prefix_cache.settings.max_entries == 0:
            return 0
        length = min(common_prefix_length(ids, self.tokenize_with_placeholders(prefix)), len(ids) - 1)
        if length < self.prefix_cache.settings.min_tokens or any(token < 0 for token in ids[:length]):
            return 0
        return length

    def _prefix_key_values(self, prefix_ids: tuple[int, ...], writing: bool = False) -> KeyValues:
        """The key/values of a prefix (batch 1), from the cache or computed once and cached (caller holds the lock);
        `writing`: those of the LLM that writes (`writer_llm` where there is one)."""
        llm, prefix_cache = self._writer() if writing else (self.llm, self.prefix_cache)
        cached = prefix_cache.get(prefix_ids)
        if cached is not None:
            return cached
        from transformers import DynamicCache

        cache = DynamicCache(config=llm.config)
        ids = torch.tensor([list(prefix_ids)], device=self.device)
        llm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
            **{self._cache_argument(): cache})
        key_values = tuple((layer.keys, layer.values) for layer in cache.layers)
        prefix_cache.put(prefix_ids, key_values)
        return key_values

    def _writer(self) -> tuple[nn.Module, PrefixCache]:
        """The LLM that writes free text and its prefix cache: the writer adapter's where there is one."""
        if self.writer_llm is not None:
            return self.writer_llm, self.writer_prefix_cache
        return self.llm, self.prefix_cache

    def _cache_from(self, key_values: KeyValues, batch: int) -> Any:
        """A fresh DynamicCache holding `key_values` repeated over `batch` rows (the cached tensors stay as they are:
        the cache's updates concatenate into new tensors)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.llm.config)
        for layer, (key, value) in enumerate(key_values):
            cache.update(key.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1), layer)
        return cache

    def generate(
        self,
        prompts: list[str],
        media: list[dict[EncodedModality, list[torch.Tensor]]] | None = None,
        max_new_tokens: int = 256,
        max_time: float | None = None,
        prefixes: list[str | None] | None = None,
        draft_tokens: int = 0,
        **generate_kwargs: Any,
    ) -> list[str]:
        """The texts of `generations` (same arguments)."""
        return [g.text for g in self.generations(prompts, media, max_new_tokens, max_time, prefixes, draft_tokens,
                                                 **generate_kwargs)]

    @torch.no_grad()
    def generations(
        self,
        prompts: list[str],
        media: list[dict[EncodedModality, list[torch.Tensor]]] | None = None,
        max_new_tokens: int = 256,
        max_time: float | None = None,
        prefixes: list[str | None] | None = None,
        draft_tokens: int = 0,
        **generate_kwargs: Any,
    ) -> list[Generation]:
        """Generate one continuation per prompt (batched, greedy); media[i] feeds prompt i's placeholders.

        `prefixes[i]`: the start prompt i shares with other requests (`shared_prefix_length`). Rows with the same
        prefix are generated together from its cached key/values, laid out `[prefix][padding][rest]` with the
        padding masked, so every row sees exactly the positions it has alone; other rows are left-padded as usual.
        `draft_tokens` > 0: once few rows are left writing, each pass also checks up to that many prompt-lookup
        tokens per row (`_greedy`, `reamo.model.prompt_lookup`): the same greedy text in fewer passes.
        """
        media = media or [{} for _ in prompts]
        prefixes = prefixes or [None] * len(prompts)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if max_time is not None:
            kwargs["max_time"] = max_time
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([RepetitionStop(self.tokenizer)])
        kwargs.update(generate_kwargs)
        outputs: list[Generation] = [Generation(text="")] * len(prompts)
        with self._lock:
            writer, _ = self._writer()
            ids = [self.tokenize_with_placeholders(p) for p in prompts]
            cacheable = getattr(getattr(writer, "generation_config", None), "cache_implementation", None) is None
            groups: dict[tuple[int, ...], list[int]] = {}
            for row, (row_ids, prefix) in enumerate(zip(ids, prefixes)):
                length = self.shared_prefix_length(row_ids, prefix) if cacheable else 0
                groups.setdefault(tuple(row_ids[:length]), []).append(row)
            for key, rows in groups.items():
                suffixes = [self.embed(ids[r][len(key):], media[r]) for r in rows]
                embeds, mask = self.batch_embeds(suffixes)
                cache = None
                if key:
                    prefix = self.embed(list(key))
                    embeds = torch.cat([prefix.unsqueeze(0).expand(len(rows), -1, -1), embeds], dim=1)
                    mask = torch.cat([mask.new_ones((len(rows), len(key))), mask], dim=1)
                    cache = self._cache_from(self._prefix_key_values(key, writing=True), len(rows))
                if cacheable and not generate_kwargs:
                    done = self._greedy(embeds, mask, cache, len(key), max_new_tokens, max_time,
                                        [ids[r] for r in rows], draft_tokens)
                else:
                    extra = {self._cache_argument(): cache} if cache is not None else {}
                    generated = writer.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs, **extra)
                    # with inputs_embeds only, generate returns just the new tokens
                    done = [Generation(text=t, stop="unknown")
                            for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
                for r, generation in zip(rows, done):
                    outputs[r] = generation
        return outputs

    def _greedy(self, embeds: torch.Tensor, mask: torch.Tensor, cache: Any, cached: int, max_new_tokens: int,
                max_time: float | None, prompt_ids: list[list[int]] | None = None,
                draft_tokens: int = 0) -> list[Generation]:
        """Greedy decoding of a batch that drops each row as it finishes (end of sequence, a repetition loop
        (`RepetitionStop`), or the token budget), so the batch's later steps cost only the rows still writing:
        the same tokens as transformers' greedy `generate`, which computes every row until the last one ends.

        embeds / mask [batch, length(, hidden)] cover the whole prompts; the first `cached` positions are already
        in `cache` (the shared prefix), which is extended in place. Positions follow the mask, as in `generate`.
        The writer LLM (`writer_llm` where there is one) decodes.

        With `draft_tokens` and `prompt_ids` (each row's prompt token ids): once few rows are left writing (a
        single request, a batch's tail), each pass also feeds every row's prompt-lookup draft
        (`reamo.model.prompt_lookup`) and keeps it up to the first token the model's greedy choice disagrees with.
        A rejected draft's positions are masked out for that row (cropped from the cache where no row kept them),
        and positions follow each row's kept tokens, so every row sees what one-token decoding would show it.
        """
        from transformers import DynamicCache

        started = time.perf_counter()
        llm, _ = self._writer()
        eos = self.tokenizer.eos_token_id
        stop = RepetitionStop(self.tokenizer)
        cache = cache if cache is not None else DynamicCache(config=llm.config)
        cache_kw = self._cache_argument()
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = llm(inputs_embeds=embeds[:, cached:], attention_mask=mask, position_ids=positions[:, cached:],
                          use_cache=True, logits_to_keep=1, **{cache_kw: cache}).logits[:, -1]
        rows = list(range(embeds.shape[0]))
        written: list[list[int]] = [[] for _ in rows]
        reasons = ["end"] * len(rows)
        last = positions[:, -1]
        pending: list[list[int]] = [[int(t)] for t in logits.argmax(-1)]  # chosen, not yet written, per row
        window = self._sliding_window()
        lookups: dict[int, PromptLookup] = {}
        while True:
            going, chosen = [], []
            for j, row in enumerate(rows):
                for token in pending[j]:
                    if token == eos:
                        break
                    written[row].append(token)
                    if stop.repeats(written[row]):
                        reasons[row] = "repetition"
                        break
                    if len(written[row]) >= max_new_tokens:
                        reasons[row] = "max_new_tokens"
                        break
                else:
                    going.append(j)
                    chosen.append(written[row][-1])
            if not going:
                break
            if max_time is not None and time.perf_counter() - started > max_time:
                for j in going:
                    reasons[rows[j]] = "max_time"
                break
            if len(going) < len(rows):
                keep = torch.tensor(going, device=mask.device)
                cache.batch_select_indices(keep)
                mask, last = mask[keep], last[keep]
                rows = [rows[j] for j in going]
            drafts: list[list[int]] = [[] for _ in rows]
            if draft_tokens and prompt_ids is not None and len(rows) * (1 + draft_tokens) <= DRAFT_PASS_TOKENS \
                    and (window is None or (len(rows) == 1 and mask.shape[1] + max_new_tokens + 64 < window)):
                for j, row in enumerate(rows):
                    if row not in lookups:
                        lookups[row] = PromptLookup(self.tokenizer, prompt_ids[row])
                    drafts[j] = lookups[row].draft(written[row], min(draft_tokens, max_new_tokens - len(written[row])))
            width = 1 + max(len(d) for d in drafts)
            pad = eos if eos is not None else 0  # fills shorter drafts; never kept (a row keeps only its draft)
            feed = torch.tensor([[chosen[j], *d] + [pad] * (width - 1 - len(d)) for j, d in enumerate(drafts)],
                                device=mask.device)
            start = mask.shape[1]
            mask = torch.cat([mask, mask.new_ones((len(rows), width))], dim=1)
            step_positions = last[:, None] + torch.arange(1, width + 1, device=mask.device)
            out = llm(input_ids=feed, attention_mask=mask, position_ids=step_positions, use_cache=True,
                      **{cache_kw: cache}).logits
            greedy = out.argmax(-1).tolist()
            kept = []
            for j, draft in enumerate(drafts):
                count = 0
                while count < len(draft) and greedy[j][count] == draft[count]:
                    count += 1
                kept.append(count)
                mask[j, start + 1 + count:] = 0  # this row's rejected draft (and padding) stays invisible
            unused = width - 1 - max(kept)
            if unused:  # positions no row kept: drop them from the cache
                cache.crop(-unused)
                mask = mask[:, : mask.shape[1] - unused]
            last = last + 1 + torch.tensor(kept, device=mask.device)
            pending = [greedy[j][: kept[j] + 1] for j in range(len(rows))]
        return [Generation(text=self.tokenizer.decode(tokens, skip_special_tokens=True), stop=reason)
                for tokens, reason in zip(written, reasons)]

    def _sliding_window(self) -> int | None:
        """The LLM's sliding attention window, if it has one: a window counts cache positions, so masked draft
        positions would push real ones out of it; drafts are then used only where they can be cropped at once."""
        config = self.llm.config.get_text_config() if hasattr(self.llm.config, "get_text_config") else self.llm.config
        return getattr(config, "sliding_window", None) or None

    @torch.no_grad()
    def score_continuations(self, items: Sequence[ScoringItem], max_tree_tokens: int = 2048) -> list[list[float]]:
        """For each item, the log-probability the model gives each of its continuations after its prompt (summed
        over the continuation's tokens): rank classification, e.g. one relation label per candidate answer.

        Items are scored together: their prompts' cached shared start (`prefix_cache`), then one forward pass per
        chunk of at most `max_tree_tokens` tree nodes over the token tree of every `rest of prompt + continuation`,
        so each distinct token position is computed once, and logits only where a continuation token is predicted.
        Each continuation is tokenized on its own, as training tokenizes the answer apart from the prompt.
        """
        out: list[list[float]] = [[] for _ in items]
        with self._lock:
            prompts = {}
            for index, item in enumerate(items):
                if item.continuations:
                    prompts[index] = self.tokenize_with_placeholders(item.prompt)
                    if len(prompts[index]) < 2:
                        raise ValueError("scoring needs a prompt of at least two tokens")
            groups, with_media = self._group_by_cached_prefix(items, prompts)
            for index in with_media:  # media embeddings: each item on its own
                out[index] = self._score_with_media(prompts[index], items[index])
            for key, members in groups.items():
                key_values = self._prefix_key_values(key) if key else None
                chunk: list[tuple[int, list[int], list[list[int]]]] = []
                size = 0
                for index, rest in members:
                    answers = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in items[index].continuations]
                    tokens = len(rest) + sum(len(a) for a in answers)  # at most this many tree nodes
                    if chunk and size + tokens > max_tree_tokens:
                        self._score_tree(len(key), key_values, chunk, out)
                        chunk, size = [], 0
                    chunk.append((index, rest, answers))
                    size += tokens
                if chunk:
                    self._score_tree(len(key), key_values, chunk, out)
        return out

    def _group_by_cached_prefix(self, items: Sequence[ScoringItem], sequences: dict[int, list[int]],
                                keep_last: bool = False
                                ) -> tuple[dict[tuple[int, ...], list[tuple[int, list[int]]]], list[int]]:
        """The token `sequences` of `items` (by index) grouped by the cached start they share (`shared_prefix_length`
        with the item's prefix): {start ids: [(index, the rest)]}, so each start is computed once; and the indices
        of sequences with media placeholders, which run alone. `keep_last`: at least the last token stays in the
        rest (its hidden state is what is read)."""
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        with_media = []
        for index, ids in sequences.items():
            if any(token < 0 for token in ids):
                with_media.append(index)
                continue
            length = self.shared_prefix_length(ids, items[index].prefix)
            if keep_last:
                length = min(length, len(ids) - 1)
            groups.setdefault(tuple(ids[:length]), []).append((index, ids[length:]))
        return groups, with_media

    def answer_start_states(self, items: Sequence[ScoringItem], reads: int | Sequence[StateRead],
                            batch_size: int = 16) -> torch.Tensor:
        """For each item, the hidden states a `DecisionHead` reads after its prompt followed by its one continuation,
        the answer start ("Events:"), concatenated in the order of `reads` (an int: that layer at the answer start
        alone; 0 = embeddings): at the answer start's last token, or at the last token of the prompt's user turn
        ("question_end", the question's candidate). Prompts share their cached start as in `score_continuations`;
        the continuation is tokenized on its own, as in training."""
        if any(len(item.continuations) != 1 for item in items):
            raise ValueError("answer_start_states takes one continuation (the answer start) per item")
        reads = as_reads(reads)
        out: list[torch.Tensor | None] = [None] * len(items)
        with self._lock, torch.no_grad():
            continuations = {index: self.tokenizer(item.continuations[0], add_special_tokens=False)["input_ids"]
                             for index, item in enumerate(items)}
            sequences = {index: self.tokenize_with_placeholders(item.prompt) + continuations[index]
                         for index, item in enumerate(items)}
            back = {index: self._question_end_offset(sequences[index], len(continuations[index]))
                    for index in sequences} if any(r.at == "question_end" for r in reads) else {}

            def gather(hidden: tuple[torch.Tensor, ...], row: int, last: int, index: int) -> torch.Tensor:
                return torch.cat([hidden[r.layer][row, last - back[index] if r.at == "question_end" else last]
                                  for r in reads]).float().cpu()

            groups, with_media = self._group_by_cached_prefix(items, sequences, keep_last=True)
            for index in with_media:  # media embeddings: each item on its own
                embeds = self.embed(sequences[index], items[index].media or {}).unsqueeze(0)
                hidden = self.llm(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                  device=self.device), output_hidden_states=True, logits_to_keep=1).hidden_states
                out[index] = gather(hidden, 0, embeds.shape[1] - 1, index)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            for key, members in groups.items():
                key_values = self._prefix_key_values(key) if key else None
                for start in range(0, len(members), batch_size):
                    chunk = members[start:start + batch_size]
                    width = max(len(rest) for _, rest in chunk)
                    ids = torch.tensor([rest + [pad] * (width - len(rest)) for _, rest in chunk], device=self.device)
                    mask = torch.tensor([[1] * (len(key) + len(rest)) + [0] * (width - len(rest)) for _, rest in chunk],
                                        device=self.device)
                    positions = torch.arange(len(key), len(key) + width, device=self.device).expand(len(chunk), -1)
                    kwargs: dict[str, Any] = {}
                    if key_values is not None:
                        kwargs[self._cache_argument()] = self._cache_from(key_values, len(chunk))
                    hidden = self.llm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                      output_hidden_states=True, logits_to_keep=1, **kwargs).hidden_states
                    for row, (index, rest) in enumerate(chunk):
                        if back.get(index, 0) >= len(rest):
                            raise ValueError("a question's end lies in the prompt start several items share; read "
                                             "it at the answer start instead")
                        out[index] = gather(hidden, row, len(rest) - 1, index)
        return torch.stack(out) if out else torch.zeros(0)  # type: ignore[arg-type]

    @functools.cached_property
    def _turn_end_ids(self) -> list[int]:
        """The tokens the chat template puts between a user turn's text and the assistant's answer (end of turn,
        assistant header): what `question_end` reads steps back over."""
        marker = "\u2063question end\u2063"
        text = self.render_prompt([{"role": "user", "content": marker}])
        return self.tokenizer(text[text.rindex(marker) + len(marker):], add_special_tokens=False)["input_ids"]

    def _question_end_offset(self, sequence: list[int], continuation: int) -> int:
        """How many tokens before the answer start's last one the user turn's last token is, checked against the
        template's turn end (a tokenizer that merged the question's last word into it would move the read)."""
        turn_end = self._turn_end_ids
        end = len(sequence) - continuation
        if sequence[end - len(turn_end):end] != turn_end:
            raise ValueError("the prompt does not end with the chat template's assistant header; a head reading the "
                             "question's end needs prompts rendered with the model's own template")
        return continuation + len(turn_end)

    def _score_tree(self, prefix_length: int, key_values: KeyValues | None,
                    chunk: list[tuple[int, list[int], list[list[int]]]], out: list[list[float]]) -> None:
        """One forward over the token tree of the chunk's `rest + answer` sequences (see `score_continuations`)."""
        sequences = [rest + answer for _, rest, answers in chunk for answer in answers]
        tree = TokenTree.build(sequences)
        dtype = self.llm.get_input_embeddings().weight.dtype
        mask = tree_attention_mask(tree, prefix_length, dtype, self.device)
        positions = torch.tensor([[prefix_length + d for d in tree.depths]], device=self.device)
        # node whose output predicts each scored token, and that token
        predictors: list[int] = []
        targets: list[int] = []
        spans: list[tuple[int, int, int]] = []  # (item, first, end) into predictors, one per answer
        sequence = 0
        for index, rest, answers in chunk:
            for answer in answers:
                path = tree.paths[sequence]
                first = len(predictors)
                for k in range(len(rest), len(rest) + len(answer)):
                    predictors.append(path[k - 1])
                    targets.append(tree.tokens[path[k]])
                spans.append((index, first, len(predictors)))
                sequence += 1
        needed = sorted(set(predictors))
        row_of = {node: row for row, node in enumerate(needed)}
        kwargs: dict[str, Any] = {}
        if key_values is not None:
            kwargs[self._cache_argument()] = self._cache_from(key_values, 1)
        logits = self.llm(input_ids=torch.tensor([tree.tokens], device=self.device), attention_mask=mask,
                          position_ids=positions, use_cache=False, logits_to_keep=torch.tensor(needed, device=self.device),
                          **kwargs).logits[0]
        logprobs = logits.float().log_softmax(-1)
        picked = logprobs[torch.tensor([row_of[p] for p in predictors], device=self.device),
                          torch.tensor(targets, device=self.device)]
        for index, first, end in spans:
            out[index].append(float(picked[first:end].sum()))

    def _score_with_media(self, ids: list[int], item: ScoringItem) -> list[float]:
        """Scoring for a prompt with media embeddings: its prompt run once (`forward_shared_prefix`), one row per
        continuation (caller holds the lock)."""
        answers = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.continuations]
        # the last prompt token goes with each row: its position predicts the continuation's first token
        rows = [self.embed(ids[-1:] + answer) for answer in answers]
        embeds, mask = self.batch_embeds(rows, left_pad=False)
        logits = self.forward_shared_prefix(self.embed(ids[:-1], item.media or {}), embeds, mask).logits
        logprobs = logits.float().log_softmax(-1)
        out = []
        for row, answer in enumerate(answers):
            target = torch.tensor(answer, device=logprobs.device)
            out.append(float(logprobs[row, torch.arange(len(answer)), target].sum()))
        return out

    def continuation_logprobs(self, prompt: str, media: dict[EncodedModality, list[torch.Tensor]] | None,
                              continuations: list[str], prefix: str | None = None) -> list[float]:
        """`score_continuations` for one prompt."""
        return self.score_continuations([ScoringItem(prompt=prompt, continuations=continuations, media=media,
                                                     prefix=prefix)])[0]

    def render_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                      add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages`; without `add_generation_prompt`, the text the same messages
        start a longer chat with (e.g. the system turn as a shared prefix)."""
        from reamo.chat_templates import load_chat_template

        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=load_chat_template(self.config.chat_template),
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

def model_summary(model: ReamoModel) -> dict[str, Any]:
    """Sizes and state of the model; the writer's LLM (a second copy of the base) is counted apart."""
    writer = {id(p) for p in model.writer_llm.parameters()} if model.writer_llm is not None else set()
    own = [p for p in model.parameters() if id(p) not in writer]
    return {"parameters": sum(p.numel() for p in own), "trainable": sum(p.numel() for p in own if p.requires_grad),
            "writer_parameters": sum(p.numel() for p in model.writer_llm.parameters()) if writer else 0,
            "modalities": list(model.encoded_modalities), "adapter_merged": model.adapter_merged}


def _probe_logits_mask(llm: nn.Module) -> bool:
    """Ask the installed LM whether it keeps logits by a boolean 2-D `logits_to_keep` (see `_slices_logits`).

    One forward over two zero embeddings with the second position kept, in eval mode (no dropout, no gradient
    checkpointing) and without gradients; true when it returns exactly one row of logits. Any exception (the
    IndexError of transformers 5.0-5.17, a TypeError where the parameter is missing) means no.
    """
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    weight = llm.get_input_embeddings().weight
    embeds = torch.zeros((1, 2, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    keep = torch.tensor([[False, True]], device=weight.device)
    modes = [(module, module.training) for module in llm.modules()]
    llm.eval()
    try:
        with torch.no_grad():
            logits = llm(inputs_embeds=embeds, attention_mask=torch.ones((1, 2), dtype=torch.long, device=weight.device),
                         logits_to_keep=keep, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1]).shape[0] == 1
    except Exception as error:  # noqa: BLE001 - any failure means "not supported": fall back to full logits
        logger.debug("boolean logits_to_keep probe failed: %s: %s", type(error).__name__, error)
        return False
    finally:
        for module, training in modes:
            module.training = training


DECODING_MODES = ("eager", "static", "compile")


def _configure_decoding(llm: nn.Module, mode: str) -> None:
    """Set how `generate` decodes, through the LM's generation config (so every caller of `generate` gets it).

    - "eager" (the default): transformers' dynamic KV cache, no compilation; what Reamo has always done.
    - "static": a preallocated `StaticCache` (`cache_implementation="static"`); transformers compiles the decoding
      step by itself on CUDA for models whose quantization allows it (not bitsandbytes: its quantizer says no).
    - "compile": static cache + transformers' own compiled decoding (`CompileConfig`, mode "reduce-overhead" =
      CUDA graphs; transformers clones each step's logits, which a hand-made `torch.compile` of the forward did not,
      hence "accessing tensor output of CUDAGraphs that has been overwritten"). For a bitsandbytes 4-bit LM this
      opts the model in (bitsandbytes >= 0.46 on torch >= 2.8 compiles `Linear4bit` without graph breaks).
      Compilation happens on CUDA only; elsewhere it decodes as "static".
    Not measured as the default yet: `reamo memory --measure` times each mode on the GPU at hand.
    """
    if mode not in DECODING_MODES:
        raise ConfigError(f"unknown decoding mode {mode!r} ($REAMO_DECODING?); choose one of {', '.join(DECODING_MODES)}")
    config = getattr(llm, "generation_config", None)
    if config is None:
        return
    if mode == "eager":  # as loaded: whatever the checkpoint's generation_config.json says
        return
    config.cache_implementation = "static"
    if mode == "compile":
        from transformers import CompileConfig

        config.compile_config = CompileConfig(fullgraph=False, mode="reduce-overhead")
        quantizer = getattr(llm, "hf_quantizer", None)
        if quantizer is not None and not getattr(quantizer, "is_compileable", True):
            quantizer.__class__ = type(f"Compileable{type(quantizer).__name__}", (type(quantizer),),
                                       {"is_compileable": property(lambda self: True)})
    else:
        config.compile_config = None
