"""Chapter 13 — the storyteller for `storylib/c/storyteller.c`: one binary file holding the model and its tokenizer.

    llm101n export-c MODEL_DIR OUT.bin [--dtype fp32|int8] [--group 64]
    storylib/c/storyteller OUT.bin -i "Once upon a time" -n 256 -t 0.8 -p 0.9 -s 42

fp32 writes the weights as they are. int8 is Chapter 13's `int8-g64-dyn` (storylib.quantize.quantize_model with
`group_size`): every matrix as int8 with one scale per group of `group` inputs of a row (the scales are fp16
values, written as fp32), LayerNorms and biases rounded to fp16 (written as fp32); storyteller.c then quantizes
each matmul's input as it arrives and sums int8 x int8 products in int32, as llama2.c's runq.c does.
`c_model` is that same model in PyTorch: what the C program's tokens and logits are compared with.

The file (little-endian; `storylib/c/storyteller.c` reads exactly this):

    header, 256 bytes    char magic[8] = "LLM101NC"; then int32: version (1), dtype (0 fp32, 1 int8), group
                         (int8: inputs per scale, else 0), n_layer, n_head, n_embd, vocab_size, block_size,
                         n_merges, n_specials, n_letter_ranges, n_number_ranges, n_space_ranges; zeros to 256
    tensors              each starts at a multiple of 64 bytes (zero padding before it), in this order:
                         wte (vocab_size, n_embd), wpe (block_size, n_embd), then for every layer: ln_1.weight,
                         ln_1.bias, attn.c_attn.weight (3C, C), attn.c_attn.bias, attn.c_proj.weight (C, C),
                         attn.c_proj.bias, ln_2.weight, ln_2.bias, mlp.c_fc.weight (4C, C), mlp.c_fc.bias,
                         mlp.c_proj.weight (C, 4C), mlp.c_proj.bias; then ln_f.weight, ln_f.bias. Vectors are
                         fp32. A matrix (rows, cols), as nn.Linear stores it, is fp32 rows·cols, or for int8 two
                         tensors: the integers int8 rows·cols, then the scales fp32 rows·ceil(cols / group).
                         lm_head is wte (tied), stored once. A model without biases gets zero biases.
    tokenizer            at a multiple of 64 bytes: n_merges pairs int32 (a, b), merge i making token 256 + i;
                         n_specials times int32 id, int32 length, that many UTF-8 bytes; then the code point
                         ranges int32 (first, last) of the split pattern's \\p{L}, \\p{N} and \\s, each list sorted,
                         as the `regex` module sees them (the C program's pre-split uses these, so it classifies
                         every character as Python does).
    end of file          exactly here: anything after is an error.

The split pattern must be GPT-4's (storylib.tokenizer.GPT4_SPLIT_PATTERN), the storyteller's; storyteller.c
implements that pattern by hand.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex
import torch

from storylib.gpt2 import GPT
from storylib.quantize import quantize_model
from storylib.tokenizer import GPT4_SPLIT_PATTERN, RegexTokenizer

MAGIC, VERSION, HEADER_BYTES, ALIGN = b"LLM101NC", 1, 256, 64
DTYPES = {"fp32": 0, "int8": 1}
ROOT = Path(__file__).resolve().parents[1]
C_SOURCE = ROOT / "storylib" / "c" / "storyteller.c"
BUILD_SCRIPT = ROOT / "scripts" / "build_c.sh"
DEFAULT_BINARY = ROOT / "build" / "storyteller"
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn", "attn.c_attn.bias", "attn.c_proj", "attn.c_proj.bias",
                "ln_2.weight", "ln_2.bias", "mlp.c_fc", "mlp.c_fc.bias", "mlp.c_proj", "mlp.c_proj.bias")


def c_model(model: GPT, dtype: str = "fp32", group: int = 64) -> GPT:
    """The model a file of `dtype` holds, in PyTorch (a copy): fp32 as it is, or Chapter 13's int8-g64-dyn with
    groups of `group` (int8 weights, dynamically quantized int8 activations)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return quantize_model(model, "fp32" if dtype == "fp32" else "int8-g64-dyn", group_size=group)


@functools.cache
def char_ranges(pattern: str) -> tuple[tuple[int, int], ...]:
    """The code points one character class of the `regex` module matches, as sorted (first, last) ranges."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)  # surrogates are not characters
    out: list[list[int]] = []
    for m in regex.finditer(pattern, every):
        c = ord(m.group())
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return tuple((a, b) for a, b in out)


class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def put(self, data: bytes, align: bool = False) -> None:
        if align and self.size % ALIGN:
            self.put(bytes(ALIGN - self.size % ALIGN))
        self.parts.append(data)
        self.size += len(data)

    def tensor(self, t: torch.Tensor, dtype: np.dtype) -> None:
        self.put(np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype).astype(dtype.newbyteorder("<")).tobytes(),
                 align=True)


def _matrix(w: _Writer, module, dtype: str) -> None:
    """A matrix: fp32, or a QuantLinear / QuantEmbedding's int8 integers then its scales as fp32."""
    if dtype == "fp32":
        w.tensor(module.weight, np.dtype(np.float32))
    else:
        w.tensor(module.int_weight(), np.dtype(np.int8))
        w.tensor(module.scale.float(), np.dtype(np.float32))


