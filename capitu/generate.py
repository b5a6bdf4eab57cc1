"""`capitu generate`: sampling from a run, with the KV cache.

The prompt is prefilled once into a cache of the model's context length; each new token
then costs one position. When the context is full, the oldest half is dropped and the
remaining half prefilled again (positions restart at 0), so a learned-position model never
sees a position it was not trained on. Models without a cache (Bengio's FFN) recompute
their window of the last n tokens each step.

With `compile=True` decoding takes the fast path of decode.py (gpt-fast's method): a static
cache and a one-token step compiled once per model, batch size and context; the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from capitu.decode import static_decoder
from capitu.errors import UserError
from capitu.models.gpt import ContextTooLong


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
    """CTRL's penalty (Keskar et al. 2019, as HF applies it): the logit of every token already
    in the sequence is divided by `penalty` if positive, multiplied if negative.
    logits (B, V), previous (B, T) token ids."""
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
    number: exact, with one random number per row, where torch.multinomial took 0.34 ms for
    16,384 tokens on CPU (more than the compiled model's whole step). The sums run in float64
    (float32 where the device has none) so that u x total stays below the last token's sum."""
    wide = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(wide).cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=wide)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first token whose sum exceeds u x total
    return index.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def context_length(model) -> int:
    config = model.config
    return config.block_size if config.kind == "gpt" else config.ffn_context


def check_prompt(model, length: int) -> None:
    config = model.config
    if config.kind == "gpt" and config.pos == "learned" and length > config.block_size:
        raise ContextTooLong(f"the prompt has {length} tokens; this model's learned positions stop at "
                             f"{config.block_size}")


@torch.no_grad()
def generate(model, prompt: torch.Tensor, new_tokens: int, sampling: Sampling, seed: int | None = None,
             use_cache: bool = True, stop_token: int | None = None,
             on_tokens: Callable[[torch.Tensor], None] | None = None, compile: bool = False) -> torch.Tensor:
    """prompt (B, T) token ids -> (B, T + n) with n <= new_tokens new tokens (fewer only
    when every row has produced `stop_token`). `on_tokens` gets each step's (B,) tokens;
    `compile` takes the StaticDecoder path where the model has a KV cache.

    Prompts longer than the context: learned positions raise ContextTooLong, the others
    keep the last tokens of the context."""
    check_prompt(model, prompt.shape[1])
    device = prompt.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    window = context_length(model)
    cached = use_cache and getattr(model, "supports_kv_cache", False)
    sliding = not getattr(model, "supports_kv_cache", False)  # a window model: the last n tokens
    sequence = prompt
    start = max(0, prompt.shape[1] - window)  # first token the model sees
    decoder = static_decoder(model, prompt.shape[0], window) if compile and cached else None
    cache = model.new_cache(prompt.shape[0], window) if cached and decoder is None else None
    pending = sequence[:, start:]  # tokens not yet in the cache
    filled = 0  # positions in the cache (the static decoder's position)
    position = torch.zeros((), dtype=torch.long, device=device)  # the step's input, set on the device
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=device)
    for _ in range(new_tokens):
        if decoder is not None:
            if pending.shape[1] > 1 or filled == 0:
                last = decoder.prefill(pending, filled)
            else:  # fill_ queues a write; torch.tensor(filled, device=...) would wait for the GPU each token
                last = decoder.step(pending, position.fill_(filled))
            filled += pending.shape[1]
        elif cached:
            last = model(pending, cache=cache, last_only=True)[0][:, -1]
        else:
            last = model(sequence[:, -window:] if sliding else sequence[:, start:], last_only=True)[0][:, -1]
        token = next_tokens(last, sequence, sampling, generator)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if on_tokens is not None:
            on_tokens(token)
        if stop_token is not None:
            done |= token == stop_token
            if bool(done.all()):
                break
        pending = token[:, None]
        if not sliding and sequence.shape[1] - start > window:  # context full: keep its newer half
            start = sequence.shape[1] - window // 2
            if cached:
                filled = 0
                if cache is not None:
                    cache.reset()
                pending = sequence[:, start:]
    return sequence


class TextStream:
    """Turns a growing list of token ids into printable text pieces. A byte-level token can
    end in the middle of a UTF-8 character (an accent): such text is held back until the
    character is complete."""

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
    """The model on `device` in eval mode; on CUDA in bf16, and so its KV cache."""
    model = model.to(device).eval()
    return model.to(dtype=torch.bfloat16) if device.type == "cuda" else model


def load_for_generation(run, device: torch.device):
    """(model, tokenizer) of a run or model folder, ready to generate on `device`."""
    from capitu.checkpoint import TOKENIZER, load_model
    from capitu.tokenizer import load_tokenizer

    model = for_generation(load_model(run, device)[0], device)
    if not (run / TOKENIZER).is_file():
        raise UserError(f"{run} has no {TOKENIZER}; cannot turn text into tokens")
    return model, load_tokenizer(run / TOKENIZER)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt is read as the start of a document: end-of-text, then its tokens (as in the
    training data, where every document follows an end-of-text)."""
    return [tokenizer.eot_id] + tokenizer.encode(prompt)


def complete(model, tokenizer, prompt: str, new_tokens: int, sampling: Sampling, seed: int | None,
             write: Callable[[str], None] | None = None, compile: bool = False) -> str:
    """The prompt and its continuation up to the first end-of-text, as text; `write` gets the
    continuation piece by piece as it is generated."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
    continuation: list[int] = []
    stream = TextStream(tokenizer, write) if write else None

    def collect(token: torch.Tensor) -> None:
        value = int(token[0])
        if value != tokenizer.eot_id:
            continuation.append(value)
            if stream:
                stream.add(value)

    generate(model, ids, new_tokens, sampling, seed, stop_token=tokenizer.eot_id, on_tokens=collect, compile=compile)
    if stream:
        stream.finish()
    return tokenizer.decode(ids[0, 1:].tolist() + continuation)


def compare(runs: list, prompts: list[str], new_tokens: int, sampling: Sampling, seed: int,
            device: torch.device, compile: bool = False) -> list[dict]:
    """Every run's completion of every prompt, same seed: [{"prompt", "outputs": {run: text}}]."""
    results = [{"prompt": prompt, "outputs": {}} for prompt in prompts]
    for run in runs:
        model, tokenizer = load_for_generation(run, device)
        for entry in results:
            entry["outputs"][str(run)] = complete(model, tokenizer, entry["prompt"], new_tokens, sampling, seed,
                                                    compile=compile)
    return results


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown_grid(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, the rule, one line per row."""
    lines = ["| " + " | ".join(map(markdown_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(results: list[dict]) -> str:
    """One table per prompt: a column per run, its text in the cell."""
    blocks = []
    for entry in results:
        runs = list(entry["outputs"])
        table = markdown_grid(runs, [[entry["outputs"][r] for r in runs]])
        blocks.append(f"**Prompt:** {markdown_cell(entry['prompt']) or '(empty: from end-of-text)'}\n\n{table}")
    return "\n\n".join(blocks)


def read_prompts(path) -> list[str]:
    """One prompt per line; blank lines are skipped (an empty prompt is given with --prompt '')."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read prompts from {path}: {error}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts
