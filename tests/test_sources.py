import bz2
import gzip
import io
import lzma
import tarfile
import zipfile

import pytest

from capitu.data.sources import decode_text, iter_documents, list_inputs
from capitu.errors import UserError

TEXT = "Era uma vez um menino que se chamava Bentinho.\n"


def write_archives(folder):
    data = TEXT.encode("utf-8")
    (folder / "plain.txt").write_bytes(data)
    (folder / "g.txt.gz").write_bytes(gzip.compress(data))
    (folder / "x.txt.xz").write_bytes(lzma.compress(data))
    (folder / "b.txt.bz2").write_bytes(bz2.compress(data))
    with zipfile.ZipFile(folder / "z.zip", "w") as archive:
        archive.writestr("dentro/um.txt", data)
        archive.writestr("dentro/dois.txt.xz", lzma.compress(data))
        archive.writestr("leia-me.md", b"not a text")
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tar.xz", "w:xz"), (".tar.bz2", "w:bz2")):
        with tarfile.open(folder / f"t{suffix}", mode) as archive:
            info = tarfile.TarInfo("pasta/tres.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / "ignored.csv").write_text("a,b\n")


def test_every_compression_and_archive_kind_is_read(tmp_path):
    write_archives(tmp_path)
    inputs = list_inputs(tmp_path)
    documents = list(iter_documents(tmp_path, inputs))
    names = [d.name for d in documents]
    assert names == [
        "b.txt.bz2", "g.txt.gz", "plain.txt",
        "t.tar/pasta/tres.txt", "t.tar.bz2/pasta/tres.txt", "t.tar.gz/pasta/tres.txt", "t.tar.xz/pasta/tres.txt",
        "x.txt.xz", "z.zip/dentro/dois.txt.xz", "z.zip/dentro/um.txt",
    ]
    assert all(d.data == TEXT.encode() for d in documents)


def test_single_file_source(tmp_path):
    (tmp_path / "x.txt.xz").write_bytes(lzma.compress(TEXT.encode()))
    documents = list(iter_documents(tmp_path / "x.txt.xz", list_inputs(tmp_path / "x.txt.xz")))
    assert [(d.name, d.data) for d in documents] == [("x.txt.xz", TEXT.encode())]


def test_corrupt_compressed_file_reports_a_problem(tmp_path):
    (tmp_path / "bad.txt.xz").write_bytes(b"not xz at all")
    (document,) = iter_documents(tmp_path, list_inputs(tmp_path))
    assert document.data is None and "cannot read" in document.problem


def test_missing_and_empty_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="source not found"):
        list_inputs(tmp_path / "nope")
    with pytest.raises(UserError, match="no .txt files"):
        list_inputs(tmp_path)
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(UserError, match="not a text file"):
        list_inputs(tmp_path / "a.pdf")


def test_utf8_with_and_without_bom():
    assert decode_text("ação".encode("utf-8")) == ("ação", "utf-8")
    assert decode_text(b"\xef\xbb\xbf" + "ação".encode("utf-8")) == ("ação", "utf-8")


def test_legacy_encodings_are_detected_and_converted():
    assert decode_text("“Ação”, disse ele.".encode("cp1252")) == ("“Ação”, disse ele.", "cp1252")
    # 0x81 is undefined in Windows-1252: only Latin-1 decodes it
    assert decode_text("ação".encode("latin-1") + b"\x81") == ("ação\x81", "latin-1")
    assert decode_text("coração".encode("utf-16")) == ("coração", "utf-16")


def test_utf8_with_a_few_broken_sequences_stays_utf8_without_them():
    text = "Capitu tinha olhos de ressaca, não? Ação, coração, nação. " * 20
    cut = text.encode("utf-8")[:-1] + "ã".encode("utf-8")[:1]  # cut in the middle of its last character
    assert decode_text(cut) == (text[:-1], "utf-8 less 1 invalid byte sequence(s)")
    stray = "ação ".encode("utf-8") * 200 + b"\xe9" + " fim".encode("utf-8")  # one Latin-1 é in UTF-8
    assert decode_text(stray) == ("ação " * 200 + " fim", "utf-8 less 1 invalid byte sequence(s)")
    # a text's own U+FFFD is not an invalid sequence
    assert decode_text("ação \ufffd ".encode("utf-8") * 200 + b"\xff")[1] == "utf-8 less 1 invalid byte sequence(s)"
    # Latin-1 and Windows-1252 texts are not: nearly every accented letter is an invalid sequence
    assert decode_text("ação ".encode("utf-8") * 5 + "coração ".encode("cp1252") * 5)[1] == "cp1252"
    assert decode_text(b"ASCII and one \xe9")[1] == "cp1252"  # one invalid byte, no valid non-ASCII


def test_files_that_are_not_texts_are_named(tmp_path):
    from capitu.data.sources import other_files

    for name in ("a.txt", "b.md", "sub/c.pdf", "d.zip", ".DS_Store", "sub/e.txt.xz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert other_files(tmp_path) == ["b.md", "sub/c.pdf"]
    assert other_files(tmp_path / "a.txt") == []


def test_binary_data_is_refused():
    assert decode_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") == (None, "binary file")
    assert decode_text(bytes(range(0, 32)) * 10) == (None, "binary file")
