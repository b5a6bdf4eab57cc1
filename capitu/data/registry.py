"""Named public-domain sources: download once into a cache, verify every text, reuse.

A source is an archive URL plus the SHA-256 of each text file inside it. The texts, not the archive's bytes, are
verified: a host may rebuild an archive (and change its bytes) while the texts stay the same."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import unicodedata
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from capitu.errors import UserError

REGISTRY_DIR = Path(__file__).parent / "registry"


@dataclass(frozen=True)
class NamedSource:
    name: str
    description: str
    url: str
    members: str  # the folder inside the archive (below its top folder) that holds the texts
    sha256: dict[str, str]  # path inside the archive (below its top folder) -> SHA-256


def load_registry() -> dict[str, NamedSource]:
    sources = {}
    for path in sorted(REGISTRY_DIR.glob("*.json")):
        entry = json.loads(path.read_text(encoding="utf-8"))
        sources[entry["name"]] = NamedSource(**entry)
    return sources


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAPITU_CACHE", Path.home() / ".cache" / "capitu"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url: str, destination: Path) -> None:
    """Stream `url` to `destination` with a progress bar; atomic (a .part file renamed)."""
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {destination.name}",
                      disable=None) as bar:  # on a terminal only, as every capitu bar
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot download {url}: {reason}") from None
    partial.replace(destination)


def extract_verified(source: NamedSource, archive_path: Path, texts_dir: Path) -> None:
    """Write every listed text of the archive into `texts_dir`, checking its SHA-256."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(archive_path.read_bytes()))
    except zipfile.BadZipFile:
        raise UserError(f"{source.name}: the downloaded file is not a zip archive") from None
    found: dict[str, bytes] = {}
    for info in archive.infolist():
        # "repo-commit/txt/conto/x.txt" -> "txt/conto/x.txt"; NFC because zips may hold NFD
        inner = unicodedata.normalize("NFC", info.filename.partition("/")[2])
        if inner in source.sha256:
            found[inner] = archive.read(info)
    missing = sorted(set(source.sha256) - set(found))
    if missing:
        raise UserError(f"{source.name}: {len(missing)} expected texts missing from the archive, e.g. {missing[0]}")
    for inner, data in found.items():
        actual = sha256_bytes(data)
        if actual != source.sha256[inner]:
            raise UserError(f"{source.name}: checksum mismatch for {inner}: expected {source.sha256[inner][:16]}…, "
                            f"got {actual[:16]}…")
    staging = texts_dir.with_name(texts_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for inner, data in found.items():
        target = staging / inner.removeprefix(source.members)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    shutil.rmtree(texts_dir, ignore_errors=True)
    staging.rename(texts_dir)


def texts_are_verified(source: NamedSource, texts_dir: Path) -> bool:
    for inner, expected in source.sha256.items():
        path = texts_dir / inner.removeprefix(source.members)
        if not path.is_file() or sha256_bytes(path.read_bytes()) != expected:
            return False
    return True


def fetch(name: str, cache_dir: Path, registry: dict[str, NamedSource] | None = None) -> Path:
    """The folder of verified texts of a named source, downloading it the first time."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise UserError(f"unknown source '{name}' (known: {', '.join(sorted(registry))})")
    source = registry[name]
    home = cache_dir / name
    texts_dir = home / "texts"
    if texts_dir.is_dir() and texts_are_verified(source, texts_dir):
        return texts_dir
    home.mkdir(parents=True, exist_ok=True)
    archive_path = home / "archive.zip"
    download(source.url, archive_path)
    try:
        extract_verified(source, archive_path, texts_dir)
    finally:
        archive_path.unlink(missing_ok=True)  # the verified texts are what we keep
    return texts_dir
