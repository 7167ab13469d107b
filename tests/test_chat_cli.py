"""`llm101n chat`: the terminal storyteller, as a learner runs it (subprocesses) and its REPL in-process.

The one-shot story must equal storylib.kvcache's greedy continuation (computed here, never hard-coded); Ctrl-C
must stop the story being told and leave the REPL running; a workspace with an unfinished exercise must get a
sentence naming it, not a traceback.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storylib import kvcache
from storylib.checkpoint import default_storyteller
from storylib.fastbpe import encode_ordinary
from storylib.storyteller import Sampling, StorySession, TerminalChat
from storylib.tokenizer import eot_id
from tests.story_hold import HELD_CHAT

ROOT = Path(__file__).resolve().parents[1]
LLM101N = str(Path(sys.executable).parent / "llm101n")


@pytest.fixture(scope="module")
def storyteller():
    return default_storyteller()


def greedy(storyteller, text: str, n: int) -> str:
    model, tok = storyteller
    ids = [eot_id(tok), *encode_ordinary(tok, text)]
    return "".join(kvcache.generate_stream(model, tok, ids, n, temperature=0.0))


def run_chat(args: list[str], cwd: Path = ROOT, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([LLM101N, "chat", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          **kw)


def test_one_shot_prints_the_greedy_story(storyteller):
    r = run_chat(["--mode", "story", "--prompt", "Once upon a time", "--max-tokens", "20", "--temperature", "0"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Once upon a time" + greedy(storyteller, "Once upon a time", 20) + "\n", r.stdout
    assert re.search(r"\[20 tokens in [\d.]+ s · \d+ tokens/s · reached the length limit\]", r.stderr), r.stderr
    assert "storylib the course's reference" in r.stderr


def test_bad_flags_are_refused_before_loading():
    r = run_chat(["--prompt", "x", "--top-p", "1.5"])
    assert r.returncode == 2 and "top-p must be in (0, 1]" in r.stderr, r.stderr


def test_repl_commands(storyteller):
    out, err = io.StringIO(), io.StringIO()
    model, tok = storyteller
    chat = TerminalChat(StorySession(model, tok, mode="story"), Sampling(temperature=0.0, max_tokens=12), out, err)
    lines = iter(["Tom found a shell", "", "/set max_tokens 7", "/refine a crab", "/show", "/set top_k -3",
                  "/nonsense", "/new", "/show", "/quit", "never read"])
    assert chat.repl(lambda _prompt: next(lines)) == 0
    first = greedy(storyteller, "Tom found a shell", 12)
    second = greedy(storyteller, "Tom found a shell" + first, 12)
    third = greedy(storyteller, "Tom found a shell" + first + " a crab", 7)
    story = "Tom found a shell" + first + " a crab" + third
    text = out.getvalue()
    assert text.startswith("Tom found a shell" + first + "\n…" + second + "\n"), text
    assert story + "\n" + story + "\n" in text, "/refine prints the story kept, then tells it again; /show prints it"
    assert text.endswith(story + "\n" + "\n"), "after /new, /show prints an empty story"
    assert "(max_tokens = 7)" in err.getvalue() and "top-k must be >= 1" in err.getvalue()
    assert "unknown command /nonsense" in err.getvalue()


def test_ctrl_c_stops_the_story_not_the_program(storyteller):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    env["OMP_NUM_THREADS"] = "1"
    # the story is held after its first 80 characters until Ctrl-C: a busy machine cannot finish it first
    p = subprocess.Popen([sys.executable, "-c", HELD_CHAT, "--mode", "story", "--temperature", "1", "--top-p", "1",
                          "--seed", "4", "--max-tokens", "600"],
                         cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, bufsize=1)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: p.stdout.read(1), "")), daemon=True)
    reader.start()
    try:
        p.stdin.write("Once upon a time, there was a little fox\n")
        p.stdin.flush()
        deadline = time.time() + 60
        while time.time() < deadline and len("".join(out)) < 80:  # the prompt, then the story streaming in
            time.sleep(0.02)
        assert len("".join(out)) >= 80, "the story should stream to stdout"
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        p.stdin.write("/quit\n")
        p.stdin.flush()
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert re.search(r"\[\d+ tokens in [\d.]+ s · \d+ tokens/s · stopped\]", err), err
    n = int(re.search(r"\[(\d+) tokens", err.split("stopped]")[0].splitlines()[-1]).group(1))
    assert 0 < n < 280, f"Ctrl-C should cut seed 4's story (280 tokens) short, {n} tokens were told"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _workspace(tmp_path: Path, ids: list[str] | None) -> Path:
    """A learner workspace: the course's storylib with the exercises `ids` stubbed (None: all of them)."""
    from grading.exercises import stub_text

    ws = tmp_path / "ws"
    for src in (ROOT / "storylib").rglob("*.py"):
        dest = ws / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(stub_text(src.read_text(), src.relative_to(ROOT), ids))
    (ws / "models").symlink_to(ROOT / "models")  # course_file() finds the shipped model next to storylib/
    (ws / ".assets").symlink_to(ROOT / ".assets")
    return ws


