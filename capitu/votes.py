"""Blind votes between two models' continuations, and the ranking they give.

Votes live in SQLite (WAL mode, one committed row per vote: prompt, models, texts, settings, choice, time), so a
server stopped at any moment loses none. The ranking fits a Bradley–Terry model (P(i beats j) = s_i / (s_i + s_j))
by Hunter's (2004) minorise-maximise iterations; a tie, and "both bad", count half a win to each side. A weak prior,
one virtual tie between every two models, keeps a model that never won finite. Strengths are shown on the Elo scale
(400 log10 s + 1000, the mean model at 1000), with 95% bootstrap intervals (votes resampled with replacement)."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from pathlib import Path

from capitu.errors import UserError

CHOICES = ("A", "B", "tie", "bad")
METHOD = ("Bradley-Terry (minorise-maximise), ties and both-bad as half a win each, one virtual tie between every "
          "two models as a prior; Elo scale (400 log10 s + 1000); 95% bootstrap intervals over votes")
SCHEMA = """CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY, time TEXT NOT NULL, prompt TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
    text_a TEXT NOT NULL, text_b TEXT NOT NULL, settings TEXT NOT NULL, choice TEXT NOT NULL)"""


def connect(path: Path) -> sqlite3.Connection:
    """The votes file at `path`, made if it is not there."""
    try:
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(SCHEMA)
    except sqlite3.Error as error:  # a folder that is not there or not writable, a file that is not SQLite
        raise UserError(f"cannot use {path} as the votes file: {error}") from None
    return connection


def record_vote(connection: sqlite3.Connection, prompt: str, models: tuple[str, str], texts: tuple[str, str],
                settings: dict, choice: str) -> None:
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}")
    with connection:  # one transaction, committed when the block ends
        connection.execute(
            "INSERT INTO votes (time, prompt, model_a, model_b, text_a, text_b, settings, choice) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (time.strftime("%Y-%m-%dT%H:%M:%S"), prompt, *models, *texts, json.dumps(settings), choice))


def vote_rows(connection: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(model_a, model_b, choice) of every vote, in the order cast: what `ranking` reads."""
    return connection.execute("SELECT model_a, model_b, choice FROM votes ORDER BY id").fetchall()


def read_votes(path: Path) -> list[tuple[str, str, str]]:
    """(model_a, model_b, choice) of every vote in the file at `path`; none when the file is
    not there yet (its folder is)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"no votes file at {path}: {path.parent} is not a folder")
    if not path.exists():
        return []
    if not path.is_file():
        raise UserError(f"{path} is not a votes file")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = vote_rows(connection)
        connection.close()
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path}: not a capitu votes file ({error})") from None
    return rows


def bradley_terry(votes: list[tuple[str, str, str]], models: list[str], prior: float = 1.0,
                  iterations: int = 500) -> dict[str, float]:
    """Bradley–Terry strengths (geometric mean 1) by minorise-maximise; `prior` virtual ties
    between every two models."""
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = [[0.0] * n for _ in range(n)]  # wins[i][j]: i's wins over j (ties: half each)
    for a, b, choice in votes:
        i, j = index[a], index[b]
        score = {"A": 1.0, "B": 0.0}.get(choice, 0.5)
        wins[i][j] += score
        wins[j][i] += 1 - score
    for i in range(n):
        for j in range(n):
            if i != j:
                wins[i][j] += prior / 2
    games = [[wins[i][j] + wins[j][i] for j in range(n)] for i in range(n)]
    strength = [1.0] * n
    for _ in range(iterations):
        updated = []
        for i in range(n):
            total_wins = sum(wins[i])
            denominator = sum(games[i][j] / (strength[i] + strength[j]) for j in range(n) if j != i and games[i][j])
            updated.append(total_wins / denominator if denominator else strength[i])
        scale = math.exp(sum(math.log(s) for s in updated) / n)
        converged = max(abs(u / scale - s) for u, s in zip(updated, strength)) < 1e-10
        strength = [u / scale for u in updated]
        if converged:
            break
    return dict(zip(models, strength))


def elo(strength: float) -> float:
    return 400 * math.log10(strength) + 1000


def ranking(votes: list[tuple[str, str, str]], samples: int = 200, seed: int = 0) -> dict:
    """Strengths on the Elo scale with 95% bootstrap intervals, and vote counts per model."""
    models = sorted({m for a, b, _ in votes for m in (a, b)})
    counts = {m: {"votes": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0} for m in models}
    for a, b, choice in votes:
        for me, side in ((a, "A"), (b, "B")):
            counts[me]["votes"] += 1
            if choice in ("tie", "bad"):
                counts[me]["ties" if choice == "tie" else "both_bad"] += 1
            else:
                counts[me]["wins" if choice == side else "losses"] += 1
    if not models:
        return {"votes": 0, "models": [], "method": METHOD}
    point = bradley_terry(votes, models)
    chooser = random.Random(seed)
    draws = {m: [] for m in models}
    for _ in range(samples):
        resampled = [chooser.choice(votes) for _ in votes]
        for m, s in bradley_terry(resampled, models).items():
            draws[m].append(elo(s))
    entries = []
    for m in models:
        values = sorted(draws[m])
        low, high = values[int(0.025 * (len(values) - 1))], values[int(round(0.975 * (len(values) - 1)))]
        entries.append({"model": m, "score": elo(point[m]), "low": low, "high": high, **counts[m]})
    entries.sort(key=lambda e: -e["score"])
    return {"votes": len(votes), "models": entries, "method": METHOD}


def format_ranking(result: dict) -> str:
    if not result["models"]:
        return "no votes yet"
    lines = [f"{result['votes']} votes; Bradley–Terry strength on the Elo scale, 95% bootstrap interval",
             f"{'model':<16} {'score':>7} {'interval':>15} {'votes':>6} {'wins':>5} {'losses':>6} {'ties':>5} "
             f"{'bad':>4}"]
    for e in result["models"]:
        lines.append(f"{e['model']:<16} {e['score']:>7.0f} {e['low']:>7.0f}-{e['high']:<7.0f} {e['votes']:>6} "
                     f"{e['wins']:>5} {e['losses']:>6} {e['ties']:>5} {e['both_bad']:>4}")
    return "\n".join(lines)
