"""`capitu study --jobs N`: the study's runs in N processes at once, each the same command with `--shard K/N`.

On a machine with several GPUs, process K gets GPU (K - 1) mod G alone (CUDA_VISIBLE_DEVICES); on one GPU the N
processes share it, which can pay where one small model's eager training leaves it idle between kernels
(benchmarks/shared_gpu.py measures it). On a CPU each keeps torch's threads: fewer would change the runs' sums in
their last bits (a run is reproducible for a given number of threads), so --jobs gives the study run whole, bit for
bit, and gains nothing on a CPU whose cores one run already uses. The shards set the study up one at a time
(runner.setup_lock); the caller then runs the same command without --shard, which trains nothing that is done and
benches, samples and reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from capitu.errors import UserError


def visible_gpus() -> list[str]:
    """The CUDA devices a child may be given, by index or by the ids of CUDA_VISIBLE_DEVICES; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [item.strip() for item in listed.split(",") if item.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def relay(stream, prefix: str, say: Callable[[str], None]) -> None:
    for line in stream:
        say(prefix + line.rstrip("\n"))


def run_shards(argv: list[str], jobs: int, device: str, say: Callable[[str], None]) -> None:
    """Run `capitu study` with `argv` (its arguments, without --shard) as shards 1..`jobs` at once, quietly, and wait
    for all; one that fails stops the others (a stopped run resumes from its checkpoint) and is a UserError."""
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    children = []
    # SIGTERM (a scheduler's cancel, `timeout`) would end this process alone and leave the shards training. While they
    # run, it and Ctrl-C only note the signal; the loop below turns that into an error, and the `finally` stops them.
    # (Not an exception raised from the handler: one raised inside a library's `except Exception`, or a `__del__`,
    # is lost, and the process goes on.)
    received: list[int] = []
    catch = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in catch}
    try:
        for number in range(1, jobs + 1):
            env = dict(os.environ)
            if len(gpus) > 1:
                env["CUDA_VISIBLE_DEVICES"] = gpus[(number - 1) % len(gpus)]
            command = [sys.executable, "-m", "capitu", "study", *argv, "--shard", f"{number}/{jobs}", "--quiet"]
            child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)
            reader = threading.Thread(target=relay, args=(child.stdout, f"[shard {number}/{jobs}] ", say),
                                      daemon=True)
            reader.start()
            children.append((number, child, reader))
        while not received:
            for number, child, _ in children:
                if child.poll() not in (None, 0):
                    raise UserError(f"shard {number}/{jobs} stopped with exit code {child.returncode} (its output "
                                    "is above); run the same command again to continue")
            if all(child.poll() is not None for _, child, _ in children):
                break
            time.sleep(0.5)
        if received:
            raise UserError(f"stopped by {signal.Signals(received[0]).name}, and the shards with it (each saves its "
                            "run's checkpoint); run the same command again to continue")
    finally:
        for _, child, _ in children:
            if child.poll() is None:
                child.terminate()  # the trainer saves a checkpoint on SIGTERM
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for _, child, reader in children:
            child.wait()
            reader.join(timeout=5)
