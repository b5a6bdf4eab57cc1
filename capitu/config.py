"""Typed configuration: dataclasses, TOML presets shipped in the package, dotted overrides.

`load_config("tiny", file, ["model.pos=rope"])` starts from the dataclass defaults, applies
the preset `capitu/presets/tiny.toml`, then a user TOML file, then `--set` overrides. Every
key is checked against the dataclass fields and every value against the field's type."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from capitu.errors import UserError

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_VOCAB_SIZE = 4096  # capitu prepare's BPE vocabulary (benchmarks/tiny_sweep.py: the tiny preset's best)
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")
# every numeric setting declares its range (a class's RANGES): checked before any work
RANGE_CHECKS = {
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, ">= 0"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def check_ranges(section, prefix: str) -> None:
    """Each field named in `section.RANGES` against its declared range, or a UserError that
    names the key, the value and the range."""
    for name, kind in section.RANGES.items():
        value = getattr(section, name)
        accepts, words = RANGE_CHECKS[kind]
        if not accepts(value):
            raise UserError(f"{prefix}.{name} must be {words}, got {value}")
MODEL_KINDS = ("gpt", "ffn")
LAYER_NORM_EPS, RMS_EPS = 1e-5, 1e-6  # GPT-2's and Llama 2's


@dataclass
class ModelConfig:
    kind: str = "gpt"  # gpt, or ffn (Bengio et al. 2003)
    vocab_size: int = 0  # 0: taken from the data's tokenizer
    block_size: int = 256  # training context length
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0: n_head (multi-head); 1: multi-query; in between: grouped-query
    n_embd: int = 128
    pos: str = "learned"
    rope_base: float = 10000.0
    mlp_ratio: float = 4.0
    mlp_hidden: int = 0  # 0: mlp_ratio * n_embd (swiglu: 2/3 of it, to keep the parameter count)
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    # the modern recipe, one knob each (GPT-2's choice first)
    norm: str = "layernorm"  # layernorm, or rmsnorm (with a learned gain, as Llama)
    norm_eps: float = 0.0  # 0: the norm's usual epsilon (LayerNorm 1e-5 as GPT-2, RMSNorm 1e-6 as Llama 2)
    mlp: str = "gelu"  # gelu (tanh, GPT-2), relu2 (squared ReLU, Primer), swiglu (gated SiLU, Llama)
    qk_norm: bool = False  # RMS-normalise queries and keys per head (no gain) before attention
    logit_softcap: float = 0.0  # C * tanh(logits / C) on the output logits; 0: off
    zero_init_proj: bool = False  # attention and MLP output projections start at zero
    ffn_context: int = 5  # Bengio's n: tokens the feed-forward model sees
    ffn_hidden: int = 512
    ffn_direct: bool = True  # Bengio's direct connections from the embeddings to the output
    RANGES: ClassVar[dict[str, str]] = {
        "vocab_size": "non-negative", "block_size": "positive", "n_layer": "positive", "n_head": "positive",
        "n_kv_head": "non-negative", "n_embd": "positive", "rope_base": "positive", "mlp_ratio": "positive",
        "mlp_hidden": "non-negative", "dropout": "fraction", "ffn_context": "positive", "ffn_hidden": "positive",
        "logit_softcap": "non-negative", "norm_eps": "non-negative",
    }

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def eps(self) -> float:
        """The norms' epsilon (what `hf.py` exports as layer_norm_epsilon or rms_norm_eps)."""
        return self.norm_eps or (RMS_EPS if self.norm == "rmsnorm" else LAYER_NORM_EPS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # three matrices where GELU has two: 2/3 the width, rounded up to 8
            return 8 * math.ceil(self.mlp_ratio * self.n_embd * 2 / 3 / 8)
        return int(round(self.mlp_ratio * self.n_embd))

    def validate(self, building: bool = False) -> None:
        """Check every field; `building` a model also needs the vocabulary size."""
        check_ranges(self, "model")
        if building and self.vocab_size < 1:
            raise UserError("model.vocab_size must be set (it comes from the data's tokenizer)")
        if self.kind not in MODEL_KINDS:
            raise UserError(f"model.kind must be one of {', '.join(MODEL_KINDS)}, got '{self.kind}'")
        for key, choices in (("pos", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, key) not in choices:
                raise UserError(f"model.{key} must be one of {', '.join(choices)}, got '{getattr(self, key)}'")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise UserError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})")
        if self.pos == "rope" and self.head_dim % 2:
            raise UserError(f"rope needs an even head size, got {self.head_dim}")


