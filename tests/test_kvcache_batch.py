"""storylib.kvcache.generate_batch drops stopped rows from its cache (KVCache.select): the same tokens, less work."""

import torch

from storylib import kvcache as K
from storylib.gpt2 import GPT, GPTConfig


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=48, vocab_size=23, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()


def test_select_keeps_rows_in_order():
    cache = K.KVCache(2, 5, 2, 8, 3)
    cache.k.normal_(generator=torch.Generator().manual_seed(1))
    cache.lengths = torch.tensor([3, 1, 4, 1, 5])
    idx = torch.tensor([4, 1])
    sub = cache.select(idx)
    assert torch.equal(sub.k, cache.k[:, [4, 1]]) and torch.equal(sub.lengths, torch.tensor([5, 1]))
    sub.k.zero_()  # a copy: the original is untouched
    assert cache.k.abs().sum() > 0


def test_rows_that_stop_early_do_not_change_the_others():
    """Greedy, with a stop id most rows hit early: every row gets exactly what it gets decoded alone."""
    model = tiny_model()
    rng = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (9,), generator=rng).tolist()
    prompts = [torch.randint(0, 23, (n,), generator=rng).tolist() for n in lengths]
    alone = [K.generate_batch(model, [p], 30)[0] for p in prompts]
    # stop ids: the tokens most rows emit, until most rows (not all) stop, so the batch shrinks and goes on
    stops: set[int] = set()
    for t in sorted(range(23), key=lambda t: -sum(t in a for a in alone)):
        if sum(any(i in stops for i in a) for a in alone) > len(prompts) // 2:
            break
        stops.add(t)
    want = [a[: min([a.index(s) for s in stops if s in a], default=len(a))] for a in alone]
    assert len(prompts) // 2 < sum(len(w) < 30 for w in want) < len(prompts), "most rows, not all, must stop"
    assert K.generate_batch(model, prompts, 30, stop_ids=stops, pad_id=5) == want


def test_seeded_sampling_with_compaction_is_reproducible():
    model = tiny_model(1)
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    a = K.generate_batch(model, prompts, 25, temperature=1.0, stop_ids=[0, 1, 2, 3], seed=7)
    b = K.generate_batch(model, prompts, 25, temperature=1.0, stop_ids=[0, 1, 2, 3], seed=7)
    assert a == b and any(len(r) < 25 for r in a)
