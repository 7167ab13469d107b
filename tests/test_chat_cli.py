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


# ----------------------------------------------------------------------------- /illustrate (Chapter 17)

DRAWABLE = "Lily kicked her big red ball under the old tree."


@pytest.fixture(scope="module")
def illustrator(tmp_path_factory):
    from tests.illustrator_model import tiny_illustrator

    return tiny_illustrator(tmp_path_factory.mktemp("illustrator") / "illustrator")


def png_pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_repl_illustrate_saves_pictures_and_keeps_the_story(storyteller, illustrator, tmp_path):
    from storylib.illustrate import Illustrator, NothingToDraw, pick_sentence

    out, err = io.StringIO(), io.StringIO()
    model, tok = storyteller
    images = tmp_path / "pictures"
    chat = TerminalChat(StorySession(model, tok, mode="story"), Sampling(temperature=0.0, max_tokens=8), out, err,
                        illustrator=illustrator, images=images)
    lines = iter(["/illustrate", DRAWABLE, "/show", "/illustrate", "/set seed 3", "/illustrate Tom had a big dog.",
                  "/illustrate The end.", "/show", "/quit"])
    assert chat.repl(lambda _prompt: next(lines)) == 0
    story = DRAWABLE + greedy(storyteller, DRAWABLE, 8)
    drawer = Illustrator.load(illustrator)
    first, second = drawer.illustrate(story, seed=0), drawer.illustrate(story, "Tom had a big dog.", seed=3)
    assert first.sentence == pick_sentence(story)
    assert sorted(p.name for p in images.iterdir()) == ["illustration-1.png", "illustration-2.png"]
    for n, picture in enumerate([first, second], 1):
        pixels = png_pixels(images / f"illustration-{n}.png")
        assert pixels.shape == (64, 64, 3), "16 × 16, enlarged 4 times"
        assert (pixels[::4, ::4] == picture.pixels).all(), "the library's picture for this sentence and seed"
        assert (f"{images / f'illustration-{n}.png'}\n  sentence: {picture.sentence}\n"
                f"  caption:  {picture.caption}\n") in out.getvalue()
    with pytest.raises(NothingToDraw) as empty:
        pick_sentence("")
    assert err.getvalue().count(str(empty.value)) == 1, "an empty story: nothing to draw, and the REPL goes on"
    assert "nothing to draw in 'The end.'" in err.getvalue()
    assert out.getvalue().count(story + "\n") == 3, "the story, unchanged by /illustrate (told once, shown twice)"


def test_repl_illustrate_draws_the_last_reply_and_says_when_there_is_no_illustrator(storyteller, illustrator,
                                                                                   tmp_path, monkeypatch):
    from storylib.storyteller import Segment

    out, err = io.StringIO(), io.StringIO()
    model, tok = storyteller
    session = StorySession(model, tok)
    session.add_user(REQUEST)
    session.segments.append(Segment("model", ["Tom saw a big brown dog."]))
    session.add_user("Give it a happy ending.")
    session.segments.append(Segment("model", ["They were happy. The end."]))
    monkeypatch.chdir(tmp_path)  # pictures go to the current folder by default
    chat = TerminalChat(session, Sampling(temperature=0.0, max_tokens=8), out, err, illustrator=tmp_path / "none")
    lines = iter(["/illustrate", "/show", "/quit"])
    assert chat.repl(lambda _prompt: next(lines)) == 0
    assert (f"Illustrate needs the illustrator, and there is none at {tmp_path / 'none'}") in err.getvalue()
    assert out.getvalue() == chat.show() + "\n" and not list(tmp_path.glob("*.png")), "nothing drawn, nothing lost"

    chat.illustrator_folder = illustrator
    assert chat.illustrate() is None and "nothing to draw in this story" in err.getvalue(), "the last reply's"
    assert chat.illustrate("Tom saw a big brown dog.") == Path("illustration-1.png")
    assert png_pixels(tmp_path / "illustration-1.png").shape == (64, 64, 3)


def test_illustrate_from_the_command_line(illustrator, tmp_path):
    """`llm101n chat --illustrator DIR --images DIR`: /illustrate in the REPL writes a PNG and prints the caption."""
    from storylib.illustrate import caption_for

    r = run_chat(["--mode", "story", "--illustrator", str(illustrator), "--images", str(tmp_path / "pics")],
                 input=f"/illustrate {DRAWABLE}\n/help\n/quit\n")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "pics" / "illustration-1.png"
    assert f"{path}\n  sentence: {DRAWABLE}\n  caption:  {caption_for(DRAWABLE)}\n" in r.stdout, r.stdout
    assert png_pixels(path).shape == (64, 64, 3)
    assert r.stderr.count("/illustrate [SENTENCE]") == 2, "the help (at the start and on /help) lists it"
