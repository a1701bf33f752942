"""The shared-prefix key/value cache and tree-shaped scoring: exact (same tokens, same log-likelihoods as without
them), bounded (LRU eviction by entries and bytes) and safe to share between threads."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

from reamo.model import ReamoConfig, ReamoModel
from reamo.model.shared_prefix import PrefixCache, PrefixCacheSettings, ScoringItem, TokenTree, tree_attention_mask

SYSTEM = "A chat between a curious user and an artificial intelligence assistant. Entities: Relations: Events: None"
TEXTS = ["Rafael Nadal gets engaged to Mery Perello in Mallorca.", "USER: PER ORG", "Nadal ORG LOC OTHER Mallorca."]


@pytest.fixture(scope="module")
def model(tiny_llm_dir) -> ReamoModel:
    return ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), chat_template="vicuna_v1.1"))


def prompt_and_prefix(model: ReamoModel, text: str) -> tuple[str, str]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return model.render_prompt(messages), model.render_prompt(messages[:1], add_generation_prompt=False)


def reference_logprob(model: ReamoModel, prompt: str, answer: str) -> float:
    """The plain definition: one forward over prompt + answer, summed log-probabilities of the answer's tokens."""
    prompt_ids = model.tokenize_with_placeholders(prompt)
    answer_ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model.llm(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].float().log_softmax(-1)
    return sum(float(logits[len(prompt_ids) - 1 + i, token]) for i, token in enumerate(answer_ids))


def test_generation_with_the_prefix_cache_gives_the_same_tokens(model: ReamoModel) -> None:
    model.prefix_cache.clear()
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS))
    ids = model.tokenize_with_placeholders(prompts[0])
    assert 8 <= model.shared_prefix_length(ids, prefixes[0]) < len(ids)
    plain = model.generate(list(prompts), max_new_tokens=12, min_new_tokens=12)  # left-padded, no cache
    cached = model.generate(list(prompts), max_new_tokens=12, min_new_tokens=12, prefixes=list(prefixes))
    again = model.generate(list(prompts), max_new_tokens=12, min_new_tokens=12, prefixes=list(prefixes))
    alone = [model.generate([p], max_new_tokens=12, min_new_tokens=12, prefixes=[f])[0]
             for p, f in zip(prompts, prefixes)]
    assert plain == cached == again == alone
    assert len(model.prefix_cache) == 1 and model.prefix_cache.hits >= 4  # computed once, reused after


def test_tree_scoring_gives_the_plain_log_likelihoods(model: ReamoModel) -> None:
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS))
    answers = ["Entities: None</s>", "Entities: (Rafael Nadal, PER)</s>", "Entities: (Rafael Nadal, ORG)</s>",
               "Entities: (Mallorca, LOC)(Rafael Nadal, PER)</s>"]
    items = [ScoringItem(prompt=p, prefix=f, continuations=answers) for p, f in zip(prompts, prefixes)]
    items.append(ScoringItem(prompt=prompts[0], continuations=answers[:2]))  # no shared prefix given
    items.append(ScoringItem(prompt=prompts[1], continuations=[]))
    scored = model.score_continuations(items)
    small_chunks = model.score_continuations(items, max_tree_tokens=20)  # one item per forward
    for item, row, other in zip(items, scored, small_chunks, strict=True):
        assert len(row) == len(item.continuations)
        for answer, score, again in zip(item.continuations, row, other, strict=True):
            assert score == pytest.approx(reference_logprob(model, item.prompt, answer), abs=1e-4)
            assert again == pytest.approx(score, abs=1e-4)


def test_token_tree_shares_starts_and_masks_to_ancestors() -> None:
    tree = TokenTree.build([[1, 2, 3], [1, 2, 4], [5]])
    assert tree.tokens == [1, 2, 3, 4, 5] and tree.parents == [-1, 0, 1, 1, -1]
    assert tree.depths == [0, 1, 2, 2, 0] and tree.paths == [[0, 1, 2], [0, 1, 3], [4]]
    mask = tree_attention_mask(tree, prefix_length=2, dtype=torch.float32)[0, 0] == 0
    assert mask.shape == (5, 7) and mask[:, :2].all()  # every node sees the prefix
    assert mask[3, 2:].tolist() == [True, True, False, True, False]  # node 3 sees 0, 1 and itself, not sibling 2
    assert mask[4, 2:].tolist() == [False, False, False, False, True]


