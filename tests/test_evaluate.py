import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import make_run, run_cli

from capitu.checkpoint import save_model
from capitu.evaluate import evaluate_run, window_plan
from capitu.tokenizer import EOT_ID, load_tokenizer


def uniform_run(folder, data):
    model = make_run(folder, data)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # every logit 0: the uniform distribution
    save_model(folder, model, {"config": {"data": {"path": str(data)}}})


@pytest.mark.parametrize("n, length, stride", [(10, 4, 4), (11, 4, 2), (5, 8, 8), (100, 16, 5), (2, 4, 1)])
def test_window_plan_scores_every_target_once(n, length, stride):
    scored = []
    for start, end, first in window_plan(n, length, stride):
        assert end - start <= length and start < first <= end + 1
        scored.extend(range(first, end + 1))
    assert scored == list(range(1, n))


def test_uniform_model_gives_vocab_perplexity(prepared_char, tmp_path):
    uniform_run(tmp_path / "run", prepared_char)
    meta = json.loads((prepared_char / "meta.json").read_text())
    vocab, val = meta["tokenizer"]["vocab_size"], meta["splits"]["val"]
    for stride in (0, 16):
        result = evaluate_run(tmp_path / "run", "val", stride=stride, progress=False)
        assert result["tokens"] == val["tokens"] - 1
        assert result["ppl"] == pytest.approx(vocab, rel=1e-5)
        assert result["bpb"] == pytest.approx(math.log2(vocab) * result["tokens"] / val["bytes"], rel=1e-5)
        assert result["word_ppl"] == pytest.approx(vocab ** (result["tokens"] / val["words"]), rel=1e-4)


def test_bits_per_byte_identity_on_a_trained_run(prepared_char, tmp_path):
    from capitu.config import load_config
    from capitu.train.trainer import train

    config = load_config("tiny", overrides=["model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                            "model.block_size=32", "optim.micro_batch=8", "optim.batch_tokens=256",
                                            "run.steps=20",
                                            f'data.path="{prepared_char}"'])
    train(config, tmp_path / "run", progress=False)
    result = evaluate_run(tmp_path / "run", "test", progress=False)
    test = json.loads((prepared_char / "meta.json").read_text())["splits"]["test"]
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / (test["bytes"] * math.log(2)), rel=1e-9)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))


def test_text_of_the_validation_split_equals_the_split(prepared_bpe, tmp_path):
    make_run(tmp_path / "run", prepared_bpe, pos="rope")
    meta = json.loads((prepared_bpe / "meta.json").read_text())
    tokenizer = load_tokenizer(prepared_bpe / "tokenizer.json")
    tokens = np.fromfile(prepared_bpe / "val.bin", dtype=meta["dtype"])
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, chunk in enumerate(np.split(tokens, np.flatnonzero(tokens == EOT_ID))[1:]):
        (folder / f"{i:03d}.txt").write_text(tokenizer.decode(chunk[1:]), encoding="utf-8")
    by_split = evaluate_run(tmp_path / "run", "val", progress=False)
    by_text = evaluate_run(tmp_path / "run", text=folder, progress=False)
    assert by_text["tokens"] == by_split["tokens"]
    for key in ("loss", "bpb", "bpc", "word_ppl"):
        assert by_text[key] == pytest.approx(by_split[key], rel=1e-6)


def test_a_text_the_run_trained_on_is_named_in_a_warning(prepared_bpe, small_corpus, tmp_path, capsys):
    make_run(tmp_path / "run", prepared_bpe)
    manifest = json.loads((prepared_bpe / "meta.json").read_text())["manifest"]
    trained = [small_corpus / e["path"] for e in manifest if e["split"] == "train"]
    held = [small_corpus / e["path"] for e in manifest if e["split"] in ("val", "test")]
    folder = tmp_path / "texts"
    folder.mkdir()
    for path in (trained[0], held[0]):
        shutil.copy(path, folder / path.name)
    (folder / "new.txt").write_text("Era uma vez um rapaz que vivia em Belém.", encoding="utf-8")
    for command in (["eval", tmp_path / "run"], ["references", "--data", prepared_bpe]):
        code, _, err = run_cli([*command, "--text", folder, "--quiet" if command[0] == "eval" else "--json"], capsys)
        assert code == 0 and f"{folder}: 1 of 3 documents are in the training split of {prepared_bpe}" in err, err
    code, _, err = run_cli(["eval", tmp_path / "run", "--text", folder / "new.txt", "--quiet"], capsys)
    assert code == 0 and "warning" not in err


def test_lengths_past_learned_positions_are_not_supported(prepared_char, tmp_path, capsys):
    make_run(tmp_path / "learned", prepared_char)
    make_run(tmp_path / "alibi", prepared_char, pos="alibi")
    code, out, err = run_cli(["eval", tmp_path / "learned", "--split", "val", "--lengths", "32,128", "--json",
                              "--quiet"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["lengths"]["32"]["supported"] and not result["lengths"]["128"]["supported"]
    assert set(result) >= {"loss", "ppl", "bpb", "bpc", "word_ppl", "tokens"}
    assert (tmp_path / "learned" / "eval_val.json").is_file()
    code, out, _ = run_cli(["eval", tmp_path / "alibi", "--split", "val", "--lengths", "128", "--quiet"], capsys)
    assert code == 0 and "not supported" not in out
    # a length the text cannot fill would be the whole text's figure under that length's name: 40 characters, an
    # end-of-text before them (the char tokenizer), are 40 targets
    (tmp_path / "short.txt").write_text("Era uma vez um rapaz que vivia em Belém.", encoding="utf-8")
    code, out, err = run_cli(["eval", tmp_path / "alibi", "--text", tmp_path / "short.txt", "--lengths", "40,41",
                              "--json", "--quiet"], capsys)
    result = json.loads(out)
    assert code == 0 and result["tokens"] == 40, err
    assert result["lengths"]["40"]["supported"] and result["lengths"]["40"]["tokens"] == 40
    assert result["lengths"]["41"] == {"supported": False, "reason": "the text has only 40 tokens to score"}


def test_bad_input_exits_2(prepared_char, tmp_path, capsys):
    make_run(tmp_path / "run", prepared_char)
    cases = [
        (["eval", tmp_path / "missing"], "not a capitu run"),
        (["eval", tmp_path / "run", "--lengths", "a,b"], "--lengths expects"),
        (["eval", tmp_path / "run", "--stride", "1000"], "--stride must be between"),
        (["eval", tmp_path / "run", "--text", tmp_path / "nothing"], "source not found"),
    ]
    for args, message in cases:
        code, _, err = run_cli([*args, "--quiet"], capsys)
        assert code == 2 and message in err, (args, err)
    (tmp_path / "run" / "model.safetensors").write_bytes(b"broken")
    code, _, err = run_cli(["eval", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and "corrupt" in err


def test_a_conllu_treebank_is_one_document_of_its_sentences_a_line_each(tmp_path):
    """[study.eval_texts] may name UD treebanks: their sentences (# text) are the text scored, in file order."""
    import hashlib

    from test_pairs import CONLLU

    from capitu.evaluate import hashed_documents

    path = tmp_path / "mini.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    texts = [line.removeprefix("# text = ") for line in CONLLU.splitlines() if line.startswith("# text = ")]
    assert hashed_documents(path) == [(hashlib.sha256(path.read_bytes()).hexdigest(), "\n".join(texts))]
