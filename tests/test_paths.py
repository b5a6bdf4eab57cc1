import os
import subprocess
import sys

import pytest

from capitu.errors import UserError
from capitu.paths import atomic_write_json, check_output, clean_leftovers, staged_folder


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_write_leaves_only_the_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == '{\n "x": 1\n}\n'


def test_check_output_refuses_a_file_a_full_folder_and_an_unwritable_place(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; give a folder"):
        check_output(tmp_path / "file", new=False)
    with pytest.raises(UserError, match="cannot create .* is a file"):
        check_output(tmp_path / "file" / "below", new=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="is not empty"):
        check_output(tmp_path / "full", new=True)
    assert check_output(tmp_path / "full", new=False) == tmp_path / "full"
    with pytest.raises(UserError, match="cannot write to /proc"):  # no one, not even root, creates files there
        check_output("/proc/capitu-out", new=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]  # the probes left nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_output_refuses_a_read_only_folder(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write to"):
            check_output(tmp_path / "ro" / "out", new=True)
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_staged_folder_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(out) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("killed mid-way")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_folder(out) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_clean_leftovers_removes_the_dead_restores_the_retired_and_spares_the_living(tmp_path):
    dead, living = dead_pid(), os.getppid()
    (tmp_path / f".model.safetensors.tmp-{dead}").write_text("half")
    (tmp_path / f".step-00000004.tmp-{dead}").mkdir()
    (tmp_path / f".best.old-{dead}").mkdir()  # replaced best/ retired, the new one never renamed in
    (tmp_path / f".best.old-{dead}" / "config.json").write_text("{}")
    (tmp_path / f".data.tmp-{living}").mkdir()  # another process is still writing it
    (tmp_path / ".hidden.tmp-notapid").write_text("not ours")
    cleaned = clean_leftovers(tmp_path)
    assert sorted(cleaned) == sorted([f".model.safetensors.tmp-{dead}", f".step-00000004.tmp-{dead}",
                                      f".best.old-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best", f".data.tmp-{living}", ".hidden.tmp-notapid"])
    assert (tmp_path / "best" / "config.json").read_text() == "{}"


def test_clean_leftovers_of_one_output_only(tmp_path):
    dead = dead_pid()
    (tmp_path / f".data.tmp-{dead}").mkdir()
    (tmp_path / f".other.tmp-{dead}").mkdir()
    assert clean_leftovers(tmp_path, only="data") == [f".data.tmp-{dead}"]
    assert [p.name for p in tmp_path.iterdir()] == [f".other.tmp-{dead}"]
