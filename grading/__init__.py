"""LLM101n course tooling: exercise markers, release, checks, honesty gate and the nbgrader class."""
