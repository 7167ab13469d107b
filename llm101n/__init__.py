"""The course's command line, `llm101n` (see `llm101n.cli`); the grader it calls lives in `grading/`."""
