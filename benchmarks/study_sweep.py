"""The sweep behind the default study's settings: which model, vocabulary, context and batch
learn the most Portuguese in a fixed number of CPU seconds per run.

    python benchmarks/study_sweep.py --seconds 45 --data 4096=DIR4K 8192=DIR8K \\
        --candidate "2L ctx128 b1024" \\
            "model.n_layer=2 model.block_size=128 optim.batch_tokens=1024 optim.micro_batch=8" \\
        --candidate ...

Every candidate is a name and overrides on top of `--preset` (tiny) and `--set` (which
may name `vocab=N` to pick the data folder prepared at that vocabulary). `--device cuda`
sweeps on a GPU (docs/gpu.md has the GPU study's sweep command). First each
candidate's training tokens/s is measured (interleaved rounds, the median), then each is
trained for `--seconds` x that rate tokens, and scored on the whole test split: bits per
byte, the figure the study reports. Prints one line per candidate as it ends.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from capitu.bench import BenchOptions, measure_training
from capitu.config import load_config
from capitu.device import pick_device
from capitu.evaluate import evaluate_run
from capitu.train.trainer import train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", nargs="+", required=True, metavar="VOCAB=DIR", help="prepared folders by vocabulary")
parser.add_argument("--candidate", nargs=2, action="append", required=True, metavar=("NAME", "OVERRIDES"))
parser.add_argument("--seconds", type=float, default=45.0, help="training seconds per run")
parser.add_argument("--tokens", type=int, default=0, help="train every candidate on these many tokens instead "
                    "(deterministic; compare the seconds it took)")
parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the rate measurement")
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every candidate")
parser.add_argument("--preset", default="tiny", help="the preset the candidates start from")
parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
args = parser.parse_args()
folders = dict(item.split("=", 1) for item in args.data)
device = pick_device(args.device)


def config_of(overrides: str):
    items = [*args.set, *overrides.split()]
    vocab = next((item.split("=", 1)[1] for item in items if item.startswith("vocab=")), next(iter(folders)))
    items = [item for item in items if not item.startswith("vocab=")]
    data = Path(folders[vocab]).resolve()
    meta = json.loads((data / "meta.json").read_text())
    config = load_config(args.preset, overrides=[*items, f"data.path={json.dumps(str(data))}", f"run.seed={args.seed}",
                                                 f"model.vocab_size={meta['tokenizer']['vocab_size']}",
                                                 f"run.device={args.device}"])
    config.run.steps, config.run.checkpoint_every, config.run.eval_every = 0, 10**9, 10**9
    return config


def why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


configs = {name: config_of(overrides) for name, overrides in args.candidate}
rates = {name: [] for name in configs}
failed = {}  # name: why; one candidate failing (out of memory, say) must not cost the others their lines
for _ in range(args.rounds if not args.tokens else 0):
    for name, config in configs.items():
        if name in failed:
            continue
        options = BenchOptions(train_steps=max(3, 8192 // config.optim.batch_tokens))
        try:
            rates[name].append(measure_training(config, device, options, kernel=False)["train_tok_s"])
        except Exception as error:  # noqa: BLE001
            failed[name] = why(error)
print(f"{args.tokens:,} tokens per run" if args.tokens else
      f"{args.seconds:g} s per run; tokens/s: median of {args.rounds} interleaved rounds", flush=True)
print(f"{'candidate':<28} {'tok/s':>8} {'tokens':>10} {'train s':>8} {'test loss':>9} {'test bpb':>9}", flush=True)
for name, config in configs.items():
    if name in failed:
        print(f"{name:<28} failed: {failed[name]}", flush=True)
        continue
    rate = statistics.median(rates[name]) if rates[name] else 0.0
    step = config.optim.batch_tokens
    config.run.tokens = args.tokens or max(step, round(args.seconds * rate / step) * step)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        try:
            train(config, Path(folder) / "run", progress=False)
            seconds = time.perf_counter() - started
            result = evaluate_run(Path(folder) / "run", "test", device=device, progress=False)
        except Exception as error:  # noqa: BLE001
            print(f"{name:<28} failed: {why(error)}", flush=True)
            continue
    print(f"{name:<28} {rate or config.run.tokens / seconds:>8,.0f} {config.run.tokens:>10,} {seconds:>8.1f} "
          f"{result['loss']:>9.4f} "
          f"{result['bpb']:>9.4f}", flush=True)
