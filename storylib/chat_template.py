"""Chapter 11 — the chat template: a conversation as one token sequence, and which of its tokens to learn.

Chapters 12, 14, 15 and 16 use it; its specials are `storylib.tokenizer.STORY_SPECIALS`.

    <|endoftext|> [<|system|> text <|end|>] (<|user|> text <|end|> <|assistant|> text <|end|>)*

    check_conversation  is a list of messages well formed: [system], user, assistant, user, ...
    chat_text           the template as text, specials written out (for reading)
    render_chat         the template as ids, and a loss mask on the assistant's tokens     (exercise ch11.chat_template)
    parse_chat          ids back to messages

No newlines or spaces are added around the specials; each text is encoded with encode_ordinary, so text that
merely looks like a special token (typed by a user, say) stays ordinary text. A generation prompt
(add_generation_prompt=True) is the rendering of the conversation so far (ending with a user turn) followed by
`<|assistant|>`; the model then writes the reply and ends it with `<|end|>`, where generation stops. The loss
mask is 1 exactly on the tokens of assistant texts and on the `<|end|>` that closes each assistant turn (the
model must learn to stop), 0 on everything else (`<|endoftext|>`, the role tokens, system and user text).
Chapter 14 trains on (ids[:-1] -> ids[1:]) with mask[1:] as the weight of each target.
"""

from __future__ import annotations

from collections.abc import Sequence

from storylib.fastbpe import encode_ordinary
from storylib.tokenizer import EOT_TOKEN, RegexTokenizer

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
CHAT_SPECIALS = (EOT_TOKEN, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def check_conversation(messages: Sequence[dict], add_generation_prompt: bool = False) -> None:
    """Raise ValueError unless messages follow the template: an optional system message first, then turns
    that alternate user, assistant, user, ... starting with user; contents are strings. With
    add_generation_prompt the last message must be a user's."""
    roles = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLE_TOKENS or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': system|user|assistant, 'content': str}}, got {m!r}")
        roles.append(m["role"])
    turns = roles[1:] if roles[:1] == ["system"] else roles
    for i, r in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if r != want:
            raise ValueError(f"roles must be [system], user, assistant, user, ...; got {roles}")
    if add_generation_prompt and (not turns or turns[-1] != "user"):
        raise ValueError("a generation prompt needs a conversation that ends with a user message")


def chat_text(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The template as text, specials written out: what `render_chat` encodes (for reading, not for encoding
    user text: a user could type "<|end|>")."""
    check_conversation(messages, add_generation_prompt)
    out = EOT_TOKEN + "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}<|end|>" for m in messages)
    return out + ("<|assistant|>" if add_generation_prompt else "")


def render_chat(messages: Sequence[dict], tokenizer: RegexTokenizer,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """A conversation as token ids, with the loss mask Chapter 14 trains with.  (exercise ch11.chat_template)

    ids = [<|endoftext|>], then for each message: its role token (<|system|>, <|user|> or <|assistant|>), the
    ids of its content by encode_ordinary (use `storylib.fastbpe.encode_ordinary(tokenizer, text)`), and <|end|>;
    with add_generation_prompt, one final <|assistant|>. Special ids come from tokenizer.special_tokens.
    mask has one 0/1 per id: 1 on the content ids of assistant messages and on the <|end|> that closes them,
    0 everywhere else. Raises ValueError (see `check_conversation`) for a malformed conversation, or for a
    tokenizer without the CHAT_SPECIALS.
    """
    check_conversation(messages, add_generation_prompt)
    specials = getattr(tokenizer, "special_tokens", {})  # a tiktoken.Encoding has none of ours
    missing = [s for s in CHAT_SPECIALS if s not in specials]
    if missing:
        raise ValueError(f"the tokenizer lacks the chat special tokens {missing}")
    ### BEGIN SOLUTION ch11.chat_template (§11.8, 3 pts): EOT, then role, content, <|end|> per message
    ids = [specials[EOT_TOKEN]]
    mask = [0]
    for m in messages:
        learn = int(m["role"] == "assistant")
        content = encode_ordinary(tokenizer, m["content"])
        ids += [specials[ROLE_TOKENS[m["role"]]], *content, specials["<|end|>"]]
        mask += [0] + [learn] * len(content) + [learn]
    if add_generation_prompt:
        ids.append(specials["<|assistant|>"])
        mask.append(0)
    return ids, mask
    ### END SOLUTION


def parse_chat(ids: Sequence[int], tokenizer: RegexTokenizer) -> list[dict]:
    """The inverse of render_chat: messages from ids (a trailing <|assistant|> with no text is dropped; an
    unfinished last turn, with no <|end|>, keeps the text so far)."""
    specials = tokenizer.special_tokens
    role_of = {specials[tok]: role for role, tok in ROLE_TOKENS.items()}
    end, eot = specials["<|end|>"], specials[EOT_TOKEN]
    out: list[dict] = []
    role, buf = None, []
    for i in ids:
        if i in role_of:
            role, buf = role_of[i], []
        elif i == end and role is not None:
            out.append({"role": role, "content": tokenizer.decode(buf)})
            role, buf = None, []
        elif i != eot and role is not None:
            buf.append(i)
    if role is not None and buf:
        out.append({"role": role, "content": tokenizer.decode(buf)})
    return out
