"""storylib — the storyteller you build in LLM101n, one chapter at a time.

In the course repository this is the reference implementation; in a learner workspace
(`llm101n start`) it is the learner's own copy, with every exercise region stubbed.
"""

__version__ = "0.1.0"
