"""Fresh inputs at grading time: every seed a test sets is mixed with a seed chosen when grading starts.

The public tests use fixed seeds, so a learner can rerun a failure and see the same inputs. A graded run
(`llm101n check --fresh`, the class flow) passes `--seed S` to the grader's pytest; this module then salts the
random number generators *of the grader's process* — torch.Generator, torch.manual_seed, numpy's default_rng,
RandomState and seed, and Python's random — so each test draws inputs no table of the public runs can hold.
Tests and their oracles are salted alike, so expected values are recomputed for the new inputs.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

_salt = 0


def mix(seed) -> int:
    """The salted version of a seed a test asked for (stable within one graded run)."""
    if seed is None:
        return seed
    digest = hashlib.blake2b(f"{_salt}:{int(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SaltedGenerator(torch.Generator):
    def manual_seed(self, seed):
        return super().manual_seed(mix(seed))


class SaltedRandom(random.Random):
    def seed(self, a=None, version=2):
        super().seed(mix(a) if isinstance(a, int) else a, version)


class SaltedRandomState(np.random.RandomState):
    def seed(self, seed=None):
        super().seed(None if seed is None else mix(seed) % 2**32)


def install(salt: int) -> None:
    """Salt every seed from now on (salt 0: leave the public, fixed seeds alone)."""
    global _salt
    if salt == 0:
        return
    _salt = salt
    torch_manual_seed, default_rng, np_seed = torch.manual_seed, np.random.default_rng, np.random.seed
    torch.Generator = SaltedGenerator
    torch.manual_seed = lambda seed: torch_manual_seed(mix(seed))
    np.random.default_rng = lambda seed=None: default_rng(mix(seed) if isinstance(seed, int) else seed)
    np.random.RandomState = SaltedRandomState
    np.random.seed = lambda seed=None: np_seed(None if seed is None else mix(seed) % 2**32)
    random.Random = SaltedRandom
    random.seed(mix(0))
