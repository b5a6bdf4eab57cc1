"""Load on `capitu serve`: concurrent clients on loopback against tiny models.

Each client sends `--requests` requests, a mix of streamed generations and blind
comparisons followed by a vote. Reports time to first token (first streamed piece) and total
time (p50, p95), requests refused with 429 (busy: the bounded queue), other errors, and
checks that every accepted vote is in the database afterwards.

    python benchmarks/serve_load.py --data studies/tiny/data
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from capitu.checkpoint import save_model
from capitu.config import ModelConfig
from capitu.models import build_model
from capitu.votes import read_votes


def make_runs(data: Path, folder: Path) -> list[Path]:
    vocab = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    runs = []
    for name, pos in (("baseline", "learned"), ("rope", "rope"), ("alibi", "alibi")):
        torch.manual_seed(len(runs))
        model = build_model(ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=128, pos=pos))
        save_model(folder / name, model, {"config": {"data": {"path": str(data)}}})
        (folder / name / "tokenizer.json").write_bytes((data / "tokenizer.json").read_bytes())
        runs.append(folder / name)
    return runs


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def client(url: str, requests: int, seed: int, results: dict, lock: threading.Lock) -> None:
    chooser = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(requests):
            started = time.perf_counter()
            if chooser.random() < 0.6:
                body = {"model": f"m{chooser.randrange(3)}", "prompt": "Era uma vez", "new_tokens": 24,
                        "seed": chooser.randrange(1000)}
                with http.stream("POST", "/api/generate", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        kind, first = response.status_code, None
                    else:
                        kind, first = "stream", None
                        for line in response.iter_lines():
                            if line.startswith("data: ") and first is None:
                                first = time.perf_counter() - started
            else:
                response = http.post("/api/blind", json={"prompt": "Capitu tinha olhos de", "new_tokens": 16})
                kind, first = response.status_code, None
                if response.status_code == 200:
                    choice = {"pair": response.json()["pair"], "choice": chooser.choice("AB")}
                    vote = http.post("/api/vote", json=choice)
                    kind = "vote" if vote.status_code == 200 else vote.status_code
            total = time.perf_counter() - started
            with lock:
                results["outcomes"].append(kind)
                results["total"].append(total)
                if first is not None:
                    results["first"].append(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared BPE data folder (its tokenizer)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = make_runs(args.data, Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        votes = Path(tmp) / "votes.sqlite"
        server = subprocess.Popen([sys.executable, "-m", "capitu", "serve", *map(str, runs), "--port", str(port),
                                   "--votes", str(votes)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/api/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        results, lock = {"outcomes": [], "total": [], "first": []}, threading.Lock()
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(url, args.requests, n, results, lock))
                   for n in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        server.terminate()
        server.wait(timeout=30)
        outcomes = results["outcomes"]
        stored = len(read_votes(votes))
        errors = [o for o in outcomes if o not in ("stream", "vote", 429)]
    print(f"{args.clients} clients x {args.requests} requests on loopback, 3 tiny models (2 layers, 128 wide), "
          f"{wall:.1f} s in all")
    print(f"streams: {outcomes.count('stream')}, blind pairs voted: {outcomes.count('vote')}, "
          f"busy (429): {outcomes.count(429)}, other errors: {len(errors)} {errors[:5]}")
    print(f"time to first token (streams): p50 {statistics.median(results['first']):.3f} s, "
          f"p95 {percentile(results['first'], 0.95):.3f} s")
    print(f"total time per request: p50 {statistics.median(results['total']):.3f} s, "
          f"p95 {percentile(results['total'], 0.95):.3f} s")
    print(f"votes accepted: {outcomes.count('vote')}, in the database afterwards: {stored}")
    if errors or stored != outcomes.count("vote"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
