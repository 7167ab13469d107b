"""The chat model in tests: the real one for the browser tests (create -> refine -> rename, each reply checked by
the rules of storylib.conversations), and a stand-in adapter for tests of the plumbing.

    model, tok = require_chat_model()        # models/storyteller-chat; fails the test, saying so, when missing
    for request, spec in SCENARIO: ...       # the three turns of the issue, and what each reply must do
    fake_chat_model(tmp_path / "models")     # models/storyteller (a link) + storyteller-chat (an adapter of it)
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAT_MODEL = ROOT / "models" / "storyteller-chat"

# The issue's conversation: a story asked for, then changed twice. The specs are storylib.conversations'
# (check_reply): the create turn's words and character; the happy ending asked as a change is checked as a create
# with happy=True (same character and key, and now a happy ending); the rename as a rename.
_CREATE = {"kind": "create", "words": ["key"], "character": "a cat named Tom", "name": "Tom", "character_kind": "cat",
           "dialogue": False, "happy": False, "n_sentences": None, "beginning": False}
SCENARIO = [
    ("Write a story about a cat named Tom who finds a key.", _CREATE),
    ("Give it a happy ending.", {**_CREATE, "happy": True}),
    ("Call the cat Max.", {"kind": "rename", "old": "Tom", "new": "Max"}),
]
# Sampling of the browser tests: greedy, so a reply is the same on every machine (and the one checked here)
GREEDY = {"temperature": 0.0}


def require_chat_model():
    """(model, tokenizer) of models/storyteller-chat, the shipped chat model; fails the test with a clear message
    (never a skip) when it is missing."""
    if not CHAT_MODEL.is_dir():
        pytest.fail(f"{CHAT_MODEL.relative_to(ROOT)} is missing: the chat surfaces' tests need Chapter 14's chat "
                    "model (`llm101n sft` writes it; it ships with the course)", pytrace=False)
    from storylib.sft import load_chat_model

    return load_chat_model(CHAT_MODEL)


# The rules the shipped adapter may break on this conversation, greedy (its model card has the rates over 500
# held-out conversations). Its story has the cat and the key, and a happy ending when asked; its rename brings Max
# in but may leave a "Tom" behind (whether it does depends on the last bits of CPU arithmetic: the web app and the
# lab's widget have been seen to differ). Every other rule must hold.
# the shipped chat model rarely uses every requested word (create_all_words 0.070 on held-out requests,
# models/storyteller-rl/MODEL_CARD.md) and sometimes keeps an old name
ALLOWED_MISSES = ({"all_words"}, {"all_words"}, {"old_gone", "rename_done"})


def check_turn(turn: int, spec: dict, reply: str, previous: str | None) -> None:
    """Assert that `reply` does what its request asked (storylib.conversations.check_reply), but for the rules
    the shipped chat model may break (ALLOWED_MISSES[turn])."""
    from storylib.conversations import check_reply

    result = check_reply(spec, reply, previous)
    failed = {k for k, v in result.items() if v is False and k != "ok"}
    assert failed <= ALLOWED_MISSES[turn], (
        f"turn {turn}: the reply breaks {sorted(failed - ALLOWED_MISSES[turn])} of what {spec} asks:\n{reply}")


def fake_chat_model(models: Path) -> Path:
    """models/storyteller (a link to the course's) and models/storyteller-chat: an adapter of it (storylib.lora,
    small random B: a real adapter that changes the model a little). For tests of the plumbing, not of quality."""
    import torch

    from storylib.checkpoint import load_model
    from storylib.lora import inject_lora, lora_layers, save_adapter

    models.mkdir(parents=True, exist_ok=True)
    (models / "storyteller").symlink_to(ROOT / "models" / "storyteller")
    model, _ = load_model(models / "storyteller")
    inject_lora(model, r=2, alpha=4)
    generator = torch.Generator().manual_seed(0)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_(0, 1e-3, generator=generator)
    return save_adapter(model, models / "storyteller-chat", {"base_model": "models/storyteller"},
                        base_dir=models / "storyteller")
