"""The storyteller in the reader's browser: the static book's StoryChat generates with no server at all.

    storyteller.c     the model's forward pass with a KV cache, by hand, in C (WebAssembly SIMD128)
    engine.js         loads it, tokenizes (storylib/widgets/js/tokens.js's compileTokenizer), samples, streams
    build_wasm        compiles storyteller.c with zig's clang (pip package ziglang, pinned in pyproject.toml)
    export_model      a GPT as fp16 safetensors (its config in the header's metadata)
    export_site       what the book serves from _static/storyteller/: manifest.json, storyteller.wasm, engine.js,
                      tokenizer.json, chat.safetensors (the chat model, storylib.sft.default_chat_folder(), its
                      LoRA adapters merged) and story.safetensors (models/storyteller, for story mode)

    python -m storylib.web export OUT_DIR     (scripts/build_book.sh runs it at every build)

Why this engine: the model is tiny (11.3 M parameters, 22.7 MB as fp16), so one thread of SIMD fp32 arithmetic
writes well over a hundred tokens a second; a page of C has no dependency to install or fetch from a CDN; and a single
thread needs no SharedArrayBuffer, so no special HTTP headers: any static host (a sub-path of GitHub Pages, a
folder served by `python -m http.server`) runs it. The weights travel as fp16 and are widened to fp32 once, in
WebAssembly memory, at load.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "storyteller.c"
ENGINE_JS = HERE / "engine.js"
TOKENS_JS = HERE.parent / "widgets" / "js" / "tokens.js"
ZIG_VERSION = "0.17.1"  # the ziglang pip package that compiles storyteller.c (pyproject.toml pins the same)
CFLAGS = ["--target=wasm32-freestanding", "-msimd128", "-O3", "-nostdlib", "-Wl,--no-entry", "-Wl,--strip-all"]
FORMAT = "llm101n-web/1"
_SHARED = re.compile(r"// <shared with storylib/web/engine\.js>[^\n]*\n(.*?)// </shared>\n", re.S)


class WebBuildError(RuntimeError):
    """The browser engine could not be built (no ziglang, a compiler error)."""


def build_wasm(out: str | Path) -> Path:
    """Compile storyteller.c to `out` (a .wasm file) with `python -m ziglang cc`; returns out."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS, "-o", str(out), str(C_SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise WebBuildError(f"cannot run {sys.executable}: {e}") from e
    if proc.returncode != 0:
        hint = f" (pip install ziglang=={ZIG_VERSION})" if "No module named ziglang" in proc.stderr else ""
        raise WebBuildError(f"compiling {C_SOURCE.name} failed{hint}:\n{proc.stderr[-3000:]}")
    return out


def engine_module() -> str:
    """engine.js as the site serves it: the tokenizer part of the TokenViewer's tokens.js (between its
    `// <shared with storylib/web/engine.js>` marks: one copy of the code, two users), then engine.js."""
    m = _SHARED.search(TOKENS_JS.read_text(encoding="utf-8"))
    if m is None:
        raise WebBuildError(f"{TOKENS_JS}: the shared tokenizer marks are missing")
    return ("// Built by storylib.web.engine_module from storylib/widgets/js/tokens.js (the tokenizer) and "
            "storylib/web/engine.js.\n" + m.group(1) + "\n" + ENGINE_JS.read_text(encoding="utf-8"))


def fp16_state_dict(model) -> dict:
    """The model's parameters (wte once: lm_head is tied to it) as contiguous fp16 tensors."""
    sd = model.state_dict()
    return {k: v.detach().to("cpu").half().contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def export_model(model, path: str | Path, about: str = "") -> Path:
    """`model` (a storylib GPT) as fp16 safetensors at `path`: storylib's parameter names (nn.Linear weights
    (out, in)), wte only (lm_head is tied), the GPTConfig as JSON in the metadata ("config")."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = asdict(model.config)
    save_file(fp16_state_dict(model), str(path), metadata={"config": json.dumps(cfg), "dtype": "float16",
                                                           "about": about, "format": FORMAT})
    return path


def load_exported(path: str | Path):
    """The GPT of an export_model file, in fp32 (the fp16-rounded weights the browser runs), eval mode."""
    from safetensors import safe_open

    from storylib.gpt2 import GPT, GPTConfig

    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    model = GPT(GPTConfig(**cfg))
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd)
    return model.eval()


def tokenizer_spec(tok) -> dict:
    """The tokenizer as data for compileTokenizer (storylib.widgets.tokens.export_live)."""
    from storylib.widgets.tokens import export_live

    spec = export_live(tok)
    if spec is None:
        raise WebBuildError("the tokenizer cannot run in the browser exactly as in Python (see export_live)")
    return spec


def export_site(out: str | Path, chat_folder: str | None = None, story: bool = True, wasm: bool = True) -> dict:
    """Write the browser engine's files into `out` (the book copies them to _static/storyteller/); returns the
    manifest. The chat model: storylib.sft.load_chat_model(chat_folder) (default: default_chat_folder()), merged;
    with story, also models/storyteller for story mode. Both fp16."""
    from storylib.checkpoint import default_storyteller
    from storylib.sft import default_chat_folder, load_chat_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = chat_folder or default_chat_folder()
    chat, tok = load_chat_model(folder)
    models = {"chat": (chat, f"the chat model ({folder}, merged)")}
    if story:
        models["story"] = (default_storyteller()[0], "the storyteller (models/storyteller)")
    manifest = {"format": FORMAT, "engine": "storyteller.wasm", "tokenizer": "tokenizer.json", "models": {}}
    for name, (model, about) in models.items():
        path = export_model(model, out / f"{name}.safetensors", about)
        manifest["models"][name] = {"file": path.name, "bytes": path.stat().st_size, "about": about,
                                    "params": model.num_params(), "dtype": "float16",
                                    "config": asdict(model.config)}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_spec(tok)), encoding="utf-8")
    if wasm:
        build_wasm(out / "storyteller.wasm")
    (out / "engine.js").write_text(engine_module(), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storylib.web", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the browser engine's files (manifest, wasm, engine.js, weights)")
    e.add_argument("out")
    e.add_argument("--chat-folder", default=None)
    e.add_argument("--no-story", action="store_true", help="only the chat model (no story mode in the browser)")
    args = p.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        manifest = export_site(tmp, args.chat_folder, story=not args.no_story)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)  # whole, or not at all: a reader never gets half a site
    out.chmod(0o755)  # a web server reads them as another user (the temporary folder and safetensors are 0600)
    for f in out.iterdir():
        f.chmod(0o644)
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in manifest["models"].items())
    print(f"browser engine in {out}: {sizes}")
    return 0
