"""Time `capitu prepare` on a corpus, stage by stage (default: ../shared/corpus, BPE 16384).

    python benchmarks/prepare_corpus.py [--source ../shared/corpus] [--vocab-size 16384]

Writes into a temporary folder and prints the summary with the seconds of every stage.
"""

import argparse
import tempfile
import time
from pathlib import Path

from capitu.data.prepare import PrepareOptions, format_summary, prepare

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--vocab-size", type=int, default=16384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        meta = prepare(PrepareOptions(source=args.source, out=Path(folder) / "data", vocab_size=args.vocab_size,
                                      progress=False))
        wall = time.perf_counter() - start
    print(format_summary(meta))
    print(f"wall time: {wall:.1f}s")


# deduplication's worker processes are spawned: they import this file again, and must not run it
if __name__ == "__main__":
    main()
