"""The storyteller's browser engine (storylib/web) under node, against storylib on the same fp16 weights.

Node has WebAssembly SIMD, so the very storyteller.wasm and engine.js the book serves run here: logits of a tiny
random GPT with odd sizes, greedy ids of the shipped storyteller (Chapter 12's golden story) and of the chat model
(one reply through the chat template), the chat template's ids, and the tokenizer on a corpus of hard strings.
The oracle is storylib run on the weights read back from the exported fp16 file (storylib.web.load_exported).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from storylib import web
from storylib.gpt2 import GPT, GPTConfig
from storylib.kvcache import GOLDEN_PROMPT, GOLDEN_TOKENS, generate_tokens

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "grading" / "tests" / "golden" / "ch12_once_upon_a_time.txt"
CHAT_REQUEST = "Write a story about a dog named Max who loves the rain."

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

RUNNER = """
import fs from "node:fs";
import { Engine } from "./engine.js";
const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const buf = (p) => { const b = fs.readFileSync(p); return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength); };
const wasm = buf(job.wasm);
const out = {};
for (const m of job.models) {
  const engine = await Engine.create({ wasm, weights: buf(m.weights), tokenizer: job.tokenizer });
  const r = { n_params: engine.nParams };
  if (m.logits) r.logits = engine.allLogits(m.logits).map((a) => Array.from(a));
  if (m.prefill) {  // the prompt in chunks (storyteller.c's forward), on an empty cache
    engine.pos = 0; engine.cached = [];
    r.prefill = Array.from(engine.logitsAfter(m.prefill));
  }
  if (m.greedy) r.greedy = engine.greedy(m.greedy.prompt, m.greedy.n);
  if (m.chat) {
    r.chat_prompt = engine.chatPrompt(m.chat.messages, m.chat.reserve);
    r.chat = engine.greedy(r.chat_prompt, m.chat.n);
  }
  if (m.texts) {
    r.encode = m.texts.map((t) => engine.encode(t));
    r.ordinary = m.texts.map((t) => engine.encodeOrdinary(t));
  }
  if (m.speed) {
    engine.greedy([engine.eot], 8);  // warm up
    const t0 = performance.now();
    engine.pos = 0; engine.cached = [];
    let logits = engine.logitsAfter([engine.eot]);
    for (let i = 0; i < m.speed; i++) { engine._step(i % 4000, true); logits = engine.logits(); }
    r.tokens_per_s = m.speed / ((performance.now() - t0) / 1000);
    r.checksum = logits[0];
  }
  out[m.name] = r;
}
fs.writeFileSync(job.out, JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """storyteller.wasm, engine.js (as the site serves them), the tokenizer and the runner in one folder."""
    from storylib.tokenizer import storyteller_tokenizer

    d = tmp_path_factory.mktemp("web_engine")
    web.build_wasm(d / "storyteller.wasm")
    (d / "engine.js").write_text(web.engine_module(), encoding="utf-8")
    (d / "run.mjs").write_text(RUNNER, encoding="utf-8")
    (d / "tokenizer.json").write_text(json.dumps(web.tokenizer_spec(storyteller_tokenizer())), encoding="utf-8")
    return d


def run_node(site: Path, models: list[dict], name: str = "job") -> dict:
    job = {"wasm": str(site / "storyteller.wasm"), "tokenizer": json.loads((site / "tokenizer.json").read_text()),
           "models": models, "out": str(site / f"{name}.out.json")}
    (site / f"{name}.json").write_text(json.dumps(job))
    proc = subprocess.run(["node", str(site / "run.mjs"), str(site / f"{name}.json")], capture_output=True,
                          text=True, timeout=600, cwd=site)
    assert proc.returncode == 0, f"node failed:\n{proc.stderr[-3000:]}"
    return json.loads((site / f"{name}.out.json").read_text())


def greedy_ids(model: GPT, prompt: list[int], n: int, stop: set[int]) -> list[int]:
    return list(generate_tokens(model, prompt, n, temperature=0.0, stop_ids=stop))


def golden_text() -> str:
    text = GOLDEN.read_text(encoding="utf-8")
    return text.split("\n---\n", 1)[1][:-1]


# ----------------------------------------------------------------------------- a tiny random GPT, odd sizes


def test_tiny_random_gpt_logits_and_greedy_ids_equal_storylib(site, tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=24, vocab_size=70, n_layer=2, n_head=3, n_embd=36, bias=True)
    model = GPT(cfg).eval()
    with torch.no_grad():  # make the biases and LayerNorms matter (GPT-2's init leaves them 0 and 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = web.export_model(model, tmp_path / "tiny.safetensors")
    oracle = web.load_exported(path)  # the fp16-rounded weights, in fp32
    ids = [int(i) for i in torch.randint(0, 70, (24,))]
    out = run_node(site, [{"name": "tiny", "weights": str(path), "logits": ids, "prefill": ids,
                           "greedy": {"prompt": ids[:5], "n": 40}}], "tiny")["tiny"]
    assert out["n_params"] == oracle.num_params()
    with torch.no_grad():
        want = oracle(torch.tensor([ids]))[0][0]
    got = torch.tensor(out["logits"])
    assert got.shape == want.shape == (24, 70)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a prompt read in chunks (16 + 8 tokens) gives the same bits as one token at a time
    assert out["prefill"] == out["logits"][-1]
    # 40 new tokens from a 5-token prompt in a 24-token window: the cache restarts from its last 12 tokens, as
    # storylib.kvcache.generate_tokens does
    assert out["greedy"] == greedy_ids(oracle, ids[:5], 40, set())


# ----------------------------------------------------------------------------- the shipped models


def test_golden_story_of_chapter_12_in_the_browser_engine(site, tmp_path):
    from storylib.checkpoint import default_storyteller
    from storylib.fastbpe import encode_ordinary
    from storylib.tokenizer import eot_id

    model, tok = default_storyteller()
    path = web.export_model(model, tmp_path / "story.safetensors")
    oracle = web.load_exported(path)
    prompt = [eot_id(tok), *encode_ordinary(tok, GOLDEN_PROMPT)]
    stop = {tok.special_tokens["<|end|>"], eot_id(tok)}
    out = run_node(site, [{"name": "story", "weights": str(path), "greedy": {"prompt": prompt, "n": GOLDEN_TOKENS},
                           "logits": prompt}], "story")["story"]
    want = greedy_ids(oracle, prompt, GOLDEN_TOKENS, stop)
    assert out["greedy"] == want, "the browser engine's greedy story differs from storylib's on the same weights"
    with torch.no_grad():
        logits = oracle(torch.tensor([prompt]))[0][0]
    torch.testing.assert_close(torch.tensor(out["logits"]), logits, rtol=1e-4, atol=2e-4)
    # models/storyteller is stored in fp16: the export is lossless, so this is Chapter 12's golden story itself
    assert want == greedy_ids(model, prompt, GOLDEN_TOKENS, stop)
    assert tok.decode(out["greedy"]) == golden_text()


def test_chat_model_reply_in_the_browser_engine(site, tmp_path):
    from storylib.chat_template import render_chat
    from storylib.sft import default_chat_folder, load_chat_model

    model, tok = load_chat_model(default_chat_folder())
    path = web.export_model(model, tmp_path / "chat.safetensors")
    oracle = web.load_exported(path)
    messages = [{"role": "user", "content": CHAT_REQUEST}]
    prompt, _ = render_chat(messages, tok, add_generation_prompt=True)
    out = run_node(site, [{"name": "chat", "weights": str(path),
                           "chat": {"messages": messages, "reserve": 200, "n": 200}}], "chat")["chat"]
    assert out["chat_prompt"] == prompt, "the chat template differs from storylib.chat_template.render_chat"
    stop = {tok.special_tokens["<|end|>"], tok.special_tokens["<|endoftext|>"]}
    want = greedy_ids(oracle, prompt, 200, stop)
    assert out["chat"] == want, (f"browser: {tok.decode(out['chat'])!r}\nstorylib: {tok.decode(want)!r}")
    assert len(want) > 20 and "Max" in tok.decode(want)


def test_tokenizer_and_chat_template_equal_storylib(site):
    from storylib.data import HARD_STRINGS, synthetic_stories
    from storylib.fastbpe import encode_ordinary
    from storylib.tokenizer import storyteller_tokenizer

    tok = storyteller_tokenizer()
    texts = [*HARD_STRINGS, *synthetic_stories(8, 3, unicode=True), "I'LL can't WE'RE it'S", "a\r\nb\r\n\r\n",
             "<|end|><|endoftext|>", "<|user|>hi<|end|>", "<|endoftext|", "naïve café 👍🏽", "\ufeffBOM", "ok\x85next",
             "x    y", "  \n  ", "12345678"]
    tiny = site / "tiny_tok.safetensors"
    torch.manual_seed(1)
    web.export_model(GPT(GPTConfig(block_size=8, vocab_size=8, n_layer=1, n_head=1, n_embd=4)), tiny)
    out = run_node(site, [{"name": "tok", "weights": str(tiny), "texts": texts}], "tok")["tok"]
    for text, ids, ordinary in zip(texts, out["encode"], out["ordinary"], strict=True):
        assert ids == tok.encode(text, allowed_special="all"), text
        assert ordinary == encode_ordinary(tok, text), text


def test_speed_under_node(site, tmp_path):
    """Decoding speed of the shipped model's size in node (the browser test measures Chromium's)."""
    from storylib.checkpoint import default_storyteller

    path = web.export_model(default_storyteller()[0], tmp_path / "story.safetensors")
    out = run_node(site, [{"name": "speed", "weights": str(path), "speed": 200}], "speed")["speed"]
    print(f"node: {out['tokens_per_s']:.0f} tokens/s")
    assert out["tokens_per_s"] > 50
