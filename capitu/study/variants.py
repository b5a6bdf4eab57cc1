"""Named model variants (a shipped grid, `capitu/presets/grids/NAME.toml`, or a user's grid
file) applied to a preset."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from capitu.config import PRESETS_DIR, Config, apply, overrides_to_dict, read_toml
from capitu.errors import UserError
from capitu.models import build_model


@dataclass
class Variant:
    name: str
    set: list[str] = field(default_factory=list)
    kv_divisor: int = 0
    widen: bool = False
    parent: str = ""  # a ladder rung: the variant it adds one change to (and inherits from)


GRIDS_DIR = PRESETS_DIR / "grids"


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def load_grid(grid: str | Path = "full") -> list[Variant]:
    """A shipped grid by name (`full`: all eleven variants; `core`: the default study's;
    `ladder`: GPT-2 to the modern recipe, one change per rung), or a TOML file of `[[variant]]`s."""
    shipped = GRIDS_DIR / f"{grid}.toml"
    if str(grid) in grid_names():
        return parse_grid(read_toml(shipped))
    if not Path(grid).is_file():
        raise UserError(f"grid '{grid}' is neither a shipped grid ({', '.join(grid_names())}) nor a file")
    return parse_grid(read_toml(Path(grid)))


def parse_grid(content: dict) -> list[Variant]:
    """The `[[variant]]` entries of a TOML document; a variant with a `parent` (named above
    it) inherits the parent's changes before its own."""
    variants: list[Variant] = []
    for entry in content.get("variant", []):
        try:
            variant = Variant(**entry)
        except TypeError as error:
            raise UserError(f"grid entry {entry.get('name', '?')}: {error}") from None
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", variant.name):
            raise UserError(f"variant name '{variant.name}': use letters, digits, '-', '_' and '.' (it names folders)")
        if variant.parent:
            parent = next((v for v in variants if v.name == variant.parent), None)
            if parent is None:
                raise UserError(f"variant {variant.name}: parent '{variant.parent}' is not a variant above it")
            variant.set = [*parent.set, *variant.set]
            variant.kv_divisor = variant.kv_divisor or parent.kv_divisor
            variant.widen = variant.widen or parent.widen
        variants.append(variant)
    if not variants or len({v.name for v in variants}) != len(variants):
        raise UserError("a grid needs at least one [[variant]], with distinct names")
    return variants


def widen_to_match(config: Config, target_params: int) -> None:
    """Set model.mlp_hidden so that the model has about `target_params` parameters: each MLP
    hidden unit costs 2 * n_embd weights (+1 bias) in every layer (SwiGLU: 3, +2)."""
    current = build_model(config.model).num_params()
    matrices = 3 if config.model.mlp == "swiglu" else 2  # SwiGLU's gate and up both grow
    per_unit = config.model.n_layer * (matrices * config.model.n_embd + int(config.model.bias) * (matrices - 1))
    config.model.mlp_hidden = config.model.hidden + round((target_params - current) / per_unit)


def variant_config(base: Config, variant: Variant) -> Config:
    """The base config with the variant's changes; `base.model.vocab_size` must be set."""
    config = copy.deepcopy(base)
    apply(config, overrides_to_dict(variant.set))
    if variant.kv_divisor:
        if config.model.n_head % variant.kv_divisor:
            raise UserError(f"variant {variant.name}: n_head {config.model.n_head} not divisible by "
                            f"{variant.kv_divisor}")
        config.model.n_kv_head = config.model.n_head // variant.kv_divisor
    config.model.validate()
    if variant.widen:
        widen_to_match(config, build_model(base.model).num_params())
    return config
