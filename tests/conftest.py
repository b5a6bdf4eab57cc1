import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CAPITU_CORPUS", REPO.parent / "shared" / "corpus"))
# a model that trains a step in milliseconds on the prepared_char data (GPT-2's kind, AdamW: the tiny preset's
# RoPE, untied head and Muon are set back to the defaults)
TINY = [
    "model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.block_size=32", "model.pos=learned",
    "model.tie_embeddings=true", "optim.name=adamw", "optim.min_lr_ratio=0.1",
    "optim.micro_batch=8", "optim.batch_tokens=256", "optim.warmup_steps=5", "optim.lr=0.01",
    "run.eval_every=10", "run.eval_windows=8", "run.log_every=5", "run.checkpoint_every=1000",
]


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "MANIFEST.csv").exists():
        pytest.skip(f"shared corpus not found at {CORPUS} (set CAPITU_CORPUS)")
    return CORPUS


@pytest.fixture(scope="session")
def small_corpus(corpus, tmp_path_factory) -> Path:
    """A folder of a few short real works: Machado's stories and criticism (xz, as shipped)."""
    folder = tmp_path_factory.mktemp("small_corpus")
    names = [
        "machado/critica/cenasVida.txt.xz",
        "machado/critica/fagundes.txt.xz",
        "machado/critica/garrett.txt.xz",
        "machado/critica/eduardo.txt.xz",
        "machado/critica/castroAlves.txt.xz",
        "machado/critica/idealCritico.txt.xz",
        "machado/conto/reliquias.txt.xz",
        "pessoa/poemas.txt.xz",
    ]
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((corpus / name).read_bytes())
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from capitu.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse errors and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prepare_folder(source: Path, out: Path, **options) -> dict:
    from capitu.data.prepare import PrepareOptions, prepare

    return prepare(PrepareOptions(source=str(source), out=out, progress=False, **options))


@pytest.fixture(scope="session")
def prepared_bpe(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "bpe"
    prepare_folder(small_corpus, out, vocab_size=2048)
    return out


@pytest.fixture(scope="session")
def prepared_char(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "char"
    prepare_folder(small_corpus, out, tokenizer="char")
    return out


def make_run(folder: Path, data: Path, **changes):
    """A small untrained model saved as a run folder on `data` (its tokenizer copied)."""
    from capitu.checkpoint import save_model
    from capitu.config import ModelConfig
    from capitu.models import build_model

    vocab = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    settings = dict(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=16) | changes
    model = build_model(ModelConfig(**settings))
    save_model(folder, model, {"config": {"data": {"path": str(data)}}})
    (folder / "tokenizer.json").write_bytes((data / "tokenizer.json").read_bytes())
    return model