def test_prefix_cache_evicts_least_recently_used_by_entries_and_bytes() -> None:
    def kv(length: int) -> tuple:
        return ((torch.zeros(1, 2, length, 4), torch.zeros(1, 2, length, 4)),)

    cache = PrefixCache(PrefixCacheSettings(max_entries=2, max_bytes=10_000))
    cache.put([1], kv(10))
    cache.put([2], kv(10))
    assert cache.get([1]) is not None  # 1 is now the most recently used
    cache.put([3], kv(10))
    assert cache.get([2]) is None and cache.get([1]) is not None and cache.get([3]) is not None
    assert cache.nbytes == 2 * 2 * (2 * 10 * 4 * 4)
    cache.put([4], kv(150))  # 9,600 bytes: everything else must go
    assert len(cache) == 1 and cache.get([4]) is not None and cache.nbytes <= 10_000
    cache.put([5], kv(1000))  # larger than the whole budget: not kept
    assert cache.get([5]) is None and len(cache) == 1
    off = PrefixCache(PrefixCacheSettings(max_entries=0))
    off.put([1], kv(1))
    assert off.get([1]) is None


def test_threads_sharing_one_model_get_the_answers_they_get_alone(model: ReamoModel) -> None:
    model.prefix_cache.clear()
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS))
    expected = [model.generate([p], max_new_tokens=8, min_new_tokens=8)[0] for p in prompts]
    answers = ["Entities: None</s>", "Entities: (Mallorca, LOC)</s>"]
    expected_scores = [model.continuation_logprobs(p, None, answers) for p in prompts]
    model.prefix_cache.clear()
    got: dict[int, tuple[str, list[float]]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            k = i % len(prompts)
            text = model.generate([prompts[k]], max_new_tokens=8, min_new_tokens=8, prefixes=[prefixes[k]])[0]
            got[i] = (text, model.continuation_logprobs(prompts[k], None, answers, prefix=prefixes[k]))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, (text, scores) in got.items():
        k = i % len(prompts)
        assert text == expected[k]
        assert scores == pytest.approx(expected_scores[k], abs=1e-4)
    assert len(model.prefix_cache) == 1


def test_greedy_loop_that_drops_finished_rows_matches_transformers_generate(model: ReamoModel) -> None:
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS * 2))
    eos = model.tokenizer.eos_token_id
    # transformers' generate (any generate keyword takes that path) vs the loop, with and without the prefix cache
    reference = model.generate(list(prompts), max_new_tokens=20, do_sample=False)
    assert model.generate(list(prompts), max_new_tokens=20) == reference
    assert model.generate(list(prompts), max_new_tokens=20, prefixes=list(prefixes)) == reference
    # rows that end at different steps: the end-of-sequence token gets the output row of a token that row 0 writes
    # early, so it ties with that token wherever it would win, and the lower id (end of sequence) is chosen
    head = model.llm.get_output_embeddings()
    first = model.tokenize_with_placeholders(prompts[0])
    with torch.no_grad():
        written = model.llm.generate(input_ids=torch.tensor([first]), max_new_tokens=6, do_sample=False,
                                     pad_token_id=eos)[0, len(first):].tolist()
    early = written[3]
    assert early > eos
    original = head.weight.data[eos].clone()
    try:
        head.weight.data[eos] = head.weight.data[early]
        reference = model.generate(list(prompts), max_new_tokens=20, do_sample=False)
        looped = model.generate(list(prompts), max_new_tokens=20, prefixes=list(prefixes))
        lengths = {len(text) for text in reference}
        assert len(lengths) > 1 and len(reference[0]) < min(len(t) for t in reference[1:3])  # rows end at different steps
        assert looped == reference
    finally:
        head.weight.data[eos] = original


