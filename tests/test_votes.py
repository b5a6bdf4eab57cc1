import math
import sqlite3

import pytest
from conftest import run_cli

from capitu.votes import bradley_terry, connect, elo, ranking, read_votes, record_vote


def test_two_models_strengths_are_the_win_odds():
    # without a prior, the Bradley-Terry MLE for two models is s_a / s_b = wins_a / wins_b
    votes = [("a", "b", "A")] * 3 + [("a", "b", "B")]
    strength = bradley_terry(votes, ["a", "b"], prior=0.0)
    assert strength["a"] / strength["b"] == pytest.approx(3.0, rel=1e-8)
    assert strength["a"] * strength["b"] == pytest.approx(1.0)  # geometric mean 1


def test_three_models_satisfy_the_likelihood_equations():
    votes = [("a", "b", "A"), ("a", "b", "A"), ("b", "a", "A"), ("b", "c", "A"), ("c", "b", "A"), ("c", "b", "tie"),
             ("a", "c", "A"), ("c", "a", "A"), ("a", "c", "bad")]
    s = bradley_terry(votes, ["a", "b", "c"], prior=0.0)
    wins = {"a": 0.0, "b": 0.0, "c": 0.0}
    games = {}
    for x, y, choice in votes:
        score = {"A": 1.0, "B": 0.0}.get(choice, 0.5)
        wins[x] += score
        wins[y] += 1 - score
        games[frozenset((x, y))] = games.get(frozenset((x, y)), 0) + 1
    for m in s:  # at the maximum: each model's wins equal its expected wins
        expected = sum(n * s[m] / (s[m] + s[o]) for pair, n in games.items() if m in pair for o in pair - {m})
        assert wins[m] == pytest.approx(expected, rel=1e-6)


def test_a_model_that_never_won_stays_finite_and_last():
    result = ranking([("a", "b", "A")] * 5, samples=50)
    first, last = result["models"]
    assert first["model"] == "a" and last["model"] == "b" and math.isfinite(last["score"])
    assert first["low"] <= first["score"] <= first["high"] and first["wins"] == 5 and last["losses"] == 5
    assert (first["score"] + last["score"]) / 2 == pytest.approx(1000) and elo(1.0) == 1000


def test_votes_are_committed_one_by_one_and_read_back(tmp_path):
    connection = connect(tmp_path / "votes.sqlite")
    record_vote(connection, "Era", ("a", "b"), ("x", "y"), {"seed": 1}, "tie")
    other = sqlite3.connect(tmp_path / "votes.sqlite")  # another process sees it at once
    assert other.execute("SELECT prompt, choice FROM votes").fetchall() == [("Era", "tie")]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        record_vote(connection, "Era", ("a", "b"), ("x", "y"), {}, "C")
    assert read_votes(tmp_path / "votes.sqlite") == [("a", "b", "tie")]


def test_capitu_votes_prints_an_empty_ranking_before_any_vote(tmp_path, capsys):
    code, out, _ = run_cli(["votes", tmp_path / "votes.sqlite", "--json"], capsys)
    assert code == 0 and '"models": []' in out
    code, _, err = run_cli(["votes", tmp_path / "nowhere" / "votes.sqlite"], capsys)
    assert code == 2 and "no votes file" in err
    code, _, err = run_cli(["votes", tmp_path / "mistyped-study"], capsys)  # a folder that is not there
    assert code == 2 and "mistyped-study is not a folder" in err
    code, out, _ = run_cli(["votes", tmp_path], capsys)  # a folder serve has not started on yet
    assert code == 0 and out.strip() == "no votes yet"
    (tmp_path / "bad.sqlite").write_text("not a database")
    code, _, err = run_cli(["votes", tmp_path / "bad.sqlite"], capsys)
    assert code == 2 and "not a capitu votes file" in err
