"""The shipped illustrator (models/illustrator, fp16 weights) on this machine's CPU: caption accuracy by the judge on
fresh seen and held-out captions, and seconds a picture, as a course laptop would draw them.

    python bench/illustrator_cpu.py [N]     (N captions a split, default 100; writes bench/results/illustrator_cpu.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.tokenizer import machine  # noqa: E402
from storylib import scene_classifier as J  # noqa: E402
from storylib import scenes  # noqa: E402
from storylib.illustrate import Illustrator  # noqa: E402

STEPS, GUIDANCE, THREADS = 25, 4.0, 2  # the GPU run's best setting (bench/results/illustrator.json); 2 cores


def main(n: int = 100) -> dict:
    torch.set_num_threads(THREADS)
    ill, judge = Illustrator.load("models/illustrator"), J.load_classifier(ROOT / "models/illustrator/judge")
    result = {"machine": machine(), "threads": THREADS, "date": time.strftime("%Y-%m-%d"), "steps": STEPS,
              "guidance": GUIDANCE, "n": n}
    for split, seed in (("train", 2), ("heldout", 3)):  # the seeds of the GPU run's "val" and "heldout" sets
        d = scenes.make_dataset(n, seed, split, 64)
        t, pictures = time.perf_counter(), []
        for i, caption in enumerate(tqdm(d["captions"], desc=split)):
            pictures.append(ill.draw(caption, steps=STEPS, guidance=GUIDANCE, seed=i))
        seconds = (time.perf_counter() - t) / n
        acc = J.caption_accuracy(judge, np.stack(pictures), d["attributes"])
        result[split] = {"caption_accuracy": acc["all"], "per_attribute": acc["per_attribute"],
                         "seconds_per_picture": seconds}
        print(f"{split}: caption accuracy {acc['all']:.3f}, {seconds:.2f} s a picture")
    out = ROOT / "bench/results/illustrator_cpu.json"
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
