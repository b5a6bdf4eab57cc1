"""How many training processes one GPU should run at once (`capitu study --jobs N`): N processes train the same
model at the same moment (random tokens, the trainer's own step), and their tokens/s are added up.

    python benchmarks/shared_gpu.py --preset small --set model.n_layer=8 ... --processes 1 2 3 4 --seconds 15

A small model's eager step leaves a GPU idle between kernels while the host launches the next; other processes'
kernels can fill those gaps. Where the sum stops growing, more processes only share the same work. Prints one line
per N as it ends.
"""

import argparse
import multiprocessing
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="small")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
parser.add_argument("--vocab-size", type=int, default=16384)
parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3, 4])
parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds of each round")
parser.add_argument("--device", default="cuda")


def trainer(args, barrier, results):
    from capitu.bench import training_step
    from capitu.config import load_config
    from capitu.device import pick_device, synchronize, use_tf32

    config = load_config(args.preset, overrides=[*args.set, f"model.vocab_size={args.vocab_size}"])
    device = pick_device(args.device)
    use_tf32(device)  # as the trainer does
    _, _, step, step_tokens = training_step(config, device)
    for _ in range(5):
        step()
    synchronize(device)
    barrier.wait()
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            synchronize(device)
    synchronize(device)
    results.put(steps * step_tokens / (time.perf_counter() - started))


def main():
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    print(f"{'processes':>9} {'tokens/s each':>24} {'sum':>12} {'vs first':>9}", flush=True)
    alone = None
    for count in args.processes:
        barrier, results = context.Barrier(count), context.Queue()
        workers = [context.Process(target=trainer, args=(args, barrier, results)) for _ in range(count)]
        for worker in workers:
            worker.start()
        rates = sorted(results.get() for _ in workers)
        for worker in workers:
            worker.join()
        alone = alone or sum(rates)
        print(f"{count:>9} {', '.join(f'{r:,.0f}' for r in rates):>24} {sum(rates):>12,.0f} "
              f"{sum(rates) / alone:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
