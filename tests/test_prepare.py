import json
import lzma

import numpy as np
import pytest
from conftest import prepare_folder, run_cli

from capitu.tokenizer import EOT_ID, load_tokenizer


def test_meta_counts_equal_what_the_token_files_hold(prepared_bpe):
    meta = json.loads((prepared_bpe / "meta.json").read_text())
    tokenizer = load_tokenizer(prepared_bpe / "tokenizer.json")
    assert meta["tokenizer"] == {"kind": "bpe", "vocab_size": tokenizer.vocab_size, "eot_id": EOT_ID}
    assert meta["dtype"] == "uint16"
    for split, counts in meta["splits"].items():
        tokens = np.memmap(prepared_bpe / f"{split}.bin", dtype=meta["dtype"], mode="r")
        assert counts["tokens"] == len(tokens)
        assert counts["documents"] == int((tokens == EOT_ID).sum()) and tokens[0] == EOT_ID
        chunks = np.split(np.asarray(tokens), np.flatnonzero(tokens == EOT_ID))[1:]
        texts = [tokenizer.decode(chunk[1:]) for chunk in chunks]
        assert counts["bytes"] == sum(len(t.encode()) for t in texts)
        assert counts["characters"] == sum(len(t) for t in texts)
        assert counts["words"] == sum(len(t.split()) for t in texts)
        assert int(tokens.max()) < tokenizer.vocab_size
    val = meta["splits"]["val"]
    assert meta["fertility_val"] == pytest.approx((val["tokens"] - val["documents"]) / val["words"], abs=1e-4)
    assert meta["leaked_paragraphs"] == 0
    kept = [m for m in meta["manifest"] if m["split"]]
    assert len(kept) == sum(c["documents"] for c in meta["splits"].values())
    assert set(meta["seconds"]) == {"read", "clean", "deduplicate", "split", "train_tokenizer", "encode", "write"}


def test_manifest_names_every_input_with_its_checksum(prepared_char, small_corpus):
    import hashlib

    meta = json.loads((prepared_char / "meta.json").read_text())
    files = sorted(small_corpus.rglob("*.txt.xz"))
    assert len(meta["manifest"]) == len(files)
    by_path = {m["path"]: m for m in meta["manifest"]}
    for path in files:
        data = lzma.decompress(path.read_bytes())
        entry = by_path[path.relative_to(small_corpus).as_posix()]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)


