"""The model zoo: one GPT (positions and attention chosen by config) and Bengio's FFN LM."""

from capitu.config import ModelConfig
from capitu.models.ffn import FeedForwardLM
from capitu.models.gpt import GPT, ContextTooLong


def build_model(config: ModelConfig):
    config.validate()
    return GPT(config) if config.kind == "gpt" else FeedForwardLM(config)


__all__ = ["GPT", "FeedForwardLM", "ContextTooLong", "build_model"]
