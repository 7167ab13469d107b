"""TinyStories: find it locally, download it for real users, or make synthetic stories for tests.

(Minimal first version; the full module — downloader, checksums, cache — replaces it.)
"""

from __future__ import annotations

import lzma
import os
import random
from pathlib import Path

EOT = "<|endoftext|>"


def data_dir() -> Path:
    if os.environ.get("STORYLIB_DATA"):
        return Path(os.environ["STORYLIB_DATA"])
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data" / "tinystories", Path.cwd().parent / "shared/data/tinystories"):
        if cand.is_dir():
            return cand
    return Path.home() / ".cache" / "llm101n" / "tinystories"


def split_stories(text: str) -> list[str]:
    return [s.strip() for s in text.split(EOT) if s.strip()]


def load_stories(split: str = "train", limit: int | None = None, root: Path | None = None) -> list[str]:
    root = Path(root) if root else data_dir()
    name = {"train": "train-000.txt.xz", "valid": "valid.txt.xz"}[split]
    with lzma.open(root / name, "rt", encoding="utf-8") as f:
        stories = split_stories(f.read())
    return stories[:limit] if limit else stories


def synthetic_stories(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max"]
    things = ["ball", "cat", "tree", "boat", "cake", "star"]
    out = []
    for _ in range(n):
        a, t = rng.choice(names), rng.choice(things)
        out.append(f"Once upon a time, {a} had a {t}. {a} was very happy. The end.")
    return out