def test_a_workspace_without_chapter_12_is_told_which_exercise(tmp_path):
    ws = _workspace(tmp_path, ["ch12.forward_cached"])
    r = run_chat(["--mode", "story", "--prompt", "Once upon a time", "--max-tokens", "5"], cwd=ws)
    assert r.returncode == 1 and r.stdout == "Once upon a time\n", r.stdout
    assert "exercise ch12.forward_cached (storylib/kvcache.py)" in r.stderr and "Finish Chapter 12" in r.stderr
    assert f"storylib {ws / 'storylib'}" in r.stderr, "it runs the workspace's storylib"
    assert "then run `llm101n chat` again" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_fresh_workspace_is_told_where_to_start(tmp_path):
    ws = _workspace(tmp_path, None)
    r = run_chat(["--prompt", "Once upon a time"], cwd=ws)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"exercise ch\d\d\.\w+ \(storylib/\w+\.py\), which is not written yet\. Finish Chapter \d+",
                     r.stderr), r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- chat mode (Chapter 14)

REQUEST = "Write a story about a cat named Tom who finds a key."


def chat_greedy(storyteller, messages: list[dict], n: int) -> str:
    from storylib.chat_template import render_chat

    model, tok = storyteller
    ids, _ = render_chat(messages, tok, add_generation_prompt=True)
    return "".join(kvcache.generate_stream(model, tok, ids, n, temperature=0.0))


def test_one_shot_chat_prints_the_greedy_reply(storyteller):
    """The default mode: --prompt is a request; stdout is the reply alone (here from the model of --model, the
    storyteller, through the chat template: the plumbing, not the chat model's quality)."""
    r = run_chat(["--model", "models/storyteller", "--prompt", REQUEST, "--max-tokens", "20", "--temperature", "0"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == chat_greedy(storyteller, [{"role": "user", "content": REQUEST}], 20) + "\n", r.stdout
    assert re.search(r"\[\d+ tokens in [\d.]+ s · \d+ tokens/s · (reached the length limit|the reply ended)", r.stderr)


def test_repl_chat_commands(storyteller):
    out, err = io.StringIO(), io.StringIO()
    model, tok = storyteller
    chat = TerminalChat(StorySession(model, tok), Sampling(temperature=0.0, max_tokens=9), out, err)
    lines = iter([REQUEST, "Give it a happy ending.", "/refine Call the cat Max.", "/show", "/mode story",
                  "Once upon a time", "/quit"])
    assert chat.repl(lambda _prompt: next(lines)) == 0
    first = chat_greedy(storyteller, [{"role": "user", "content": REQUEST}], 9)
    convo = [{"role": "user", "content": REQUEST}, {"role": "assistant", "content": first}]
    second = chat_greedy(storyteller, [*convo, {"role": "user", "content": "Give it a happy ending."}], 9)
    third = chat_greedy(storyteller, [*convo, {"role": "user", "content": "Call the cat Max."}], 9)
    shown = f"you: {REQUEST}\nstoryteller: {first}\nyou: Call the cat Max.\nstoryteller: {third}\n"
    story = "Once upon a time" + "".join(kvcache.generate_stream(
        model, tok, [eot_id(tok), *encode_ordinary(tok, "Once upon a time")], 9, temperature=0.0))
    assert out.getvalue() == f"{first}\n{second}\n{third}\n{shown}{story}\n", out.getvalue()
    assert "(story mode)" in err.getvalue() and "storyteller: " not in err.getvalue()


def test_a_workspace_without_chapter_14_continues_stories_and_says_why(tmp_path):
    """ch14.lora_merge a stub: `llm101n chat` says in one sentence that chat mode needs it, and tells the story."""
    from grading.exercises import stub_text
    from tests.chat_model import fake_chat_model

    ws = tmp_path / "ws"
    for src in (ROOT / "storylib").rglob("*.py"):
        dest = ws / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(stub_text(src.read_text(), src.relative_to(ROOT), ["ch14.lora_merge"]))
    fake_chat_model(ws / "models")  # the chat model's folder is there: what fails is the learner's merge
    (ws / ".assets").symlink_to(ROOT / ".assets")
    r = run_chat(["--prompt", "Once upon a time", "--max-tokens", "5"], cwd=ws)
    assert r.returncode == 0, r.stderr
    assert ("Chat mode needs Chapter 14: exercise ch14.lora_merge (storylib/lora.py) is not written yet "
            "(`llm101n check ch14`); continuing stories instead.\n") in r.stderr, r.stderr
    assert r.stdout.startswith("Once upon a time") and len(r.stdout) > len("Once upon a time\n"), r.stdout
    assert "Traceback" not in r.stderr
