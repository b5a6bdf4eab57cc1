import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, run_cli
from safetensors.torch import load_file

from capitu.config import load_config
from capitu.train.checkpoints import checkpoint_folders
from capitu.train.trainer import train


def config_for(data, *extra):
    return load_config("tiny", overrides=[*TINY, f'data.path="{data}"', *extra])


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_below_a_unigram_model(prepared_char, tmp_path):
    last = train(config_for(prepared_char, "run.steps=150", "optim.batch_tokens=512"), tmp_path / "run", progress=False)
    meta = json.loads((prepared_char / "meta.json").read_text())
    tokens = np.fromfile(prepared_char / "train.bin", dtype=meta["dtype"])
    frequencies = np.bincount(tokens, minlength=meta["tokenizer"]["vocab_size"]) / len(tokens)
    unigram = -(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0])).sum()
    first = metrics(tmp_path / "run")[0]
    assert abs(first["train_loss"] - math.log(meta["tokenizer"]["vocab_size"])) < 0.5
    assert last["val_loss"] < unigram - 0.2, (last["val_loss"], unigram)


@pytest.mark.parametrize("optimizer, dtype", [("adamw", "float32"), ("muon", "float32"), ("adamw", "float16"),
                                              ("muon", "float16")])  # a T4 or V100 running the GPU study
def test_exact_resume_is_bit_identical(optimizer, dtype, prepared_char, tmp_path):
    """float16 too: autocast and the gradient scaler run on CPU, and the scaler's state is in the checkpoint."""
    settings = ["run.steps=12", "model.dropout=0.1", f"optim.name={optimizer}", f"run.dtype={dtype}"]
    train(config_for(prepared_char, *settings), tmp_path / "straight", progress=False)
    paused = train(config_for(prepared_char, *settings), tmp_path / "halves", pause_at=6, progress=False)
    assert paused["step"] == 6
    train(None, tmp_path / "halves", resume=True, progress=False)  # the saved budget: 12 steps
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "halves" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = {m["step"]: m["train_loss"] for m in metrics(tmp_path / "straight")}
    halves = {m["step"]: m["train_loss"] for m in metrics(tmp_path / "halves")}
    assert set(straight) <= set(halves) and 6 in halves  # the pause logs its step too
    assert all(halves[step] == loss for step, loss in straight.items())
    if dtype == "float16":
        state = torch.load(next((tmp_path / "halves" / "checkpoints").iterdir()) / "train_state.pt", weights_only=True)
        assert state["scaler"]["scale"] > 0 and json.loads((tmp_path / "straight" / "run.json").read_text())[
            "dtype"] == "float16"


def test_compiled_training_follows_the_eager_losses(prepared_char, tmp_path):
    """run.compile=true: the same steps through torch.compile, with accumulation (2 micro-batches a step)."""
    settings = ["run.steps=4", "run.log_every=1", "optim.batch_tokens=512"]
    train(config_for(prepared_char, *settings), tmp_path / "eager", progress=False)
    train(config_for(prepared_char, *settings, "run.compile=true"), tmp_path / "compiled", progress=False)
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert [m["step"] for m in compiled] == [1, 2, 3, 4]
    for a, b in zip(eager, compiled):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)


