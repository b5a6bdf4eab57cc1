import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY
from safetensors.torch import load_file

from capitu.config import load_config
from capitu.errors import UserError
from capitu.train.checkpoints import CHECKPOINTS, KEEP, MANIFEST, checkpoint_folders, load_checkpoint
from capitu.train.trainer import train

# runs `capitu train` with torch.save or os.link rigged to SIGKILL the process at the Nth call:
# "state": the Nth checkpoint's training state is half written, then the process dies;
# "publish": the Nth checkpoint is committed, the run's weights point at it, its config not yet
KILLER = """
import os, signal, sys
import torch
from capitu.cli import main
point, when = sys.argv[1], int(sys.argv[2])
calls = {"save": 0, "link": 0}
real_save, real_link = torch.save, os.link
def save(state, path, *args, **kwargs):
    calls["save"] += 1
    real_save(state, path, *args, **kwargs)
    if point == "state" and calls["save"] == when:
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
def link(source, target, *args, **kwargs):
    calls["link"] += 1
    if point == "publish" and calls["link"] == 2 * when:
        os.kill(os.getpid(), signal.SIGKILL)
    real_link(source, target, *args, **kwargs)
torch.save, os.link = save, link
sys.exit(main(sys.argv[3:]))
"""


def train_command(data, run, steps, every, *extra):
    return ["train", "--data", str(data), "--out", str(run), "--steps", str(steps), "--quiet",
            *sum((["--set", s] for s in TINY), []), "--set", f"run.checkpoint_every={every}", *extra]


def capitu(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "capitu", *args], capture_output=True, text=True, cwd=REPO)
    assert not check or result.returncode == 0, result.stderr
    return result


def same_weights(a, b) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def leftovers(run):
    return [p.name for folder in (run, run / CHECKPOINTS) for p in folder.iterdir()
            if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def straight(prepared_char, tmp_path_factory):
    """An uninterrupted 8-step run, checkpointing every 2 steps."""
    run = tmp_path_factory.mktemp("straight") / "run"
    capitu(*train_command(prepared_char, run, 8, 2))
    return run


def test_a_checkpoint_holds_every_part_and_the_last_two_are_kept(straight):
    assert [f.name for f in checkpoint_folders(straight)] == ["step-00000008", "step-00000006"][:KEEP]
    folder = checkpoint_folders(straight)[0]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["step"] == 8 and manifest["tokens"] == 8 * 256
    assert sorted(manifest["parts"]) == ["config.json", "model.safetensors", "train_state.pt"]
    assert all((folder / name).stat().st_size == size for name, size in manifest["parts"].items())
    assert torch.load(folder / "train_state.pt", weights_only=True)["step"] == 8
    for name in ("model.safetensors", "config.json"):  # the run's model is the last checkpoint's
        assert (straight / name).read_bytes() == (folder / name).read_bytes()
    assert json.loads((straight / "config.json").read_text())["step"] == 8
    assert leftovers(straight) == []


@pytest.mark.parametrize("point", ["state", "publish"])
def test_sigkill_while_checkpointing_resumes_bit_identical(point, straight, prepared_char, tmp_path):
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLER, point, "2", *train_command(prepared_char, run, 8, 2)],
                            capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "state":  # step 4 never became a checkpoint: its half-written folder is left over
        assert [f.name for f in checkpoint_folders(run)] == ["step-00000002"] and leftovers(run)
    else:  # step 4 is committed; the run's weights are step 4's, its config.json still step 2's
        assert [f.name for f in checkpoint_folders(run)][0] == "step-00000004"
        assert json.loads((run / "config.json").read_text())["step"] == 2
    resumed = capitu("train", "--out", str(run), "--resume", "--quiet")
    assert "finished at step 8" in resumed.stdout
    assert same_weights(run, straight) and leftovers(run) == []
    assert json.loads((run / "config.json").read_text())["step"] == 8
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the steps after the checkpoint were logged once, on resume


def newest_step(run) -> int:
    folders = checkpoint_folders(run)
    return int(folders[0].name[5:]) if folders else 0


def test_sigkill_at_random_moments_never_loses_the_run(straight, prepared_char, tmp_path):
    """The real thing: SIGKILL from outside at a random moment after each new checkpoint of a
    run that checkpoints every step (most of its time is spent saving), three times; each resume
    goes on from the last complete checkpoint, and the end is bit-identical to the straight run
    (which checkpointed every 2 steps: saving changes nothing)."""
    run, chooser = tmp_path / "run", random.Random(11)
    command = [sys.executable, "-m", "capitu", *train_command(prepared_char, run, 8, 1)]
    kills = 0
    for _ in range(3):
        before = newest_step(run)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        deadline = time.monotonic() + 60
        while newest_step(run) == before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(chooser.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), err
        kills += process.returncode == -signal.SIGKILL
        command = [sys.executable, "-m", "capitu", "train", "--out", str(run), "--resume", "--quiet"]
    assert kills >= 2
    capitu(*command[3:])
    assert same_weights(run, straight) and leftovers(run) == []


def test_resume_falls_back_past_a_damaged_checkpoint(straight, tmp_path, caplog):
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(straight), str(run)], check=True)
    newest, older = checkpoint_folders(run)
    (newest / "model.safetensors").write_bytes(b"truncated")
    folder, state = load_checkpoint(run)
    assert folder == older and state["step"] == 6
    assert "skipped checkpoint step-00000008 (model.safetensors is 9 bytes" in caplog.text  # a warning, logged
    assert (run / "model.safetensors").read_bytes() == (older / "model.safetensors").read_bytes()
    (older / "manifest.json").unlink()
    with pytest.raises(UserError, match="no complete checkpoint: step-00000008 .*; step-00000006 \\(no readable"):
        load_checkpoint(run)


def test_parts_of_different_steps_are_refused(straight, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(straight), str(run)], check=True)
    newest, older = checkpoint_folders(run)
    (newest / "train_state.pt").write_bytes((older / "train_state.pt").read_bytes())  # same size: step 6's
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["parts"]["train_state.pt"] = (newest / "train_state.pt").stat().st_size
    (newest / MANIFEST).write_text(json.dumps(manifest))
    folder, _ = load_checkpoint(run)
    assert folder == older


def test_a_new_run_refuses_a_folder_that_holds_one(straight, prepared_char):
    config = load_config("tiny", overrides=[*TINY, f'data.path="{prepared_char}"', "run.steps=2"])
    with pytest.raises(UserError, match="already holds a run"):
        train(config, straight, progress=False)
