import json
import lzma
import math

import numpy as np
import pyppmd
import pytest
from conftest import run_cli

from capitu.folders import DataFolder
from capitu.ngram import KneserNey, count_ngrams
from capitu.references import SEPARATOR, split_documents


@pytest.fixture(scope="module")
def scored(prepared_bpe):
    from capitu.references import references

    return references(prepared_bpe)


def compressed(text: bytes) -> int:
    """Bytes of PPMd variant H, order 8, 256 MiB: the whole stream, flushed."""
    encoder = pyppmd.Ppmd7Encoder(8, 256 << 20)
    return len(encoder.encode(text)) + len(encoder.flush())


def test_split_text_comes_back_from_the_tokens(prepared_bpe):
    data = DataFolder(prepared_bpe)
    for split in ("train", "val", "test"):
        documents = split_documents(data, split)
        counts = data.meta["splits"][split]
        assert len(documents) == counts["documents"]
        assert sum(len(d) for d in documents) == counts["characters"]
        assert sum(len(d.split()) for d in documents) == counts["words"]


def test_each_reference_against_its_own_definition(prepared_bpe, scored):
    result, model = scored
    data = DataFolder(prepared_bpe)
    test = SEPARATOR.join(split_documents(data, "test")).encode()
    train = SEPARATOR.join(split_documents(data, "train")).encode()
    size = data.meta["splits"]["test"]["bytes"]
    assert result["bytes"] == size
    # xz: the size of the .xz file of the text, in bits, over its bytes
    assert result["xz"]["bpb"] == 8 * len(lzma.compress(test, preset=9 | lzma.PRESET_EXTREME)) / size
    # PPMd primed: compressing train + text less compressing train, to the few bytes the range coder holds back
    whole, alone = compressed(train + SEPARATOR.encode() + test), compressed(train)
    assert 0 <= result["ppmd"]["bits"] - 8 * (whole - alone) <= 8 * 8
    assert result["ppmd_alone"]["bits"] == 8 * compressed(test)
    assert result["ppmd"]["bpb"] < result["ppmd_alone"]["bpb"]  # the training text helps
    # the n-gram: its order is the one with the lowest validation loss, and its bits are the summed -log2 P
    losses = {int(n): v for n, v in result["ngram"]["val_loss_by_order"].items()}
    assert sorted(losses) == [2, 3, 4, 5, 6] and result["ngram"]["order"] == min(losses, key=losses.get)
    tokens = np.asarray(data.tokens("test"))
    fresh = KneserNey(count_ngrams(np.asarray(data.tokens("train")), data.vocab_size, 6), model.order, data.vocab_size)
    bits = -fresh.log_probs(tokens).sum() / math.log(2)
    assert result["ngram"]["bpb"] == pytest.approx(bits / size, rel=1e-9)
    assert result["ngram"]["word_ppl"] == pytest.approx(2 ** (bits / data.meta["splits"]["test"]["words"]), rel=1e-9)


def test_compressors_read_in_chunks_write_what_they_write_in_one_call(prepared_bpe, monkeypatch):
    """The chunks move the progress bar over every byte read, and change nothing the compressors write."""
    from capitu import references

    data = DataFolder(prepared_bpe)
    test = SEPARATOR.join(split_documents(data, "test")).encode()
    train = SEPARATOR.join(split_documents(data, "train")).encode()
    monkeypatch.setattr(references, "CHUNK", 997)  # many chunks, the last one short

    class Bar:
        n = 0

        def update(self, count):
            self.n += count

    bar = Bar()
    assert references.xz_bits(test, bar) == 8 * len(lzma.compress(test, preset=9 | lzma.PRESET_EXTREME))
    assert references.ppmd_bits(test, bar=bar) == 8 * compressed(test)
    encoder = pyppmd.Ppmd7Encoder(8, 256 << 20)
    encoder.encode(train + SEPARATOR.encode())
    assert references.ppmd_bits(test, train, bar) == 8 * (len(encoder.encode(test)) + len(encoder.flush()))
    assert bar.n == 3 * len(test) + len(train) + len(SEPARATOR)


def test_cli_json_table_text_and_generation(prepared_bpe, tmp_path, capsys):
    code, out, err = run_cli(["references", "--data", prepared_bpe, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert {"ppmd", "xz", "ngram"} <= set(result) and result["ngram"]["order"] in range(2, 7)
    one = tmp_path / "conto.txt"
    one.write_text("Capitu tinha olhos de cigana oblíqua e dissimulada. " * 20, encoding="utf-8")
    code, out, err = run_cli(["references", "--data", prepared_bpe, "--text", one, "--prompt", "Capitu tinha",
                              "-n", "12", "--temperature", "0"], capsys)
    assert code == 0, err
    assert f"references on {one}" in out and "| Kneser-Ney" in out and "Capitu tinha" in out.split("gram model")[1]
    # with --json, the samples are in the one JSON document stdout holds: the same text
    code, printed, err = run_cli(["references", "--data", prepared_bpe, "--text", one, "--prompt", "Capitu tinha",
                                  "-n", "12", "--temperature", "0", "--json"], capsys)
    (sample,) = json.loads(printed)["samples"]
    assert code == 0 and sample["prompt"] == "Capitu tinha" and out.rstrip("\n").endswith("\n" + sample["text"])


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "data folder not found"),
    (["--text", "{tmp}/missing.txt"], "source not found"),
    (["--text", "{tmp}/empty.txt"], "no text to score"),
    (["--temperature", "-1"], "--temperature must be 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, prepared_bpe, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--data" not in args:
        args = ["--data", str(prepared_bpe), *args]
    code, out, err = run_cli(["references", *args], capsys)
    assert code == 2 and err.startswith("capitu: error: ") and message in err and err.count("\n") == 1, err
