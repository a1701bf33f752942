"""Reamo's model: modality encoder -> projector -> LoRA-tuned LLaMA-family LLM, with media spliced at placeholders.

As in LLaVA / NExT-GPT, the prompt carries `<image>` / `<video>` / `<audio>` placeholders; each becomes
`tokens_per_input` projected encoder embeddings in the LLM's input sequence. Only the projector and the LoRA
adapter are trained, so only they (plus the config) are saved: `adapter/` (peft, safetensors) and
`projector.safetensors`, written into a temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.model.imagebind_encoder import EncodedModality, ImageBindEncoder, ImageBindEncoderConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "reamo_config.json"
PROJECTOR_NAME = "projector.safetensors"
ADAPTER_DIR = "adapter"
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


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_llm(config: ReamoConfig) -> tuple[nn.Module, Any]:
    """Load the causal LM and its tokenizer (optionally 4-bit NF4 with double quantisation through bitsandbytes)."""
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

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ReamoConfig) -> "ReamoModel":
        llm, tokenizer = load_llm(config)
        encoder = ImageBindEncoder(config.encoder) if config.encoder is not None else None
        model = cls(config, llm, tokenizer, encoder)
        if config.lora is not None:
            model.add_lora(config.lora)
        return model

    def add_lora(self, settings: LoraSettings) -> None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if self.config.load_in_4bit:
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
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> "ReamoModel":
        path = Path(folder).expanduser()
        config = ReamoConfig.load(path)
        if overrides:
            config = config.model_copy(update=overrides)
        llm, tokenizer = load_llm(config)
        encoder = ImageBindEncoder(config.encoder) if config.encoder is not None else None
        adapter = path / ADAPTER_DIR
        if adapter.is_dir():
            from peft import PeftModel

            llm = PeftModel.from_pretrained(llm, str(adapter), is_trainable=False)
        model = cls(config, llm, tokenizer, encoder)
        projector_file = path / PROJECTOR_NAME
        if model.projectors and projector_file.is_file():
            model.projectors.load_state_dict(load_file(str(projector_file)))
        elif model.projectors:
            raise CheckpointNotFoundError(f"{projector_file} is missing; the model folder is incomplete")
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config, LoRA adapter and projector (safetensors only) atomically: all of it or nothing."""
        target = Path(folder).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.config.save(staging)
            if self.projectors:
                state = {k: v.detach().contiguous().cpu() for k, v in self.projectors.state_dict().items()}
                save_file(state, str(staging / PROJECTOR_NAME))
            if hasattr(self.llm, "peft_config"):
                self.llm.save_pretrained(str(staging / ADAPTER_DIR), safe_serialization=True)
            if target.exists():
                backup = target.with_name(f".{target.name}.old")
                shutil.rmtree(backup, ignore_errors=True)
                os.replace(target, backup)
                os.replace(staging, target)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    # -- inputs --------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def encoded_modalities(self) -> tuple[str, ...]:
        return tuple(self.projectors.keys())

    def tokenize_with_placeholders(self, prompt: str) -> list[int]:
        """Token ids of `prompt`, each `<image>`/`<video>`/`<audio>` replaced by its negative placeholder id."""
        ids: list[int] = []
        if getattr(self.tokenizer, "add_bos_token", False) and self.tokenizer.bos_token_id is not None:
            ids.append(self.tokenizer.bos_token_id)
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
        """Whether the LM's forward takes `logits_to_keep` (LLaMA-family models in transformers >= 4.50 do)."""
        import inspect

        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return "logits_to_keep" in inspect.signature(base.forward).parameters

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        media: list[dict[EncodedModality, list[torch.Tensor]]] | None = None,
        max_new_tokens: int = 256,
        max_time: float | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Generate one continuation per prompt (batched, left-padded); media[i] feeds prompt i's placeholders."""
        media = media or [{} for _ in prompts]
        with self._lock:
            sequences = [self.embed(self.tokenize_with_placeholders(p), m) for p, m in zip(prompts, media)]
            embeds, mask = self.batch_embeds(sequences)
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
            output = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        # with inputs_embeds only, generate returns just the new tokens
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    @torch.no_grad()
    def continuation_logprobs(self, prompt: str, media: dict[EncodedModality, list[torch.Tensor]] | None,
                              continuations: list[str]) -> list[float]:
        """Log-probability the model gives each continuation of `prompt` (summed over its tokens): the score for
        choosing among a fixed set of answers (rank classification, e.g. one relation label per candidate).

        The prompt is run once and shared by all candidates (`forward_shared_prefix`); each continuation is
        tokenized on its own, as training tokenizes the answer apart from the prompt.
        """
        if not continuations:
            return []
        with self._lock:
            ids = self.tokenize_with_placeholders(prompt)
            if len(ids) < 2:
                raise ValueError("continuation_logprobs needs a prompt of at least two tokens")
            answers = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
            # the last prompt token goes with each row: its position predicts the continuation's first token
            rows = [self.embed(ids[-1:] + answer) for answer in answers]
            embeds, mask = self.batch_embeds(rows, left_pad=False)
            logits = self.forward_shared_prefix(self.embed(ids[:-1], media or {}), embeds, mask).logits
        logprobs = logits.float().log_softmax(-1)
        out = []
        for row, answer in enumerate(answers):
            target = torch.tensor(answer, device=logprobs.device)
            out.append(float(logprobs[row, torch.arange(len(answer)), target].sum()))
        return out

    def render_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        from reamo.chat_templates import load_chat_template

        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=load_chat_template(self.config.chat_template),
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
        )


def model_summary(model: ReamoModel) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "trainable": trainable, "modalities": list(model.encoded_modalities)}
