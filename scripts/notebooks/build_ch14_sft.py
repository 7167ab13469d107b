"""Build solutions/ch14_sft.ipynb, the nbgrader source notebook of Chapter 14 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch14_sft", title="Chapter 14 — Supervised finetuning: chat data, the masked loss, LoRA")
nb.markdown(
    """
    In this notebook you write the parts of supervised finetuning, in the order of the book: a rule that makes
    refine targets (renaming a character), the masked loss, LoRA (the layer's forward pass, merging, injecting it
    into a model), the SFT batch, and one of the rules that check a reply (the repeated-n-gram rate).

    The cells use a tiny random GPT and a few made-up stories (fast); the graded cells run the package tests of one
    exercise against *your* `storylib`. When all seven pass, `llm101n train configs/sft_cpu.toml` finetunes the
    storyteller with your code, and `llm101n chat` talks to the chat model through your LoRA.
    """
)
nb.code(
    """
    import torch
    import torch.nn.functional as F

    from storylib.chat_template import render_chat
    from storylib.gpt2 import GPT, GPTConfig
    from storylib.tokenizer import storyteller_tokenizer

    tok = storyteller_tokenizer()
    torch.manual_seed(0)
    tiny = GPT(GPTConfig(block_size=64, vocab_size=4160, n_layer=2, n_head=2, n_embd=32)).eval()
    chat = [{"role": "user", "content": "Write a story about a cat named Tom."},
            {"role": "assistant", "content": "Tom the cat found a key. He was happy."},
            {"role": "user", "content": "Call Tom Max instead."},
            {"role": "assistant", "content": "Max the cat found a key. He was happy."}]
    """,
    locked=True,
)
nb.exercise(
    "ch14.rename",
    try_it="""
    print(rename("Tom saw Tommy. Tom's hat was red. \\"Tom!\\" said Mom, eating a tomato.", "Tom", "Max"))
    """,
)
nb.exercise(
    "ch14.masked_loss",
    try_it="""
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    print(masked_cross_entropy(logits, targets, mask))
    print(F.cross_entropy(logits.flatten(0, 1), targets.masked_fill(mask == 0, -100).flatten()))  # the same number
    """,
)
nb.question(
    "ch14_q_targets",
    points=1,
    prompt="""
    A conversation has one user message whose content is 9 tokens and one assistant reply of 25 tokens (no
    system message). `render_chat` turns it into `n_ids` ids; training predicts `ids[1:]` from `ids[:-1]`, and the
    masked loss counts `n_learned` of those targets. Set both (ints).
    """,
    solution="n_ids = 1 + (1 + 9 + 1) + (1 + 25 + 1)\nn_learned = 25 + 1",
    test="""
    assert n_ids == 39, "<|endoftext|>, then role token, content and <|end|> for each message"
    assert n_learned == 26, "the assistant's 25 tokens and the <|end|> that closes its turn"
    """,
)
nb.exercise(
    "ch14.lora_forward",
    try_it="""
    layer = LoRALinear(torch.nn.Linear(12, 7), r=3, alpha=6.0)
    x = torch.randn(4, 12)
    print("at the start (B = 0) the layer is its base:", torch.equal(layer(x), layer.base(x)))
    with torch.no_grad():
        layer.lora_B.normal_()
    print((layer(x) - layer.base(x) - layer.scale * x @ layer.lora_A.T @ layer.lora_B.T).abs().max())
    """,
)
nb.exercise(
    "ch14.lora_merge",
    try_it="""
    layer = LoRALinear(torch.nn.Linear(12, 7), r=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x, w0 = torch.randn(4, 12), layer.base.weight.clone()
    before = layer(x)
    layer.merge()
    print("merged == unmerged:", torch.allclose(layer(x), before, atol=1e-6), layer)
    layer.unmerge()
    print("weight restored:", torch.allclose(layer.base.weight, w0, atol=1e-6))
    """,
)
nb.exercise(
    "ch14.lora_inject",
    try_it="""
    from storylib.lora import count_parameters

    model = GPT(GPTConfig(block_size=64, vocab_size=4160, n_layer=2, n_head=2, n_embd=32))
    names = inject_lora(model, r=4, alpha=8.0)
    print(names)
    print("trainable, total:", count_parameters(model))
    """,
)
nb.question(
    "ch14_q_lora_params",
    points=1,
    prompt="""
    The storyteller's `mlp.c_fc` is a linear layer from 288 to 1,152 features. How many parameters does a LoRA
    adapter of rank 8 on it train? Set `lora_params` (an int).
    """,
    solution="lora_params = 8 * (288 + 1152)",
    test="assert lora_params == 11520, 'A is r x d_in, B is d_out x r'",
)
nb.exercise(
    "ch14.sft_batch",
    try_it="""
    examples = [render_chat(chat, tok), render_chat(chat[:2], tok)]
    x, y = sft_batch(examples, 64, tok.special_tokens["<|pad|>"])
    print(x.shape, y.shape)
    print("targets learned per row:", (y != -100).sum(1).tolist())
    print(y[1])
    """,
)
nb.exercise(
    "ch14.repetition",
    try_it="""
    print(repeated_ngram_rate("She likes to read books and read books and read books and read books."))
    print(repeated_ngram_rate("Once upon a time, there was a cat named Tom who found a shiny key."))
    """,
)
nb.markdown(
    """
    ## What next

    Finetune the storyteller with your code: `llm101n train configs/sft_cpu.toml` (a few minutes on a laptop), then
    talk to the chat model with `llm101n chat`. The book's §14.6 shows what the full run on a GPU reached.
    """
)

if __name__ == "__main__":
    print(nb.write())
