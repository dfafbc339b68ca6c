"""gpt-study: study small GPT language models end to end (prepare, train, evaluate, generate)."""

__version__ = "0.1.0"
