"""A loss-mask viewer for Chapter 11: a conversation rendered with the chat template, token by token.

    from storylib.widgets.datasets import LossMaskView
    LossMaskView.from_chats([chat1, chat2], tokenizer)      # chats: lists of {"role", "content"}

Every token is a chip, coloured by the part of the conversation it belongs to (specials, system, user,
assistant); the tokens the loss mask keeps (the assistant's text and its <|end|>) are outlined and bold.
Hovering a chip shows its position, id, text and mask. "show ids" swaps the text for the ids, "learned
only" greys out everything the model is not trained to predict. All data lives in traits, so the widget
works in the static book, where no Python kernel runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anywidget
import traitlets

from storylib.widgets import front_end


def token_label(text: str) -> str:
    """How a token's text is shown on its chip: spaces as ␣, newlines as ⏎, tabs as ⇥."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class LossMaskView(anywidget.AnyWidget):
    _esm = front_end("datasets")
    _css = Path(__file__).parent / "js" / "datasets.css"
    examples = traitlets.List().tag(sync=True)

    @classmethod
    def from_chats(cls, chats: Sequence[Sequence[dict]], tokenizer, titles: Sequence[str] | None = None,
                   add_generation_prompt: bool = False) -> LossMaskView:
        """Render each conversation with `storylib.chat_template.render_chat` and show its tokens and mask."""
        from storylib.chat_template import ROLE_TOKENS, render_chat

        role_of = {tokenizer.special_tokens[t]: r for r, t in ROLE_TOKENS.items()}
        specials = set(tokenizer.special_tokens.values())
        end = tokenizer.special_tokens["<|end|>"]
        out = []
        for k, chat in enumerate(chats):
            gen = add_generation_prompt and chat[-1]["role"] == "user"
            ids, mask = render_chat(chat, tokenizer, add_generation_prompt=gen)
            parts, role = [], None
            for i in ids:
                if i in specials:
                    parts.append("assistant" if i == end and role == "assistant" else "special")
                    role = role_of.get(i, None if i == end else role)
                else:
                    parts.append(role or "special")
            labels = [token_label(tokenizer.decode([i])) if i not in specials else tokenizer.decode([i]) for i in ids]
            title = titles[k] if titles else f"conversation {k + 1}"
            out.append({"title": title, "labels": labels, "ids": list(ids), "mask": list(mask), "parts": parts})
        return cls(examples=out)
