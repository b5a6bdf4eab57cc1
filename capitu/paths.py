"""Where capitu writes: checked before any work, then written whole or not at all.

Every command that writes goes through here. An output is checked first (`check_output`): a path that is a file, a
folder that must be new but is not empty, or a place that cannot be written is a one-line error before any work is
done. Files are written under a temporary name, flushed and renamed (`atomic_write_bytes`); folders are built under
a temporary name and renamed into place (`staged_folder`). Temporary names carry the writer's PID (`.NAME.tmp-PID`,
and `.NAME.old-PID` for a folder being replaced), so the next start can remove what a killed process left behind
(`clean_leftovers`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from capitu.errors import UserError

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    partial = temporary_name(path)
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def atomic_write_json(path: Path, content: dict) -> None:
    atomic_write_bytes(path, (json.dumps(content, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def check_writable(path: Path) -> None:
    """That `path` (a folder, made if missing) can be created and written, by trying: the
    permission bits do not tell for root, read-only mounts or full disks."""
    existing = Path(os.path.abspath(path))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {path}: {existing} is a file")
    probe = existing / f".capitu-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {existing}: {error.strerror or error}") from None


def check_output(path: Path, new: bool, flag: str = "--out", ignore: tuple[str, ...] = ()) -> Path:
    """Check an output folder before any work: not a file, empty (but for the names in `ignore`)
    or missing when `new`, and writable. Returns it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    if new and path.is_dir() and any(entry.name not in ignore for entry in path.iterdir()):
        raise UserError(f"{flag} {path} is not empty; give a new or empty folder")
    check_writable(path)
    return path


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished `staging` to `out`, replacing what is there with two renames; a crash
    between them leaves `.OUT.old-PID`, which `clean_leftovers` puts back."""
    if out.exists():
        retired = temporary_name(out, "old")
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)
    fsync_folder(out.parent)


@contextmanager
def staged_folder(out: Path):
    """Yield a temporary folder beside `out`; when the block ends without an error its files
    are flushed and it becomes `out` in one rename; otherwise it is removed."""
    staging = temporary_name(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_file(path)
        fsync_folder(staging)
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier write of this process that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_leftovers(folder: Path, only: str | None = None) -> list[str]:
    """Remove the temporary files and folders that a killed writer left in `folder` (for the
    output `only`, or for every output), and put back a folder whose replacement did not
    finish. Leftovers of a live process are not touched. Returns what was cleaned."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cleaned = []
    for path in sorted(folder.iterdir()):
        match = LEFTOVER.match(path.name)
        if not match or (only is not None and match["name"] != only) or alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists():
            path.rename(target)  # the replacement never arrived: the previous version stays
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        cleaned.append(path.name)
    return cleaned
