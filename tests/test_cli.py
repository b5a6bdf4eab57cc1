import subprocess
import sys

import pytest

from conftest import make_run, run_cli


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "prepare" in out


def test_prepare_help(capsys):
    code, out, _ = run_cli(["prepare", "--help"], capsys)
    assert code == 0 and "--vocab-size" in out and "--source" in out


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "capitu", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("capitu ")


def test_missing_required_argument_exits_2(capsys):
    code, _, err = run_cli(["prepare"], capsys)
    assert code == 2 and "--source" in err


@pytest.mark.parametrize("args, message", [
    (["prepare"], "the following arguments are required: --source"),
    (["train", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["models", "--vocab-size", "1000000000"], "vocab size must be between 1 and"),
    (["bench", "--preset", "tiny", "--prompt-length", "1000"], "a prompt of 1000 tokens leaves no room"),
])
def test_bad_input_is_one_line_with_exit_2(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err and "Traceback" not in err


def test_eval_of_an_empty_text_is_a_clear_error(tmp_path, prepared_char, capsys):
    make_run(tmp_path / "run", prepared_char)
    (tmp_path / "empty.txt").write_text("   \n\n", encoding="utf-8")
    code, _, err = run_cli(["eval", tmp_path / "run", "--text", tmp_path / "empty.txt"], capsys)
    assert code == 2 and "holds no text to score" in err, err
