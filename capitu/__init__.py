"""capitu: GPT-2-style language models from scratch, for Portuguese."""

__version__ = "0.1.0"