def test_items_that_fit_share_one_forward(model: ReamoModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk is sized by the tree nodes an item can add (its prompt rest once, plus its answers), not by the rest
    counted once per answer: that overcount put every MNRE pair (24 answers) in a forward of its own."""
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS))
    answers = [f"Relations: (Rafael Nadal, {r}," for r in ("peer", "couple", "member_of", "locate_at", "alumni")]
    items = [ScoringItem(prompt=p, prefix=f, continuations=["Relations: None</s>", *answers])
             for p, f in zip(prompts, prefixes)]
    rests = [len(ids) - model.shared_prefix_length(ids, f)
             for ids, f in ((model.tokenize_with_placeholders(p), f) for p, f in zip(prompts, prefixes))]
    answer_tokens = sum(len(model.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in items[0].continuations)
    budget = sum(rest + answer_tokens for rest in rests)  # what the items can add to a tree, all together
    old_counts = [(len(answers) + 1) * rest + answer_tokens for rest in rests]
    assert old_counts[0] + old_counts[1] > budget  # counted the old way, not even two items would share a forward
    chunks: list[int] = []
    score_tree = ReamoModel._score_tree

    def spy(self, prefix_length, key_values, chunk, out):  # noqa: ANN001 - test double
        chunks.append(len(chunk))
        return score_tree(self, prefix_length, key_values, chunk, out)

    monkeypatch.setattr(ReamoModel, "_score_tree", spy)
    together = model.score_continuations(items, max_tree_tokens=budget)
    assert chunks == [len(items)]
    for item, row in zip(items, together, strict=True):
        for answer, score in zip(item.continuations, row, strict=True):
            assert score == pytest.approx(reference_logprob(model, item.prompt, answer), abs=1e-4)


def test_prompt_lookup_drafts_give_the_greedy_text_in_fewer_passes(model: ReamoModel,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Drafts that are right, right then wrong, or wrong all give the one-token-per-pass text, alone and for rows
    of a batch that keep different numbers of draft tokens per pass (with and without left padding); right drafts
    take fewer forward passes."""
    import reamo.model.modeling_reamo as modeling

    # sharper attention than random weights give, so a token at a wrong position changes what is written; patched
    # in the module's parameter dict (pytest >= 9.2's setattr on a module attribute deletes it on undo)
    for layer in model.llm.model.layers:
        for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            sharper = torch.nn.Parameter(projection.weight.detach() * 6)
            monkeypatch.setitem(projection._parameters, "weight", sharper)
    monkeypatch.setattr(model, "prefix_cache", PrefixCache())  # key/values of these weights stay in this test
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS))
    greedy: dict[tuple[int, ...], list[int]] = {}
    for prompt in prompts:
        ids = model.tokenize_with_placeholders(prompt)
        with torch.no_grad():
            out = model.llm.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16,
                                     do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
        greedy[tuple(ids)] = out[0, len(ids):].tolist()
    reference = model.generations(list(prompts), max_new_tokens=16, prefixes=list(prefixes))
    for prompt, generation in zip(prompts, reference):
        truth = greedy[tuple(model.tokenize_with_placeholders(prompt))]
        assert model.tokenizer.decode(truth, skip_special_tokens=True).startswith(generation.text)

    class Oracle:  # drafts the true continuation, spoilt from `wrong_at[row]` on
        wrong_at: dict[tuple[int, ...], int] = {}

        def __init__(self, tokenizer, ids) -> None:
            self.ids = tuple(ids)

        def draft(self, written, max_tokens):
            truth = greedy[self.ids]
            assert list(written) == truth[:len(written)]
            spoil = self.wrong_at[self.ids]
            return [t if i < spoil else (t + 1) % len(model.tokenizer)
                    for i, t in enumerate(truth[len(written):len(written) + max_tokens])]

    passes: list[int] = []
    forward = model.llm.forward

    @functools.wraps(forward)  # keeps the signature: the model reads its cache argument's name from it
    def counted(*args, **kwargs):
        passes.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(modeling, "PromptLookup", Oracle)
    monkeypatch.setattr(model.llm, "forward", counted)
    counts = {}
    for wrong_at in (99, 2, 0):
        Oracle.wrong_at = dict.fromkeys(greedy, wrong_at)
        passes.clear()
        assert model.generations([prompts[0]], max_new_tokens=16, prefixes=[prefixes[0]], draft_tokens=4) \
            == reference[:1]
        counts[wrong_at] = len(passes)
    passes.clear()
    model.generations([prompts[0]], max_new_tokens=16, prefixes=[prefixes[0]])
    assert counts[99] < counts[2] < counts[0] == len(passes)

    Oracle.wrong_at = dict(zip(greedy, (99, 2, 1)))  # three rows, each keeping a different share of its drafts
    for shared in (list(prefixes), None):  # the prefix-cache layout, and plain left padding
        passes.clear()
        assert model.generations(list(prompts), max_new_tokens=16, prefixes=shared, draft_tokens=4) == reference
        assert len(passes) < 16


def test_prompt_lookup_with_a_batch_whose_rows_end_at_different_steps(model: ReamoModel) -> None:
    """The rows left writing switch to drafts (from their own prompts, mostly rejected by a random model) as the
    others end: every row's text is the plain greedy text."""
    prompts, prefixes = zip(*(prompt_and_prefix(model, t) for t in TEXTS * 2))
    reference = model.generate(list(prompts), max_new_tokens=20, do_sample=False)
    assert model.generate(list(prompts), max_new_tokens=20, prefixes=list(prefixes), draft_tokens=4) == reference
    assert model.generate(list(prompts), max_new_tokens=20, draft_tokens=6) == reference
