"""An example of an instructor's hidden tests: never released, run by `llm101n check --hidden DIR` and the class
flow (`LLM101N_HIDDEN_TESTS=DIR`). Same rules as the public tests: one exercise marker each, oracles written here,
inputs from seeded generators (graded runs salt the seeds). Name files test_chNN_<something>_hidden.py so they
never share a name with a public test file.
"""

from collections import Counter

import pytest
import torch

from storylib import bigram
from storylib.bigram import BOUNDARY, Vocab


@pytest.mark.exercise("ch01.counts")
def test_counts_of_random_words():
    g = torch.Generator().manual_seed(101)
    letters = "abcdeé🐉 "
    stories = ["".join(letters[int(i)] for i in torch.randint(0, len(letters), (int(n),), generator=g))
               for n in torch.randint(0, 40, (23,), generator=g)]
    vocab = Vocab.from_stories(stories)
    N = bigram.count_bigrams(stories, vocab)
    want = Counter()
    for s in stories:
        ids = [BOUNDARY, *(vocab.stoi[c] for c in s), BOUNDARY]
        want.update(zip(ids[:-1], ids[1:], strict=True))
    got = {(a, b): int(N[a, b]) for a in range(len(vocab)) for b in range(len(vocab)) if N[a, b]}
    assert got == dict(want), "the counts of random strings differ from a Counter of their pairs"
