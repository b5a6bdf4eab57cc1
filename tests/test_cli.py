import subprocess
import sys

from conftest import run_cli


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