def test_run_folder_holds_what_it_promises(prepared_char, tmp_path):
    train(config_for(prepared_char, "run.steps=10"), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "run.json", "best/model.safetensors",
                 "best/config.json", "checkpoints/step-00000010/train_state.pt",
                 "checkpoints/step-00000010/manifest.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["model"]["n_layer"] == 2 and info["versions"]["torch"] == torch.__version__
    assert info["data_fingerprint"] == json.loads((prepared_char / "meta.json").read_text())["fingerprint"]
    record = metrics(run)[-1]
    for key in ("step", "tokens", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_bytes"):
        assert key in record
    assert record["tokens"] == 10 * 256
    if os.path.exists("/proc/stat"):  # the CPU other programs took, and none spare: torch's threads are on every core
        assert record["others_cores"] >= 0 and record["spare_cores"] == 0


def test_a_batch_that_is_not_whole_micro_batches_is_said(prepared_char, tmp_path, caplog):
    """A step runs whole micro-batches (8 x 32 = 256 tokens here): 600 asked gives 512, and the run says so."""
    train(config_for(prepared_char, "run.steps=1", "optim.batch_tokens=600"), tmp_path / "odd", progress=False)
    assert "optim.batch_tokens 600 is not a whole number of micro-batches (8 x 32 tokens): a step takes 512 tokens" \
        in caplog.text
    assert metrics(tmp_path / "odd")[-1]["tokens"] == 512
    caplog.clear()
    train(config_for(prepared_char, "run.steps=1"), tmp_path / "whole", progress=False)  # 256: no word
    assert "micro-batches" not in caplog.text


def test_sigint_leaves_a_checkpoint_that_resumes(prepared_char, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "capitu", "train", "--data", str(prepared_char), "--out", str(run),
               "--steps", "100000", "--quiet", *sum((["--set", s] for s in TINY), [])]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "checkpoint saved" in err and "Traceback" not in err
    step = torch.load(checkpoint_folders(run)[0] / "train_state.pt", weights_only=True)["step"]
    assert step >= 5
    last = train(None, run, resume=True, progress=False, run_settings={"steps": step + 3})
    assert last["step"] == step + 3


@pytest.mark.parametrize("optimizer, port", [("adamw", 29517), ("muon", 29518)])
def test_ddp_two_processes_equal_one_with_accumulation(optimizer, port, prepared_char, tmp_path):
    # Muon orthogonalises the all-reduced gradient: every process computes the same update
    common = ["--data", str(prepared_char), "--steps", "4", "--quiet", *sum((["--set", s] for s in TINY), []),
              "--set", "optim.batch_tokens=512", "--set", f"optim.name={optimizer}"]
    single = subprocess.run([sys.executable, "-m", "capitu", "train", "--out", str(tmp_path / "one"), *common],
                            capture_output=True, text=True, cwd=REPO)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        double = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
             "-m", "capitu", "train", "--out", str(tmp_path / "two"), *common],
            capture_output=True, text=True, cwd=REPO, env=env,
        )
        # a worker killed by SIGABRT inside the launcher (seen once in this session's 8 CI runs; not reproduced
        # in 16 tries) is taken for the launcher's: one more try from scratch; a real bug fails both
        if double.returncode == 0 or "Signal 6 (SIGABRT)" not in double.stderr:
            break
        shutil.rmtree(tmp_path / "two", ignore_errors=True)
    assert double.returncode == 0, double.stderr[-2000:]
    assert json.loads((tmp_path / "one" / "run.json").read_text())["accumulation"] == 2
    assert json.loads((tmp_path / "two" / "run.json").read_text())["accumulation"] == 1
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.colour=red"], "unknown config key 'model.colour'"),
        (["--set", "model.n_kv_head=3"], "must be divisible by model.n_kv_head"),
        (["--set", "optim.name=bogus"], "optim.name must be one of adamw, muon, got 'bogus'"),
        (["--steps", "-5"], "--steps must be positive, got -5"),
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--tokens", "-100"], "--tokens must be positive, got -100"),
        (["--time", "0"], "--time must be positive, got 0.0"),
        (["--set", "optim.micro_batch=0"], "optim.micro_batch must be positive, got 0"),
        (["--set", "model.block_size=100000000"], "longer than the train split"),
        (["--data", "{tmp}/missing"], "data folder not found"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_configs_exit_2(args, message, prepared_char, tmp_path, capsys):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--data" not in args and "--resume" not in args:
        args += ["--data", str(prepared_char)]
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--steps", "2", "--quiet", *args], capsys)
    assert code == 2 and err.startswith("capitu: error: ") and message in err


def test_corrupt_training_state_is_a_clear_error(prepared_char, tmp_path, capsys):
    train(config_for(prepared_char, "run.steps=2"), tmp_path / "run", progress=False)
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "train_state.pt"
    state.write_bytes(b"x" * state.stat().st_size)  # the size the manifest expects, the content garbage
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--resume", "--steps", "4", "--quiet"], capsys)
    assert code == 2 and "no complete checkpoint: step-00000002 (unreadable" in err
    code, _, err = run_cli(["train", "--data", prepared_char, "--out", tmp_path / "run", "--steps", "4", "--quiet"],
                           capsys)
    assert code == 2 and "already holds a run" in err


def test_resume_takes_a_new_device_and_budget(prepared_char, tmp_path, capsys):
    train(config_for(prepared_char, "run.steps=2", 'run.device="auto"'), tmp_path / "run", progress=False)
    code, out, err = run_cli(["train", "--out", tmp_path / "run", "--resume", "--steps", "3", "--device", "cpu",
                              "--quiet"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["run"]["device"] == "cpu" and saved["step"] == 3
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--resume", "--steps", "4", "--device", "tpu9",
                            "--quiet"], capsys)
    assert code == 2 and "unknown device" in err
    # a resume replays the saved config: a config that would change it is refused, not ignored; the run's own passes
    same = ["--data", str(prepared_char), *(item for setting in TINY for item in ("--set", setting))]
    run_config = tmp_path / "run" / "config.json"
    out_of_step = {**json.loads(run_config.read_text()), "note": "out of step"}
    run_config.unlink()  # a file of its own, no longer the checkpoint's (a resume puts the checkpoint's back)
    run_config.write_text(json.dumps(out_of_step))
    for change, message in ((["--set", "model.n_layer=3"], "model.n_layer 2 -> 3"),
                            (["--set", "run.seed=7"], "run.seed 1337 -> 7"),
                            (["--preset", "small"], "optim.muon_lr 0.005 -> 0.001")):
        code, _, err = run_cli(["train", "--out", tmp_path / "run", "--resume", *same, *change, "--quiet"], capsys)
        assert code == 2 and "--resume continues the run with its own config" in err and message in err, err
        assert json.loads(run_config.read_text()) == out_of_step  # a refused resume writes nothing
    # at the end of its budget, or at --pause-at, a resume says there is nothing to train, and trains nothing
    for more, where in ((), "the end of its budget"), ((*same, "--steps", "5", "--pause-at", "2"),
                                                       "at or past --pause-at 2"):
        code, out, err = run_cli(["train", "--out", tmp_path / "run", "--resume", *more, "--quiet"], capsys)
        assert code == 0 and f"nothing to train: the run is at step 3 ({3 * 256:,} tokens), {where}" in out, out + err
    assert json.loads(run_config.read_text())["step"] == 3 and "note" not in json.loads(run_config.read_text())


def test_time_alone_sets_the_schedule_and_ends_the_run(prepared_char, tmp_path, capsys):
    """--time without --tokens or --steps replaces the preset's token budget: the cosine's phase is the
    share of the seconds spent, the run stops at the time with its last step validated."""
    seconds = 3.0
    code, out, err = run_cli(["train", "--data", prepared_char, "--out", tmp_path / "run", "--time", seconds, "--quiet",
                              *sum((["--set", s] for s in TINY), []), "--set", "run.log_every=1",
                              "--set", "optim.min_lr_ratio=0.0"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["run"]["tokens"] == 0 and info["total_steps"] == 0
    records = metrics(tmp_path / "run")
    last = records[-1]
    assert last["elapsed_s"] >= seconds and "val_loss" in last
    assert ": finished at step" in out  # the time was the budget, not a pause
    peak = float(load_config("tiny", overrides=TINY).optim.lr)
    for before, record in zip(records, records[1:]):
        if record["step"] > 5:  # past warmup: the lr of a step is the cosine at the seconds spent before it
            expected = peak * 0.5 * (1 + math.cos(math.pi * min(before["elapsed_s"] / seconds, 1.0)))
            assert record["lr"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert records[-1]["lr"] < 0.1 * peak  # the schedule ran to (near) its end
