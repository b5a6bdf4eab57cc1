"""Find and read the texts of a source: a folder, a (compressed) text file or an archive.

Every text comes out as a `RawDocument` (its name and its bytes); `decode_text` then turns
bytes into a string, detecting the legacy encodings that old Portuguese files use."""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from capitu.errors import UserError

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {".gz": gzip.decompress, ".xz": lzma.decompress,
                                                    ".bz2": bz2.decompress}
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz", ".txt.bz2")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


@dataclass
class RawDocument:
    name: str  # where it came from: a path relative to the source, or "archive.zip/member"
    data: bytes | None  # the decompressed bytes; None when they could not be read
    problem: str = ""  # why data is None


def is_text_name(name: str) -> bool:
    return name.lower().endswith(TEXT_SUFFIXES)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def other_files(source: Path) -> list[str]:
    """The files under a folder that are neither texts nor archives, which list_inputs leaves out (hidden ones,
    .DS_Store say, not counted), by their paths under it."""
    if not source.is_dir():
        return []
    return sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()
                  and not p.name.startswith(".") and not (is_text_name(p.name) or is_archive_name(p.name)))


def list_inputs(source: Path) -> list[Path]:
    """The text files and archives under `source` (recursive), sorted for a stable order."""
    if not source.exists():
        raise UserError(f"source not found: {source}")
    if source.is_file():
        if not (is_text_name(source.name) or is_archive_name(source.name)):
            raise UserError(f"{source}: not a text file or archive (expected one of "
                            f"{', '.join(TEXT_SUFFIXES + ARCHIVE_SUFFIXES)})")
        return [source]
    found = [p for p in source.rglob("*") if p.is_file() and (is_text_name(p.name) or is_archive_name(p.name))]
    if not found:
        raise UserError(f"no .txt files or archives found under {source}")
    return sorted(found, key=lambda p: p.relative_to(source).as_posix())


def decompress(name: str, data: bytes) -> bytes:
    for suffix, function in COMPRESSORS.items():
        if name.lower().endswith(suffix):
            return function(data)
    return data


def read_text_file(path: Path, name: str) -> RawDocument:
    try:
        return RawDocument(name, decompress(name, path.read_bytes()))
    except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile, ValueError) as error:
        return RawDocument(name, None, f"cannot read: {error}")


def iter_archive(path: Path, name: str) -> Iterator[RawDocument]:
    """The text members of a zip or tar archive, in name order."""
    try:
        if name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = sorted(info.filename for info in archive.infolist() if not info.is_dir())
                for member in members:
                    if is_text_name(member):
                        yield _member(f"{name}/{member}", lambda m=member: archive.read(m))
        else:
            with tarfile.open(path) as archive:
                members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
                for member in members:
                    if is_text_name(member.name):
                        reader = lambda m=member: archive.extractfile(m).read()  # noqa: E731
                        yield _member(f"{name}/{member.name}", reader)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError) as error:
        yield RawDocument(name, None, f"cannot read archive: {error}")


def _member(name: str, read: Callable[[], bytes]) -> RawDocument:
    try:
        return RawDocument(name, decompress(name, read()))
    except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile, zipfile.BadZipFile) as error:
        return RawDocument(name, None, f"cannot read: {error}")


def iter_documents(source: Path, inputs: list[Path]) -> Iterator[RawDocument]:
    """Every text under `source`, archives expanded, named relative to `source`."""
    root = source if source.is_dir() else source.parent
    for path in inputs:
        name = path.relative_to(root).as_posix()
        if is_archive_name(path.name):
            yield from iter_archive(path, name)
        else:
            yield read_text_file(path, name)


# --- decoding -------------------------------------------------------------------------

def looks_binary(data: bytes) -> bool:
    """NUL bytes, or many control bytes, mean this is not a text file."""
    sample = data[:65536]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for byte in sample if byte < 32 and byte not in b"\t\n\r\f")
    return controls / len(sample) > 0.01


# a file is UTF-8 with a few broken sequences (cut in the middle of a character, a stray byte) when they are at most
# this share of its non-ASCII characters; in a Latin-1 or Windows-1252 file nearly every accented letter is one
MOSTLY_UTF8 = 0.01


def decode_text(data: bytes) -> tuple[str | None, str]:
    """(text, encoding) or (None, reason). UTF-8 first, then UTF-8 with its few invalid sequences dropped; then
    Windows-1252 and Latin-1.

    Windows-1252 is tried before Latin-1 because it is what Windows editors wrote for
    Portuguese; Latin-1 catches the five byte values that Windows-1252 leaves undefined. Read as
    Windows-1252, a UTF-8 file with one broken byte would have every accented letter garbled (ã as Ã£)."""
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                return None, "undecodable UTF-16"
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if looks_binary(data):
        return None, "binary file"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    lenient = data.decode("utf-8", errors="replace")  # each invalid sequence as one U+FFFD
    replaced = lenient.count("\ufffd")
    invalid = replaced - data.count("\ufffd".encode("utf-8"))
    valid = sum(1 for character in lenient if character > "\x7f") - replaced
    if invalid <= MOSTLY_UTF8 * (valid + invalid):
        return data.decode("utf-8", errors="ignore"), f"utf-8 less {invalid} invalid byte sequence(s)"
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"