def test_char_tokenizer_output_is_complete(prepared_char):
    meta = json.loads((prepared_char / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "char"
    val = meta["splits"]["val"]
    assert val["tokens"] >= val["characters"] + val["documents"]


def test_rerun_reuses_and_force_rebuilds(small_corpus, tmp_path):
    out = tmp_path / "data"
    first = prepare_folder(small_corpus, out, tokenizer="char")
    stamp = (out / "meta.json").stat().st_mtime_ns
    again = prepare_folder(small_corpus, out, tokenizer="char")
    assert again["reused"] and (out / "meta.json").stat().st_mtime_ns == stamp
    rebuilt = prepare_folder(small_corpus, out, tokenizer="char", force=True)
    assert not rebuilt["reused"] and rebuilt["sha256"] == first["sha256"]
    assert not list(tmp_path.glob(".data.*"))  # no staging folder left behind


def test_interrupted_build_leaves_nothing(small_corpus, tmp_path, monkeypatch):
    from capitu.data import prepare as prepare_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_folder(small_corpus, tmp_path / "data", tokenizer="char")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_a_summary(small_corpus, tmp_path, capsys):
    code, out, err = run_cli(["prepare", "--source", small_corpus, "--out", tmp_path / "d", "--tokenizer", "char",
                              "--quiet"], capsys)
    assert code == 0, err
    assert "8 documents read" in out and "leaked paragraphs (val/test in train): 0" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "{tmp}/missing"], "source not found"),
        (["--source", "{tmp}/empty"], "no .txt files or archives found"),
        (["--source", "{tmp}/binary"], "nothing readable"),
        (["--source", "nenhuma"], "not a path, nor a named source: machado"),
        (["--source", "{small}", "--vocab-size", "100"], "vocab size must be between"),
        (["--source", "{small}", "--val-fraction", "0.9"], "--val-fraction must be between"),
        (["--source", "{small}", "--out", "{tmp}/occupied"], "holds something else"),
        (["--source", "{tmp}/latin", "--strict"], "not UTF-8"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, small_corpus, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "x.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.md").write_text("mine")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes("Coração e ação.".encode("latin-1"))
    args = [a.format(tmp=tmp_path, small=small_corpus) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, out, err = run_cli(["prepare", "--quiet", *args], capsys)
    assert code == 2
    lines = err.splitlines()
    assert lines[-1].startswith("capitu: error: ") and message in lines[-1]
    assert all(line.startswith("capitu: warning: ") for line in lines[:-1])
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_legacy_encoding_is_converted_with_a_warning(tmp_path, capsys):
    for i, word in enumerate(["Coração", "Ação", "Canção"]):
        (tmp_path / f"{i}.txt").write_bytes(f"{word} de Portugal, nação valente.\n".encode("cp1252") * 20)
    (tmp_path / "notas.md").write_text("# Notas\n", encoding="utf-8")
    code, out, err = run_cli(["prepare", "--quiet", "--source", tmp_path, "--out", tmp_path / "o",
                              "--tokenizer", "char", "--min-document-chars", "0", "--min-paragraph-chars", "1000"],
                             capsys)
    assert code == 0, err
    assert "0.txt: not UTF-8, read as cp1252" in err
    assert "1 file(s) under" in err and "are neither .txt nor archives, and are left out: notas.md" in err
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert {m["encoding"] for m in meta["manifest"]} == {"cp1252"}


def test_how_a_file_was_read_is_part_of_the_outputs_key():
    """A corpus of UTF-8 files keeps the key it had before files were keyed by how they were read; a file read another
    way changes it, so that an output made when that file was read otherwise is rebuilt."""
    import hashlib

    from capitu.data.dedup import Document
    from capitu.data.prepare import PIPELINE_VERSION, PrepareOptions, cache_key

    options = PrepareOptions(source="s", out="o")
    plain = [Document("a.txt", "x", "1", 1, extra={"encoding": "utf-8"})]
    before = {"pipeline": PIPELINE_VERSION, "options": options.key_fields(), "inputs": [["a.txt", "1"]]}
    assert cache_key(plain, options) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    read = {encoding: cache_key([Document("a.txt", "x", "1", 1, extra={"encoding": encoding})], options)
            for encoding in ("cp1252", "utf-8 less 1 invalid byte sequence(s)")}
    assert len({cache_key(plain, options), *read.values()}) == 3


def test_a_bpe_vocabulary_smaller_than_asked_is_a_warning(tmp_path, capsys):
    # three short documents hold a few hundred distinct pairs: BPE runs out of merges long before 2,000 tokens
    for i, word in enumerate(["Coração", "Ação", "Canção"]):
        (tmp_path / f"{i}.txt").write_text(f"{word} de Portugal, nação valente.\n" * 20, encoding="utf-8")
    code, _, err = run_cli(["prepare", "--quiet", "--source", tmp_path, "--out", tmp_path / "o", "--vocab-size",
                            "2000", "--min-document-chars", "0", "--min-paragraph-chars", "1000"], capsys)
    vocab = json.loads((tmp_path / "o" / "meta.json").read_text())["tokenizer"]["vocab_size"]
    assert code == 0 and vocab < 2000
    assert f"the BPE vocabulary has {vocab:,} tokens, not the 2,000 asked for" in err


def test_rerun_with_other_options_needs_force(small_corpus, tmp_path, capsys):
    prepare_folder(small_corpus, tmp_path / "d", tokenizer="char")
    code, _, err = run_cli(["prepare", "--quiet", "--source", small_corpus, "--out", tmp_path / "d",
                            "--tokenizer", "char", "--seed", "7"], capsys)
    assert code == 2 and "use --force" in err
