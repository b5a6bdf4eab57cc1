"""HF transformers' GPT-2 beside capitu's, called the way capitu's models are, so that the
benchmarks race both through the trainer's own step (capitu.train.trainer.optimizer_step)."""

import torch
import torch.nn.functional as F
import transformers

from capitu.hf import gpt2_config


def hf_twin(config):
    """GPT2LMHeadModel of the same shape (capitu's export mapping), its own random weights."""
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_config(config)))


class LogitsThenLoss(torch.nn.Module):
    """A model whose logits are materialised, then F.cross_entropy: (x, y) -> (None, mean loss),
    as capitu's models answer. Wraps HF's model (`hf=True`) or a capitu model (no fused loss)."""

    def __init__(self, model, hf: bool = False):
        super().__init__()
        self.model, self.hf = model, hf

    def forward(self, idx, targets):
        logits = self.model(input_ids=idx).logits if self.hf else self.model(idx)[0]
        return None, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
