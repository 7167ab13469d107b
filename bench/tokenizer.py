"""Benchmark: BPE training (ours, Hugging Face `tokenizers`, the reference) and encoding (Python, tiktoken).

    python bench/tokenizer.py [--target-mb 100] [--ref-mb 0.5 1.0] [--out bench/results/tokenizer.json]

One run, one input: the storyteller's training documents (`load_stories("train")`, each story + "\\n", as
`storylib.fastbpe` trains on them) repeated until the corpus holds at least --target-mb MB.

  1. ours       `storylib.fastbpe`: pre-tokenise (GPT-4 pattern, all usable cores) + 3840 merges -> vocab 4096;
  2. HF         `tokenizers` BpeTrainer, vocab 4096, the same documents (see HF_SETUP);
  3. reference  `RegexTokenizer.train` on two slices (--ref-mb), extrapolated to the corpus (see the JSON's
                reference.method: split time is linear in bytes, merge time linear in distinct-chunk bytes);
  4. encoding   the validation stories through our Python `encode_ordinary` and through `to_tiktoken`;
  5. compression (bytes per token) on the validation stories: GPT-2, cl100k_base, ours, HF's.

Targets (issue #4): ours within 2x of HF's training time; tiktoken export >= 5x our Python encode.
Writes a JSON with the machine's details and prints a table. Needs the shared TinyStories subset.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # storylib is imported from the repo folder, not installed
if (ROOT / ".assets" / "tiktoken").is_dir():  # offline copies of GPT-2's and cl100k's files (scripts/assets.sh)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / ".assets" / "tiktoken"))

from tqdm.auto import tqdm  # noqa: E402

from storylib.fastbpe import (  # noqa: E402
    chunk_counts,
    default_workers,
    learn_merges,
    storyteller_documents,
    to_tiktoken,
)
from storylib.tokenizer import GPT4_SPLIT_PATTERN, RegexTokenizer, storyteller_tokenizer  # noqa: E402

VOCAB = 4096
HF_SETUP = (
    "tokenizers.Tokenizer(models.BPE()); pre_tokenizer = Sequence([Split(Regex(GPT4_SPLIT_PATTERN), "
    "behavior='isolated'), ByteLevel(add_prefix_space=False, use_regex=False)]) (the same chunks as ours, then "
    "bytes as GPT-2's byte-level alphabet); trainer = BpeTrainer(vocab_size=4096, min_frequency=0, "
    "initial_alphabet=ByteLevel.alphabet() (all 256 bytes), special_tokens=[]); "
    "train_from_iterator(the same list of documents, length=len(docs)); Rust threads: all usable cores"
)


def machine() -> dict:
    from bench.machine import cpu_name

    cpu = cpu_name()
    versions = {}
    for pkg in ("torch", "tokenizers", "tiktoken", "regex", "numpy", "tqdm"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": default_workers(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character HF uses for each byte -> the byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def train_hf(docs: list[str]):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=0, show_progress=True, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tk


def hf_merges_as_bytes(tk) -> list[tuple[bytes, bytes]]:
    dec = gpt2_byte_decoder()
    merges = json.loads(tk.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(bytes(dec[c] for c in a), bytes(dec[c] for c in b)) for a, b in pairs]


def reference_run(text: str, mb: float) -> dict:
    """The reference's split and its whole train on the first `mb` MB of `text`."""
    piece = text.encode("utf-8")[: int(mb * 1e6)].decode("utf-8", "ignore")
    ref = RegexTokenizer(GPT4_SPLIT_PATTERN)
    from collections import Counter

    counts, split_s = timed(lambda: Counter(ref.split(piece)))
    _, train_s = timed(ref.train, piece, VOCAB)
    unique_bytes = sum(len(c.encode("utf-8")) for c in counts)
    return {"bytes": len(piece.encode("utf-8")), "train_s": train_s, "split_s": split_s,
            "merge_s": train_s - split_s, "merges": len(ref.merges), "distinct_chunks": len(counts),
            "distinct_chunk_bytes": unique_bytes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target-mb", type=float, default=100.0, help="replicate the training stories to this size")
    p.add_argument("--ref-mb", type=float, nargs=2, default=[0.5, 1.0], help="the reference's two slice sizes")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokenizer.json"))
    args = p.parse_args(argv)
    import tiktoken

    info = machine()
    docs = storyteller_documents("train")
    base_bytes = sum(len(d.encode("utf-8")) for d in docs)
    reps = -(-int(args.target_mb * 1e6) // base_bytes)  # ceil
    corpus = docs * reps
    corpus_bytes = base_bytes * reps
    print(f"corpus: {len(docs):,} training stories ({base_bytes / 1e6:.2f} MB) x {reps} = {corpus_bytes / 1e6:.1f} MB; "
          f"{info['usable_cores']} usable cores, load average {info['load_average_at_start']}")

    # 1. ours: the two steps of train_bpe, timed apart
    t0 = time.perf_counter()
    counts, pre_s = timed(chunk_counts, corpus, GPT4_SPLIT_PATTERN)
    merges, merge_s = timed(learn_merges, counts, VOCAB - 256)
    ours = RegexTokenizer(GPT4_SPLIT_PATTERN, merges)
    ours_s = time.perf_counter() - t0
    committed = storyteller_tokenizer()
    print(f"ours: {ours_s:.2f} s (pre-tokenise {pre_s:.2f} s, merges {merge_s:.2f} s)")

    # 2. Hugging Face tokenizers
    hf, hf_s = timed(train_hf, corpus)
    hf_pairs = hf_merges_as_bytes(hf)
    our_pairs = [(ours.vocab[a], ours.vocab[b]) for a, b in ours.merges]
    same_prefix = next((i for i, (x, y) in enumerate(zip(our_pairs, hf_pairs, strict=False)) if x != y),
                       min(len(our_pairs), len(hf_pairs)))
    common_tokens = len({a + b for a, b in our_pairs} & {a + b for a, b in hf_pairs})
    print(f"HF tokenizers: {hf_s:.2f} s ({len(hf_pairs)} merges)")

    # 3. the reference, at two sizes, extrapolated
    text = "".join(docs)
    runs = [reference_run(text, mb) for mb in tqdm(args.ref_mb, desc="reference RegexTokenizer.train")]
    big = runs[-1]
    full_unique_bytes = sum(len(c.encode("utf-8")) for c in counts)
    split_per_byte = [r["split_s"] / r["bytes"] for r in runs]
    merge_per_unique_byte = [r["merge_s"] / r["distinct_chunk_bytes"] for r in runs]
    small = runs[0]
    # merge time ~ U^gamma, U = distinct-chunk bytes; gamma from the two slices (1 would be linear in U)
    gamma = math.log(big["merge_s"] / small["merge_s"]) / math.log(big["distinct_chunk_bytes"]
                                                                  / small["distinct_chunk_bytes"])
    ref_split_s = split_per_byte[-1] * corpus_bytes
    ref_merge_s = big["merge_s"] * (full_unique_bytes / big["distinct_chunk_bytes"]) ** gamma
    ref_s = ref_split_s + ref_merge_s
    ref_linear_u_s = ref_split_s + merge_per_unique_byte[-1] * full_unique_bytes
    ref_linear_s = big["train_s"] * corpus_bytes / big["bytes"]
    print(f"reference: {big['train_s']:.1f} s on {big['bytes'] / 1e6:.2f} MB -> about {ref_s:.0f} s on the corpus")

    # 4. encoding the validation stories
    val = "".join(storyteller_documents("valid"))
    val_bytes = len(val.encode("utf-8"))
    enc = to_tiktoken(committed)
    py_ids, py_s = timed(committed.encode_ordinary, val)
    tk_times = []
    for _ in range(5):
        tk_ids, s = timed(enc.encode_ordinary, val)
        tk_times.append(s)
    tk_s = statistics.median(tk_times)
    batch_docs = storyteller_documents("valid")
    _, tk_batch_s = timed(enc.encode_ordinary_batch, batch_docs)
    assert tk_ids == py_ids, "the tiktoken export should encode exactly as storylib"
    print(f"encode: Python {val_bytes / py_s / 1e6:.2f} MB/s, tiktoken {val_bytes / tk_s / 1e6:.1f} MB/s")

    # 5. compression on the validation stories
    encoders = {"gpt2 (tiktoken, 50,257)": tiktoken.get_encoding("gpt2"),
                "cl100k_base (tiktoken, 100,277)": tiktoken.get_encoding("cl100k_base"),
                "storyteller (ours, 4,104)": enc}
    compression = {name: val_bytes / len(e.encode_ordinary(val)) for name, e in encoders.items()}
    compression["HF BPE trained here (4,096)"] = val_bytes / len(hf.encode(val).ids)

    result = {
        "machine": info,
        "corpus": {"source": "storylib.fastbpe.storyteller_documents('train') = load_stories('train'), each story "
                             "+ '\\n'", "stories": len(docs), "bytes_once": base_bytes, "copies": reps,
                   "bytes": corpus_bytes, "documents": len(corpus), "distinct_chunks": len(counts),
                   "distinct_chunk_bytes": full_unique_bytes},
        "train": {
            "vocab_size": VOCAB, "pattern": "GPT4_SPLIT_PATTERN",
            "ours": {"wall_s": ours_s, "pretokenise_s": pre_s, "merges_s": merge_s, "merges": len(ours.merges),
                     "workers": info["usable_cores"],
                     "merges_equal_committed_tokenizer": list(ours.merges.items()) == list(committed.merges.items()),
                     "what": "storylib.fastbpe.train_bpe's steps: chunk_counts(docs) (multiprocessing) + "
                             "learn_merges (pure Python, heap + pair index); no numba"},
            "hf_tokenizers": {"wall_s": hf_s, "merges": len(hf_pairs), "setup": HF_SETUP,
                              "same_merges_as_ours_in_order": same_prefix, "tokens_in_common_with_ours": common_tokens,
                              "note": "HF breaks ties between equally frequent pairs its own way, so its merges "
                                      "can differ from ours after the first tie"},
            "reference": {
                "extrapolated_s": ref_s, "extrapolated_split_s": ref_split_s, "extrapolated_merges_s": ref_merge_s,
                "merge_exponent_gamma": gamma, "if_linear_in_distinct_bytes_s": ref_linear_u_s,
                "if_linear_in_bytes_s": ref_linear_s, "runs": runs,
                "split_s_per_mb": [x * 1e6 for x in split_per_byte],
                "merge_s_per_distinct_chunk_mb": [x * 1e6 for x in merge_per_unique_byte],
                "method": "RegexTokenizer.train = split + Counter, then 3840 merge steps that each re-count and "
                          "re-merge every distinct chunk. The split's time is linear in bytes (split_s_per_mb "
                          "at the two slices); the merge steps' time depends only on the distinct chunks, whose "
                          "total size U grows with the text. From the two slices, merge time ~ U^gamma; "
                          "extrapolated = split rate x corpus bytes + merge time of the larger slice x "
                          "(U_corpus / U_slice)^gamma. The corpus is copies of 5.9 MB, so U_corpus is that of "
                          "5.9 MB and a plain linear-in-bytes extrapolation (if_linear_in_bytes_s) would be "
                          "far too high; if_linear_in_distinct_bytes_s is the gamma = 1 variant.",
            },
            "ratio_ours_over_hf": ours_s / hf_s, "target_ours_over_hf": "<= 2",
            "ratio_reference_over_ours": ref_s / ours_s,
        },
        "encode": {
            "text": "storyteller_documents('valid') joined (each story + '\\n')", "bytes": val_bytes,
            "tokens": len(py_ids), "python_encode_ordinary_s": py_s, "python_mb_per_s": val_bytes / py_s / 1e6,
            "tiktoken_encode_ordinary_s_median_of_5": tk_s, "tiktoken_mb_per_s": val_bytes / tk_s / 1e6,
            "tiktoken_encode_ordinary_batch_s": tk_batch_s, "tiktoken_batch_mb_per_s": val_bytes / tk_batch_s / 1e6,
            "identical_tokens": tk_ids == py_ids,
            "ratio_tiktoken_over_python": py_s / tk_s, "target_ratio": ">= 5",
        },
        "compression_bytes_per_token": compression,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    tr, ec = result["train"], result["encode"]
    print(f"\nBPE training, vocab {VOCAB}, on {corpus_bytes / 1e6:.1f} MB ({info['cpu']}, "
          f"{info['usable_cores']} cores)")
    print(f"  {'ours (storylib.fastbpe)':34s} {ours_s:9.2f} s")
    print(f"  {'HF tokenizers':34s} {hf_s:9.2f} s")
    print(f"  {'reference RegexTokenizer (extrap.)':34s} {ref_s:9.0f} s")
    print(f"  ours / HF = {tr['ratio_ours_over_hf']:.2f} (target <= 2);  reference / ours = "
          f"{tr['ratio_reference_over_ours']:.0f}")
    print(f"Encoding {val_bytes / 1e6:.2f} MB of validation stories")
    print(f"  {'Python RegexTokenizer.encode_ordinary':40s} {ec['python_mb_per_s']:8.2f} MB/s")
    print(f"  {'tiktoken export (one thread)':40s} {ec['tiktoken_mb_per_s']:8.2f} MB/s")
    print(f"  tiktoken / Python = {ec['ratio_tiktoken_over_python']:.0f} (target >= 5)")
    print("Compression on the validation stories (bytes per token)")
    for name, bpt in compression.items():
        print(f"  {name:34s} {bpt:6.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
