"""Model checkpoints: `model.safetensors` + `config.json` (+ the data's `tokenizer.json`).

Enough to rebuild, evaluate and generate with no training state. Loading never runs code
from a file: weights come from safetensors, everything else from JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from capitu.config import ModelConfig, from_dict, to_dict
from capitu.errors import UserError
from capitu.folders import RunFolder, StudyFolder
from capitu.models import build_model
from capitu.paths import atomic_write_json, fsync_file, temporary_name

MODEL_FORMAT = "capitu-model/1"
WEIGHTS, CONFIG = RunFolder.WEIGHTS, RunFolder.CONFIG


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied output weight (safetensors stores no shared tensors)."""
    state = model.state_dict()
    if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" in state:
        state.pop("lm_head.weight")
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_model(folder: Path, model: torch.nn.Module, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(folder / WEIGHTS)
    save_file(unique_state_dict(model), str(partial), metadata={"format": MODEL_FORMAT})
    fsync_file(partial)
    partial.replace(folder / WEIGHTS)
    atomic_write_json(folder / CONFIG, {"format": MODEL_FORMAT, "model": to_dict(model.config), **(extra or {})})


def read_config(folder: Path) -> dict:
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        runs = sorted(folder.glob("runs/*/" + CONFIG)) if StudyFolder(folder).plan.is_file() else []
        hint = f"; it holds a study: give one of its runs, such as {runs[0].parent}" if runs else ""
        raise UserError(f"{folder} is not a capitu run or model folder (no {CONFIG}){hint}")
    try:
        content = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{folder / CONFIG}: corrupt: {error}") from None
    if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT \
            or not isinstance(content.get("model"), dict):
        raise UserError(f"{folder / CONFIG}: not a capitu model config")
    try:  # here, so that an edited or damaged file is named, not only the value that is wrong in it
        model_config(content).validate()
    except UserError as error:
        raise UserError(f"{folder / CONFIG}: {error}") from None
    return content


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in the weights file at `path`, from its header alone (nothing is loaded);
    a one-line UserError unless the file opens."""
    try:
        with safe_open(str(path), "pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: corrupt or unreadable weights: {error}") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: corrupt or unreadable weights: {error}") from None


def model_config(content: dict) -> ModelConfig:
    """The ModelConfig of a config.json that read_config accepted."""
    return from_dict(ModelConfig, content["model"])


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a run or model folder; returns (model in eval mode, config.json)."""
    folder = Path(folder)
    content = read_config(folder)
    model = build_model(model_config(content))
    restore_weights(model, folder / WEIGHTS)
    return model.to(device).eval(), content


def state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` from loading into `model`, naming the first missing, unexpected and
    mis-shaped tensors; None when it fits."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [name for name in expected if state.get(name) is None]
    unexpected = [name for name in state if name not in expected]
    misshaped = [f"{name} {tuple(t.shape)} where the config needs {expected[name]}" for name, t in state.items()
                 if name in expected and t is not None and tuple(t.shape) != expected[name]]
    problems = [f"{label} {', '.join(names[:3])}{' and more' if len(names) > 3 else ''}" for label, names
                in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    return "; ".join(problems) or None


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` into `model`, or a one-line UserError naming what does not fit."""
    problem = state_mismatch(model, state)
    if problem:
        raise UserError(f"{source}: weights do not match the config: {problem}")
    model.load_state_dict(state, strict=True)


def restore_weights(model: torch.nn.Module, path: Path) -> None:
    """Load saved weights into `model`, re-tying the output layer that saving left out."""
    state = load_weights(path)
    if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" in model.state_dict():
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    load_state(model, state, path)
