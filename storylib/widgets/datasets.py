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

import anywidget
import traitlets

from storylib.widgets._dom import DOM_JS

_ESM = r"""

function render({ model, el: host }) {
  const root = el("div", { class: "lm-root", "data-testid": "loss-mask-view" }, host);
  const examples = model.get("examples");   // [{title, labels, ids, mask, parts}]
  const bar = el("div", { class: "lm-bar" }, root);
  const pick = el("select", { "data-testid": "lm-select" }, bar);
  examples.forEach((ex, i) => el("option", { value: String(i) }, pick, ex.title));
  const idsLabel = el("label", {}, bar, " show ids ");
  const idsBox = el("input", { type: "checkbox", "data-testid": "lm-ids" }, idsLabel);
  const onlyLabel = el("label", {}, bar, " learned only ");
  const onlyBox = el("input", { type: "checkbox", "data-testid": "lm-only" }, onlyLabel);
  const legend = el("div", { class: "lm-legend" }, root);
  for (const [part, name] of [["special", "special token"], ["system", "system"], ["user", "user"],
                              ["assistant", "assistant"]]) {
    el("span", { class: `lm-chip lm-${part}` }, legend, name);
  }
  el("span", { class: "lm-chip lm-learn lm-assistant" }, legend, "loss mask = 1");
  const summary = el("div", { class: "lm-summary", "data-testid": "lm-summary" }, root);
  const box = el("div", { class: "lm-tokens" }, root);
  const readout = el("div", { class: "lm-readout", "data-testid": "lm-readout" }, root,
                     "hover over a token to see its id and mask");

  function update() {
    const ex = examples[parseInt(pick.value, 10) || 0];
    const showIds = idsBox.checked, only = onlyBox.checked;
    box.replaceChildren();
    const learned = ex.mask.reduce((a, b) => a + b, 0);
    summary.textContent = `${ex.ids.length} tokens, ${learned} with loss mask 1 ` +
      `(${(100 * learned / ex.ids.length).toFixed(0)}%): the model is trained to predict only those`;
    ex.ids.forEach((id, i) => {
      const cls = `lm-chip lm-${ex.parts[i]}` + (ex.mask[i] ? " lm-learn" : "") +
        (only && !ex.mask[i] ? " lm-dim" : "");
      const chip = el("span", { class: cls, "data-i": String(i) }, box, showIds ? String(id) : ex.labels[i]);
      chip.addEventListener("mouseenter", () => {
        readout.textContent = `position ${i}: id ${id}, “${ex.labels[i]}”, ${ex.parts[i]}, loss mask ${ex.mask[i]}` +
          (ex.mask[i] ? " (a target the model learns)" : " (context only, never a target)");
      });
    });
  }
  pick.addEventListener("change", update);
  idsBox.addEventListener("change", update);
  onlyBox.addEventListener("change", update);
  update();
}
export default { render };
"""

_CSS = """
.lm-root { font-family: system-ui, sans-serif; font-size: 13px; border: 1px solid #ddd; border-radius: 6px;
  padding: 10px; max-width: 900px; }
.lm-bar { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin-bottom: 6px; }
.lm-legend { margin-bottom: 6px; }
.lm-summary { color: #444; margin-bottom: 6px; }
.lm-tokens { font-family: ui-monospace, monospace; line-height: 2.1; }
.lm-chip { display: inline-block; padding: 0 3px; margin: 1px; border-radius: 3px; white-space: pre;
  border: 1px solid transparent; cursor: default; }
.lm-special { background: #e0e0e0; color: #333; }
.lm-system { background: #f3e5f5; }
.lm-user { background: #e3f2fd; }
.lm-assistant { background: #fff3e0; }
.lm-learn { border-color: #e65100; font-weight: 700; }
.lm-dim { opacity: 0.25; }
.lm-readout { margin-top: 6px; color: #333; min-height: 1.4em; }
"""


def token_label(text: str) -> str:
    """How a token's text is shown on its chip: spaces as ␣, newlines as ⏎, tabs as ⇥."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class LossMaskView(anywidget.AnyWidget):
    _esm = DOM_JS + _ESM
    _css = _CSS
    examples = traitlets.List().tag(sync=True)

    @classmethod
    def from_chats(cls, chats: Sequence[Sequence[dict]], tokenizer, titles: Sequence[str] | None = None,
                   add_generation_prompt: bool = False) -> LossMaskView:
        """Render each conversation with `storylib.datasets.render_chat` and show its tokens and mask."""
        from storylib.datasets import ROLE_TOKENS, render_chat

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
