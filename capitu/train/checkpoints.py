"""Crash-consistent training checkpoints.

A checkpoint is a folder, `RUN/checkpoints/step-00000200/`, with everything a resume needs: the weights
(`model.safetensors`) and `config.json` (which names the step), the training state (`train_state.pt`: optimizer,
sampler, RNG, step, tokens) and `manifest.json` (the step, the tokens and every part's size). It is built under a
temporary name, flushed to disk and renamed: whenever the process dies (SIGKILL, OOM, power cut), a checkpoint is
there whole or not at all. Resume takes the newest checkpoint whose parts agree with its manifest and with each
other, and says so when it falls back to an older one; the last `KEEP` are kept.

The run folder's own `model.safetensors` and `config.json` (what eval, generate, export and bench read) are then
pointed at the new checkpoint's files (hard links, or copies where the file system has none), weights first; resume
puts them back in step with the checkpoint it continues from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from capitu.checkpoint import CONFIG, WEIGHTS, save_model
from capitu.errors import UserError, warn
from capitu.paths import atomic_write_json, clean_leftovers, fsync_file, fsync_folder, staged_folder, temporary_name

CHECKPOINTS = "checkpoints"
STATE = "train_state.pt"
MANIFEST = "manifest.json"
CHECKPOINT_FORMAT = "capitu-checkpoint/1"
KEEP = 2


def checkpoint_folders(run: Path) -> list[Path]:
    """The run's committed checkpoints, newest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def save_checkpoint(run: Path, model, state: dict, extra: dict) -> Path:
    """Commit a checkpoint of `model` and the training `state` (which holds "step" and
    "tokens"); `extra` goes into its config.json. Returns its folder."""
    step = state["step"]
    folder = Path(run) / CHECKPOINTS / f"step-{step:08d}"
    with staged_folder(folder) as staging:
        save_model(staging, model, {**extra, "step": step, "tokens": state["tokens"]})
        torch.save(state, staging / STATE)
        parts = {path.name: path.stat().st_size for path in sorted(staging.iterdir())}
        atomic_write_json(staging / MANIFEST, {"format": CHECKPOINT_FORMAT, "step": step, "tokens": state["tokens"],
                                               "parts": parts})
    publish(run, folder)
    for old in checkpoint_folders(run)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def publish(run: Path, folder: Path) -> None:
    """Point the run's model files at the checkpoint `folder`'s."""
    for name in (WEIGHTS, CONFIG):
        partial = temporary_name(Path(run) / name)
        partial.unlink(missing_ok=True)
        try:
            os.link(folder / name, partial)
        except OSError:
            shutil.copyfile(folder / name, partial)
            fsync_file(partial)
        partial.replace(Path(run) / name)
    fsync_folder(Path(run))


def problem_with(folder: Path) -> tuple[str | None, dict | None]:
    """(what is wrong with the checkpoint `folder`, None) or (None, its training state)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        step = manifest["step"]
        parts = dict(manifest["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST}", None
    for name in (WEIGHTS, CONFIG, STATE):
        if name not in parts:
            return f"{MANIFEST} lists no {name}", None
    for name, size in parts.items():
        actual = (folder / name).stat().st_size if (folder / name).is_file() else None
        if actual != size:
            return f"{name} is {actual} bytes where {MANIFEST} says {size}", None
    try:
        config_step = json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("step")
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file fails in many ways
        return f"unreadable: {str(error).splitlines()[0] if str(error) else type(error).__name__}", None
    if not isinstance(state, dict) or state.get("step") != step or config_step != step:
        found = state.get("step") if isinstance(state, dict) else None
        return f"parts of different steps ({MANIFEST} {step}, {CONFIG} {config_step}, {STATE} {found})", None
    return None, state


def load_checkpoint(run: Path, repair: bool = True, accept=None) -> tuple[Path, dict]:
    """The newest complete checkpoint of `run` and its training state. `accept(folder)`, if given,
    may refuse it (a UserError) before anything is written. With `repair` (the one process that
    writes), what a killed save left behind is then removed, and the run's model files are put
    back in step with the checkpoint."""
    run = Path(run)
    skipped = []
    for folder in checkpoint_folders(run):
        problem, state = problem_with(folder)
        if problem is None:
            if accept:
                accept(folder)
            if repair:
                clean_leftovers(run)
                clean_leftovers(run / CHECKPOINTS)
                if skipped:
                    warn(f"{run}: skipped checkpoint {'; '.join(skipped)}; resuming from {folder.name}")
                publish(run, folder)
            return folder, state
        skipped.append(f"{folder.name} ({problem})")
    if skipped:
        raise UserError(f"nothing to resume in {run}: no complete checkpoint: {'; '.join(skipped)}")
    raise UserError(f"nothing to resume in {run}: no checkpoint in {run / CHECKPOINTS}")