def _vector(w: _Writer, t: torch.Tensor | None, n: int) -> None:
    w.tensor(torch.zeros(n) if t is None else t.float(), np.dtype(np.float32))


def tokenizer_bytes(tok: RegexTokenizer) -> tuple[bytes, tuple[int, ...]]:
    """The tokenizer section and its header counts (n_merges, n_specials, letter, number and space ranges)."""
    if tok.pattern != GPT4_SPLIT_PATTERN or hasattr(tok, "byte_shuffle"):
        raise ValueError("storyteller.c implements GPT-4's split pattern on plain bytes (the storyteller's "
                         "tokenizer); this tokenizer is another kind")
    merges = sorted(tok.merges.items(), key=lambda kv: kv[1])
    if [idx for _, idx in merges] != list(range(256, 256 + len(merges))):
        raise ValueError("the merges must make tokens 256, 257, ... in order")
    out = [struct.pack(f"<{2 * len(merges)}i", *[x for (a, b), _ in merges for x in (a, b)])]
    for s, idx in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):
        data = s.encode("utf-8")
        out.append(struct.pack("<2i", idx, len(data)) + data)
    classes = [char_ranges(p) for p in (r"\p{L}", r"\p{N}", r"\s")]
    for ranges in classes:
        out.append(struct.pack(f"<{2 * len(ranges)}i", *[x for r in ranges for x in r]))
    return b"".join(out), (len(merges), len(tok.special_tokens), *(len(r) for r in classes))


def export(model: GPT, tok: RegexTokenizer, path: str | os.PathLike, dtype: str = "fp32", group: int = 64) -> Path:
    """Write `model` (a storylib GPT) and `tok` as one storyteller.c file at `path` (atomically); returns path."""
    cfg = model.config
    if tok.n_vocab > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.n_vocab} ids, the model's table only {cfg.vocab_size}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    m = c_model(model, dtype, group)
    tok_data, counts = tokenizer_bytes(tok)
    w = _Writer()
    fields = (VERSION, DTYPES[dtype], group if dtype == "int8" else 0, cfg.n_layer, cfg.n_head, cfg.n_embd,
              cfg.vocab_size, cfg.block_size, *counts)
    w.put((MAGIC + struct.pack(f"<{len(fields)}i", *fields)).ljust(HEADER_BYTES, b"\0"))
    tr, C = m.transformer, cfg.n_embd
    _matrix(w, m.lm_head if dtype == "int8" else tr.wte, dtype)  # int8: wte's integers are lm_head's
    _matrix(w, tr.wpe, dtype)
    for block in tr.h:
        for name in BLOCK_PARAMS:
            sub = block.get_submodule(name.removesuffix(".weight").removesuffix(".bias"))
            if name.endswith(".weight"):
                _vector(w, sub.weight, C)
            elif name.endswith(".bias"):
                _vector(w, sub.bias, sub.out_features if hasattr(sub, "out_features") else C)
            else:
                _matrix(w, sub, dtype)
    _vector(w, tr.ln_f.weight, C)
    _vector(w, tr.ln_f.bias, C)
    w.put(tok_data, align=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        for part in w.parts:
            f.write(part)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)  # a crash never leaves half a file
    return path


# ----------------------------------------------------------------------------- building and running the program


def build(out: str | os.PathLike = DEFAULT_BINARY, sanitize: bool = False) -> Path:
    """Compile storyteller.c with scripts/build_c.sh (cc -O3 -march=native -fopenmp; without OpenMP where the
    compiler has none). sanitize: -fsanitize=address,undefined, for the tests. Returns the program's path."""
    out = Path(out)
    env = dict(os.environ, SANITIZE="1" if sanitize else "")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"building {C_SOURCE.name} failed:\n{proc.stdout}{proc.stderr}")
    return out


def ensure_built(out: str | os.PathLike = DEFAULT_BINARY) -> Path:
    """The program at `out`, built first if it is missing or older than storyteller.c."""
    out = Path(out)
    if not out.exists() or out.stat().st_mtime < C_SOURCE.stat().st_mtime:
        build(out)
    return out


def cc_available() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llm101n export-c", description="write a model folder (and its tokenizer) "
                                "as one file for storylib/c/storyteller.c")
    p.add_argument("model_dir", help="a model folder (models/storyteller) or a checkpoint (runs/.../best)")
    p.add_argument("out", help="the file to write, e.g. storyteller_int8.bin")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--group", type=int, default=64, help="int8: inputs per scale (default 64)")
    args = p.parse_args(argv)
    from storylib.checkpoint import load_model

    model, tok = load_model(args.model_dir)
    path = export(model, tok, args.out, args.dtype, args.group)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.dtype}"
          f"{f', groups of {args.group}' if args.dtype == 'int8' else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