def check_type(value, kind, key: str):
    """`value` as the field's type (ints are accepted for floats), or a UserError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and type(value) is kind:
        return value
    if typing.get_origin(kind) in (list, dict) and isinstance(value, typing.get_origin(kind)):
        return value
    raise UserError(f"{key} must be of type {getattr(kind, '__name__', kind)}, got {value!r}")


def parse_value(text: str):
    """A `--set` value as TOML reads it (numbers, booleans, quoted strings); else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply(target, values: dict, prefix: str = "") -> None:
    """Set nested dataclass fields from a dict, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"unknown config key '{name}' (known: {', '.join(prefix + f for f in fields)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{name} is a section; set its keys, e.g. {name}.{dataclasses.fields(current)[0].name}")
            apply(current, value, f"{name}.")
        else:
            setattr(target, key, check_type(value, hints[key], name))


def overrides_to_dict(overrides: list[str]) -> dict:
    nested: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got '{item}'")
        *parents, leaf = key.strip().split(".")
        level = nested
        for parent in parents:
            level = level.setdefault(parent, {})
        level[leaf] = parse_value(text.strip())
    return nested


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: invalid TOML: {error}") from None


def preset_names() -> list[str]:
    """The model presets (presets/*.toml; the grids and study settings are in subfolders)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_layers(config, preset: str | None, file: Path | None, overrides: list[str]):
    """Apply preset, file and overrides, in that order, onto `config`."""
    if preset:
        if preset not in preset_names():
            raise UserError(f"unknown preset '{preset}' (known: {', '.join(preset_names())})")
        apply(config, read_toml(PRESETS_DIR / f"{preset}.toml"))
    if file:
        apply(config, read_toml(file))
    apply(config, overrides_to_dict(overrides))
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    config = cls()
    apply(config, values)
    return config


OPTIMIZERS = ("adamw", "muon")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw, or muon: Muon for the hidden matrices, AdamW for the rest
    lr: float = 1e-3  # peak learning rate (AdamW's)
    muon_lr: float = 1e-3  # Muon's peak learning rate, on AdamW's scale (RMS-matched updates)
    muon_momentum: float = 0.95
    min_lr_ratio: float = 0.1  # cosine decay floor, as a share of lr
    warmup_steps: int = 50
    weight_decay: float = 0.1  # weight matrices only; never biases, norms or gains
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping
    batch_tokens: int = 8192  # tokens per optimizer step, over micro-batches and processes
    micro_batch: int = 16  # sequences per forward pass
    RANGES: ClassVar[dict[str, str]] = {
        "lr": "positive", "muon_lr": "positive", "muon_momentum": "fraction", "min_lr_ratio": "unit",
        "warmup_steps": "non-negative", "weight_decay": "non-negative", "beta1": "fraction", "beta2": "fraction",
        "eps": "positive", "grad_clip": "non-negative", "batch_tokens": "positive", "micro_batch": "positive",
    }

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise UserError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got '{self.name}'")
        check_ranges(self, "optim")


@dataclass
class DataConfig:
    path: str = ""  # a folder made by `capitu prepare`


@dataclass
class RunConfig:
    tokens: int = 0  # budget in training tokens (0: none)
    steps: int = 0  # budget in optimizer steps (0: none)
    time: float = 0.0  # budget in seconds of training (0: none)
    seed: int = 1337
    device: str = "auto"  # auto (cuda, mps, cpu), or a torch device name
    dtype: str = "auto"  # auto: bf16 where native (CUDA >= 8.0, AVX-512 BF16/AMX), fp16 on older CUDA, else fp32
    compile: bool = False
    eval_every: int = 100  # steps between validations
    eval_windows: int = 32  # validation windows, the same ones every time
    log_every: int = 10
    checkpoint_every: int = 200
    RANGES: ClassVar[dict[str, str]] = {
        "tokens": "non-negative", "steps": "non-negative", "time": "non-negative", "seed": "non-negative",
        "eval_every": "positive", "eval_windows": "positive", "log_every": "positive", "checkpoint_every": "positive",
    }

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"run.dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        check_ranges(self, "run")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        self.model.validate()
        self.optim.validate()
        self.run.validate()


def load_config(preset: str | None = None, file: Path | None = None, overrides: list[str] = ()) -> Config:
    config = load_layers(Config(), preset, file, list(overrides))
    config.validate()
    return config
