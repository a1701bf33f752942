"""Computing a prompt's shared start once: a key/value cache of prompt prefixes, and tree-shaped candidate scoring.

Every extraction request with the same tasks and labels starts with the same system prompt (63 of 94 tokens for
GMNER NER, ~190 for a 23-relation label list), and rank classification scores many continuations of one prompt
that share their first tokens ("Relations: (Rafael Nadal, couple, ..." / "... member_of, ..."). Both are computed
once here:

* `PrefixCache` keeps the key/value states of recently used prompt prefixes (an LRU keyed by the prefix's token
  ids, bounded in entries and bytes, safe to share between threads). Generation and scoring start from a copy, so the
  cached tensors are never changed.
* `TokenTree` merges token sequences into a trie; `tree_attention_mask` lets one forward pass compute every node
  once, each node attending to the cached prefix and to its own ancestors only, at the position it would have in its
  own sequence. This is the same computation as running each sequence on its own (tree attention, as in SpecInfer and
  Medusa), with every shared start computed once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

KeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per layer (key, value), each [batch, kv_heads, length, head_dim]."""


class ScoringItem(BaseModel):
    """One prompt and the candidate continuations to score after it (rank classification); `prefix` is the start
    it shares with other prompts (its system turn), `media` the features its placeholders take."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prompt: str
    continuations: list[str]
    media: dict[str, list[Any]] | None = None
    prefix: str | None = None


class PrefixCacheSettings(BaseModel):
    """Bounds of the prefix cache; `max_entries=0` switches it off."""

    model_config = ConfigDict(extra="forbid")

    max_entries: int = Field(default=16, ge=0, description="distinct prefixes kept (least recently used dropped)")
    max_bytes: int = Field(default=512 << 20, ge=0, description="total bytes of cached key/value tensors")
    min_tokens: int = Field(default=8, ge=1, description="shorter prefixes are not worth caching")


def key_values_nbytes(key_values: KeyValues) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in key_values)


class PrefixCache:
    """LRU of prompt-prefix key/values, keyed by the prefix's token ids.

    `get` and `put` take the cache's own lock; computing a missing prefix happens under the model's lock (one
    forward at a time), so two threads asking for the same new prefix compute it once each at worst, never wrongly.
    """

    def __init__(self, settings: PrefixCacheSettings | None = None) -> None:
        self.settings = settings or PrefixCacheSettings()
        self._entries: OrderedDict[tuple[int, ...], KeyValues] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, ids: Sequence[int]) -> KeyValues | None:
        key = tuple(ids)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, ids: Sequence[int], key_values: KeyValues) -> None:
        """Keep `key_values` (detached) for `ids`; evicts least recently used entries beyond the bounds."""
        size = key_values_nbytes(key_values)
        if self.settings.max_entries == 0 or size > self.settings.max_bytes:
            return
        key = tuple(ids)
        stored = tuple((k.detach(), v.detach()) for k, v in key_values)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= key_values_nbytes(old)
            self._entries[key] = stored
            self._bytes += size
            while self._entries and (len(self._entries) > self.settings.max_entries
                                     or self._bytes > self.settings.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= key_values_nbytes(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class TokenTree(BaseModel):
    """Token sequences merged into a trie: node i holds `tokens[i]` and follows `parents[i]` (-1: the sequence
    start); `paths[s]` are the nodes of sequence s in order. Nodes are numbered so a parent comes before its child."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> "TokenTree":
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: list[dict[int, int]] = []
        roots: dict[int, int] = {}
        paths: list[list[int]] = []
        for sequence in sequences:
            node, path = -1, []
            for token in sequence:
                table = roots if node == -1 else children[node]
                child = table.get(token)
                if child is None:
                    child = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                    depths.append(0 if node == -1 else depths[node] + 1)
                    children.append({})
                    table[token] = child
                path.append(child)
                node = child
            paths.append(path)
        return cls(tokens=tokens, parents=parents, depths=depths, paths=paths)

    def __len__(self) -> int:
        return len(self.tokens)


def tree_attention_mask(tree: TokenTree, prefix_length: int, dtype: torch.dtype,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Additive mask [1, 1, nodes, prefix + nodes]: 0 where a node may attend (the prefix, its ancestors, itself),
    the dtype's minimum elsewhere; as a 4-D mask it is used by the LM exactly as given."""
    n = len(tree)
    allowed = torch.zeros((n, n), dtype=torch.bool)
    for node, parent in enumerate(tree.parents):
        if parent >= 0:
            allowed[node] = allowed[parent]
        allowed[node, node] = True
    full = torch.cat([torch.ones((n, prefix_length), dtype=torch.bool), allowed], dim=1)
    mask = torch.zeros(full.shape, dtype=dtype)
    mask.masked_fill_(~full, torch.finfo(dtype).min)
    return mask.to(device)[None, None]
