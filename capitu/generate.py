"""`capitu generate`: sampling from a run, one loop for every model.

The prompt is prefilled once into a decoder (decode.py: a KV cache of the model's context, or
the FFN's window); each new token then costs one step, compiled or eager: the same tokens."""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from capitu.decode import make_decoder
from capitu.errors import UserError
from capitu.models.gpt import ContextTooLong

# prompts that open a Machado-like page: the study's samples, the page's writing numbers
PROMPTS = ["Capitu tinha olhos de", "Era uma vez um rapaz que", "A cidade do Rio de Janeiro", "Naquele tempo, o amor"]


@dataclass
class Sampling:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # 1: none; >1 makes tokens already present less likely

    def validate(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"--temperature must be 0 (greedy) or positive, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise UserError(f"--repetition-penalty must be positive, got {self.repetition_penalty}")


def penalize_repetition(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019, as HF applies it): the logit of every token already in the sequence is
    divided by `penalty` if positive, multiplied if negative. logits (B, V), previous (B, T) token ids."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.size(-1):
        return logits
    threshold = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the most likely tokens whose probabilities
    sum to at least p: a token is kept if the tokens more likely than it sum to less than p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly ahead of each token
    drop_sorted = before >= p
    drop_sorted[..., 0] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, previous: torch.Tensor, sampling: Sampling,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) of the last position -> next token ids (B,)."""
    logits = penalize_repetition(logits.float(), previous, sampling.repetition_penalty)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = keep_top_p(keep_top_k(logits / sampling.temperature, sampling.top_k), sampling.top_p)
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V), by inverting the cumulative distribution at a uniform
    number: exact, with one random number per row, where torch.multinomial cost more than the
    compiled model's whole step (docs/measurements.md). The sums run in float64 (float32 where
    the device has none) so that u x total stays below the last token's sum."""
    wide = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(wide).cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=wide)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first token whose sum exceeds u x total
    return index.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def next_logits(decoder, sequence: torch.Tensor, token: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
    """Logits after `token` (B,), the last of `sequence`, whose tokens from `start` on, that one excepted, are in
    the decoder; and the new `start`. When the context is full, its older half is dropped and the newer half
    prefilled again from position 0, so a learned-position model never sees a position it was not trained on."""
    filled = sequence.shape[1] - 1 - start  # positions held; the last token goes to this one
    if decoder.window and filled == decoder.window:
        start = sequence.shape[1] - decoder.window // 2
        return decoder.prefill(sequence[:, start:], 0), start
    return decoder.step(token[:, None], filled), start  # (B, 1) with the same strides at every step


@torch.no_grad()
def generate(decoder, prompt: torch.Tensor, new_tokens: int, sampling: Sampling, seed: int | None = None,
             stop_token: int | None = None, on_tokens: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """prompt (B, T) token ids -> (B, T + n) with n <= new_tokens new tokens (fewer only when every row has produced
    `stop_token`), through a decoder of decode.py made for B sequences. `on_tokens` gets each step's (B,) tokens.

    Prompts longer than the context: learned positions raise ContextTooLong, the others keep the last tokens of the
    context."""
    config = decoder.model.config
    if config.kind == "gpt" and config.pos == "learned" and prompt.shape[1] > config.block_size:
        raise ContextTooLong(f"the prompt has {prompt.shape[1]} tokens; this model's learned positions stop at "
                             f"{config.block_size}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device)
        generator.manual_seed(seed)
    sequence = prompt
    start = max(0, prompt.shape[1] - decoder.window) if decoder.window else 0  # first token the model sees
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    logits = decoder.prefill(sequence[:, start:], 0)
    for made in range(1, new_tokens + 1):
        token = next_tokens(logits, sequence, sampling, generator)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if on_tokens is not None:
            on_tokens(token)
        if stop_token is not None:
            done |= token == stop_token
            if bool(done.all()):
                break
        if made < new_tokens:
            logits, start = next_logits(decoder, sequence, token, start)
    return sequence


class TextStream:
    """Turns a growing list of token ids into printable text pieces. A byte-level token can end in the middle of a
    UTF-8 character (an accent): such text is held back until the character is complete."""

    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.printed = 0

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.write(text[self.printed:])
            self.printed = len(text)

    def finish(self) -> None:
        """Write what is still held back: generation can stop inside a character."""
        text = self.tokenizer.decode(self.ids)
        if len(text) > self.printed:
            self.write(text[self.printed:])
            self.printed = len(text)


def for_generation(model, device: torch.device):
    """The model on `device` in eval mode; on CUDA in bf16 where the card has it natively, else float16 (and so its
    KV cache)."""
    from capitu.device import inference_dtype

    return model.to(device, dtype=inference_dtype(device)).eval()


def load_for_generation(run, device: torch.device, compile: bool = True):
    """(decoder for one sequence, tokenizer) of a run or model folder, ready on `device`."""
    from capitu.checkpoint import load_model
    from capitu.folders import RunFolder
    from capitu.tokenizer import load_tokenizer

    model, tokenizer = for_generation(load_model(run, device)[0], device), RunFolder(run).tokenizer_path
    if not tokenizer.is_file():
        raise UserError(f"{run} has no {tokenizer.name}; cannot turn text into tokens")
    return make_decoder(model, 1, compile), load_tokenizer(tokenizer)


def as_trained(prompt: str) -> str:
    """A prompt in the training text's Unicode form, NFC: typed or pasted as NFD, a "ç" is a "c"
    and a combining cedilla, which the model has hardly seen."""
    return unicodedata.normalize("NFC", prompt)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt is read as the start of a document: end-of-text, then its tokens (as in the
    training data, where every document follows an end-of-text), in the training text's form."""
    return [tokenizer.eot_id] + tokenizer.encode(as_trained(prompt))


def complete(decoder, tokenizer, prompt: str, new_tokens: int, sampling: Sampling, seed: int | None,
             write: Callable[[str], None] | None = None) -> str:
    """The prompt and its continuation up to the first end-of-text, as text, from a decoder
    for one sequence; `write` gets the continuation piece by piece as it is generated."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=decoder.device)
    continuation: list[int] = []
    stream = TextStream(tokenizer, write) if write else None

    def collect(token: torch.Tensor) -> None:
        value = int(token[0])
        if value != tokenizer.eot_id:
            continuation.append(value)
            if stream:
                stream.add(value)

    generate(decoder, ids, new_tokens, sampling, seed, stop_token=tokenizer.eot_id, on_tokens=collect)
    if stream:
        stream.finish()
    return tokenizer.decode(ids[0, 1:].tolist() + continuation)


def compare(runs: list, prompts: list[str], new_tokens: int, sampling: Sampling, seed: int,
            device: torch.device, compile: bool = False) -> list[dict]:
    """Every run's completion of every prompt, same seed: [{"prompt", "outputs": {run: text}}]."""
    results = [{"prompt": prompt, "outputs": {}} for prompt in prompts]
    for run in runs:
        decoder, tokenizer = load_for_generation(run, device, compile)
        for entry in results:
            entry["outputs"][str(run)] = complete(decoder, tokenizer, entry["prompt"], new_tokens, sampling, seed)
    return results


def run_labels(runs: list) -> list[str]:
    """Each run's (or study's) path from the folder they share (baseline-s1337, rope-s1337): their headings."""
    if len({Path(run).resolve() for run in runs}) < len(runs):
        raise UserError("a folder is given twice; give each once")
    paths = [Path(os.path.abspath(run)) for run in runs]  # as given: a link keeps its own name
    shared = Path(os.path.commonpath([path.parent for path in paths]))
    return [str(path.relative_to(shared)) for path in paths]


def read_prompts(path) -> list[str]:
    """One prompt per line; blank lines are skipped (an empty prompt is given with --prompt '')."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark (Notepad's) is not a prompt
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read prompts from {path}: {error}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts
