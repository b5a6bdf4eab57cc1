import base64
import copy
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from capitu.study.config import load_study

MICRO = """
[study]
seeds = {seeds}
tokens = {tokens}
set = ["model.n_layer=1", "model.n_embd=32", "model.n_head=4", "model.block_size=32", "model.pos=learned",
       "model.tie_embeddings=true", "optim.micro_batch=8",
       "optim.batch_tokens=256", "optim.warmup_steps=2", "run.eval_every={eval_every}", "run.eval_windows=4",
       "run.checkpoint_every=5"]
eval_lengths = [16, 64]
prompts = ["Capitu tinha olhos de", "Era uma vez"]
new_tokens = 4
bench = {bench}
bench_train_steps = 1
bench_repeats = 1
bench_rounds = 2
budget = "{budget}"
ud = "{folder}/mini.conllu"

[study.eval_texts]
written = ["{folder}/written.txt"]
poetry = ["{folder}/poetry"]

[[variant]]
name = "baseline"

[[variant]]
name = "rope"
set = ["model.pos=rope"]
"""
SECTIONS = ["Setup", "Findings", "Budget", "Results", "Speed and memory", "Generalization", "Plots", "Generations",
            "Reproducibility"]


# Texts unlike the training data, written here: the study scores every run on them
WRITTEN = ("O navio saiu do porto ao amanhecer, e os marinheiros cantavam enquanto a cidade desaparecia no "
           "nevoeiro.\n\nNa aldeia, as mulheres esperavam notícias que só chegavam com o correio da semana.\n")


def micro_config(folder, seeds=2, tokens=2048, eval_every=4, bench="true", budget="tokens"):
    from test_pairs import CONLLU

    (folder / "mini.conllu").write_text(CONLLU, encoding="utf-8")
    (folder / "written.txt").write_text(WRITTEN * 3, encoding="utf-8")
    (folder / "poetry").mkdir(exist_ok=True)
    (folder / "poetry" / "a.txt").write_text("Tudo vale a pena\nSe a alma não é pequena.\n" * 8, encoding="utf-8")
    path = folder / "study.toml"
    path.write_text(MICRO.format(seeds=seeds, tokens=tokens, eval_every=eval_every, bench=bench, budget=budget,
                                 folder=folder.as_posix()), encoding="utf-8")
    return path


def study_command(config, data, out, *more) -> list[str]:
    """`capitu study` on the micro config, as a child process (with `child_env()`) runs it."""
    return [sys.executable, "-m", "capitu", "study", "--config", str(config), "--data", str(data), "--out", str(out),
            "--quiet", *more]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def micro_study(prepared_bpe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    from capitu.cli import main

    code = main(["study", "--config", str(micro_config(folder)), "--data", str(prepared_bpe), "--out",
                 str(folder / "out"), "--quiet", "--device", "cpu"])
    assert code == 0
    return folder / "out"


def table_rows(markdown: str, first_header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header starts with `first_header`, by first cell."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def mean_std(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def test_micro_study_writes_every_file_and_section(micro_study):
    for name in ("report.md", "report.html", "results.json", "results.csv", "generations.json",
                 "plots/val_loss.png", "plots/lengths.png", "plots/speed.png", "plots/memory.png"):
        assert (micro_study / name).is_file(), name
    for variant in ("baseline", "rope"):
        for seed in (1337, 1338):
            assert (micro_study / "runs" / f"{variant}-s{seed}" / "eval_test.json").is_file()
    report = (micro_study / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"\n## {section}\n" in report
    assert "«Capitu tinha olhos de»" in report and "| rope | Era uma vez" in report
    assert "paired t-test" in report and "Extrapolation" in report
    assert "Decoding ran through the compiled step for baseline, rope (compiling took" in report
    # the training time stays in the report however the study was run: the runs' own seconds, summed
    logs = [micro_study / "runs" / f"{variant}-s{seed}" / "metrics.jsonl" for variant in ("baseline", "rope")
            for seed in (1337, 1338)]
    trained = sum(json.loads(log.read_text().splitlines()[-1])["elapsed_s"] for log in logs)
    assert f"the runs' training {trained:,.0f} s in all" in report


def test_report_numbers_equal_the_runs_eval_json(micro_study):
    report = (micro_study / "report.md").read_text(encoding="utf-8")
    rows = table_rows(report, "variant | parameters")
    speeds = table_rows(report, "variant | train tok/s")
    results = json.loads((micro_study / "results.json").read_text())
    csv_rows = {row["variant"]: row for row in csv.DictReader((micro_study / "results.csv").open())}
    losses = {}
    for variant in ("baseline", "rope"):
        evals = [json.loads((micro_study / "runs" / f"{variant}-s{seed}" / "eval_test.json").read_text())
                 for seed in (1337, 1338)]
        losses[variant] = [e["loss"] for e in evals]
        ppl, ppl_std = mean_std([e["ppl"] for e in evals])
        bpb, bpb_std = mean_std([e["bpb"] for e in evals])
        assert rows[variant][2] == "2,048"  # equal tokens
        assert rows[variant][3] == f"{ppl:,.2f} ± {ppl_std:,.2f}"
        assert rows[variant][4] == f"{bpb:,.4f} ± {bpb_std:,.4f}"
        assert float(csv_rows[variant]["ppl_mean"]) == pytest.approx(ppl, rel=1e-12)
        entry = next(e for e in results["variants"] if e["name"] == variant)
        assert entry["bpb"]["values"] == [e["bpb"] for e in evals]  # per seed, in seed order
        assert entry["budget"]["budget"] == "tokens" and entry["budget"]["tokens"] == 2048
        assert entry["word_ppl"]["mean"] == pytest.approx(mean_std([e["word_ppl"] for e in evals])[0], rel=1e-12)
        rounds = json.loads((micro_study / "runs" / f"{variant}-s1337" / "bench.json").read_text())["rounds"]
        assert len(rounds) == 2
        assert entry["bench"]["spread"]["train_tok_s"]["values"] == [r["train_tok_s"] for r in rounds]
        timings = [[r["train_tok_s"] for r in rounds]] + [[r[key][batch] for r in rounds] for key in (
            "prefill_tok_s", "decode_tok_s") for batch in ("1", "16")]
        for column, rates in enumerate(map(sorted, timings), 1):  # the median of two, and the range
            assert speeds[variant][column] == f"{sum(rates) / 2:,.0f} ({rates[0]:,.0f}-{rates[1]:,.0f})", column
        assert speeds[variant][6:] == [f"{rounds[0][key] / 2**20:,.0f}" for key in (
            "peak_train_bytes", "peak_generate_bytes")] + [f"{rounds[0]['kv_bytes_per_token']['shapes']:,}"]
        assert rows[variant][10] == f"{entry['grammar']['mean']:.1%} ± {entry['grammar']['std']:.1%}"
        for column, key in ((8, "ppmd"), (9, "ngram")):  # the distance to each reference, from the two files
            assert float(rows[variant][column]) == pytest.approx(bpb - results["references"][key]["bpb"], abs=1e-4)
        assert all(r["decode_path"] == "compiled" and r["compile_s"] > 0 for r in rounds)  # the default path
    # the p-value, independently: 2 seeds, t with 1 degree of freedom (Cauchy tail)
    d = [a - b for a, b in zip(losses["rope"], losses["baseline"])]
    t = (sum(d) / 2) / (abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2))
    p = 1 - 2 / math.pi * math.atan(abs(t))
    assert float(rows["rope"][7]) == pytest.approx(p, rel=2e-3, abs=1e-3)
    assert float(csv_rows["rope"]["p_vs_baseline"]) == pytest.approx(p, rel=1e-9)


def test_generalization_numbers_equal_capitu_eval_on_the_same_texts_and_pairs(micro_study, capsys):
    """Each run's out-of-domain bits per byte and grammar accuracy in results.json, results.csv and the report, against
    `capitu eval --text` and `capitu eval --pairs` run separately on the same inputs."""
    folder = micro_study.parent
    results = json.loads((micro_study / "results.json").read_text())
    report = (micro_study / "report.md").read_text(encoding="utf-8")
    csv_rows = {row["variant"]: row for row in csv.DictReader((micro_study / "results.csv").open())}
    found = results["generalization"]
    assert set(found["texts"]) == {"written", "poetry"} and found["pairs"]["n"] == len(
        (micro_study / "generalization" / "pairs.jsonl").read_text().splitlines())
    for variant in ("baseline", "rope"):
        entry = next(e for e in results["variants"] if e["name"] == variant)
        accuracies = []
        for seed in (1337, 1338):
            run = micro_study / "runs" / f"{variant}-s{seed}"
            code, out, err = run_cli(["eval", run, "--text", folder / "written.txt", "--json", "--quiet"], capsys)
            assert code == 0, err
            assert entry["out_of_domain"]["written"]["bpb"]["per_seed"][str(seed)] == pytest.approx(
                json.loads(out)["bpb"], rel=1e-9)
            code, out, err = run_cli(["eval", run, "--pairs", micro_study / "generalization" / "pairs.jsonl",
                                      "--json", "--quiet"], capsys)
            assert code == 0, err
            accuracies.append(json.loads(out)["pairs"]["accuracy"])
        assert entry["grammar"]["values"] == accuracies and entry["grammar"]["per_seed"]["1338"] == accuracies[1]
        assert float(csv_rows[variant]["grammar_mean"]) == pytest.approx(sum(accuracies) / 2)
        assert float(csv_rows[variant]["bpb_written_mean"]) == pytest.approx(
            entry["out_of_domain"]["written"]["bpb"]["mean"])
        ratio = entry["out_of_domain"]["poetry"]["bpb"]["mean"] / entry["bpb"]["mean"]
        assert f"x{ratio:.3f}" in table_rows(report, "variant | test split bits/byte")[variant]
    assert "reference: unigram of the training split" in table_rows(report, f"variant | all ({found['pairs']['n']:,})")
    assert any(line.startswith("Grammar, minimal pairs") for line in results["findings"])
    assert any(line.startswith("Out of domain, written") for line in results["findings"])


def test_the_references_stand_in_the_table_findings_generations_and_plots(micro_study, prepared_bpe):
    from capitu.references import references

    results = json.loads((micro_study / "results.json").read_text())
    expected, _ = references(prepared_bpe)
    for key in ("ppmd", "ppmd_alone", "xz", "ngram"):
        assert results["references"][key]["bpb"] == expected[key]["bpb"]
    report = (micro_study / "report.md").read_text(encoding="utf-8")
    rows = table_rows(report, "variant | parameters")
    order = expected["ngram"]["order"]
    assert rows[f"reference: Kneser-Ney {order}-gram (BPE tokens)"][4] == f"{expected['ngram']['bpb']:.4f}"
    assert rows["reference: xz -9e, the text alone"][2] == "none"
    findings = report.split("## Findings")[1]
    assert findings.lstrip().startswith("- Against the references on the same test split")
    generations = report.split("## Generations")[1]
    tables = generations.split("Writing numbers")
    assert tables[0].count(f"| reference: Kneser-Ney {order}-gram |") == 2  # one per prompt
    assert f"| reference: Kneser-Ney {order}-gram | " in tables[1]
    saved = json.loads((micro_study / "references.json").read_text())
    assert saved["val_loss"]["ngram"] == saved["ngram"]["val_loss_by_order"][str(order)]


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_is_self_contained(micro_study):
    page = (micro_study / "report.html").read_text(encoding="utf-8")
    parser = Collector()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("table") >= 4  # results, lengths, one per prompt
    assert len(parser.images) == 4
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    text = "".join(parser.text)
    rows = table_rows((micro_study / "report.md").read_text(encoding="utf-8"), "variant | parameters")
    for cells in rows.values():
        for value in cells:
            assert value in text
    for section in SECTIONS:
        assert section in text


def test_study_stopped_mid_way_resumes(prepared_bpe, tmp_path):
    config = micro_config(tmp_path, seeds=1, tokens=256 * 400, eval_every=100, bench="false")
    out = tmp_path / "out"
    command, env = study_command(config, prepared_bpe, out), child_env()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoints = out / "runs" / "rope-s1337" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "run the same command to continue" in err

    baseline, rope = out / "runs" / "baseline-s1337", out / "runs" / "rope-s1337"
    assert (baseline / "eval_test.json").exists()
    finished_weights = (baseline / "model.safetensors").stat().st_mtime_ns
    stopped_at = json.loads((rope / "config.json").read_text())["step"]
    total = json.loads((rope / "run.json").read_text())["total_steps"]
    assert 0 < stopped_at < total
    run_info = (rope / "run.json").read_text()

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "trained already" in again.stdout and f"resumed at step {stopped_at}" in again.stdout
    assert (baseline / "model.safetensors").stat().st_mtime_ns == finished_weights
    assert (rope / "run.json").read_text() == run_info  # resumed, not started again
    steps = [json.loads(line)["step"] for line in (rope / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert (out / "report.md").exists()


def test_two_shards_at_once_then_the_report_equal_the_study_run_whole(micro_study, prepared_bpe, tmp_path, capsys):
    """--shard 1/2 and 2/2 started together into one folder, then the command without --shard: the same per-seed
    bits per byte as micro_study (the same settings, run whole), and nothing trained twice."""
    config = micro_config(tmp_path, bench="false")
    out = tmp_path / "out"
    command, env = study_command(config, prepared_bpe, out, "--device", "cpu"), child_env()
    shards = [subprocess.Popen(command + ["--shard", f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for k in (1, 2)]
    outputs = [shard.communicate(timeout=600) for shard in shards]
    assert all(shard.returncode == 0 for shard in shards), [err for _, err in outputs]
    assert all("run(s)" in printed and "trained" in printed for printed, _ in outputs)
    trained = sorted(line.split("]")[1].strip() for printed, _ in outputs for line in printed.splitlines()
                     if line.startswith("["))
    assert len(trained) == 4 and len({line.split(" (")[0] for line in trained}) == 4  # disjoint, all of them
    assert not (out / "report.md").exists()
    final = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert final.returncode == 0, final.stderr
    assert final.stdout.count("trained already") == 4
    whole = json.loads((micro_study / "results.json").read_text())
    sharded = json.loads((out / "results.json").read_text())
    for a, b in zip(whole["variants"], sharded["variants"]):
        assert a["name"] == b["name"] and a["bpb"]["values"] == b["bpb"]["values"]
    # it ends with the results, best first, each as the report has it, and the references
    printed = final.stdout.splitlines()
    table = printed[printed.index(next(line for line in printed if line.startswith("study done in"))) + 1:]
    assert table[0].split() == ["variant", "test", "bits/byte", "vs", "PPMd", "vs", "n-gram", "p", "vs", "baseline",
                                "grammar"]
    rows = table_rows((out / "report.md").read_text(encoding="utf-8"), "variant | parameters")
    best_first = sorted(sharded["variants"], key=lambda v: v["bpb"]["mean"])
    assert [line.split()[0] for line in table[1:3]] == [v["name"] for v in best_first]
    for line in table[1:3]:
        assert rows[line.split()[0]][4] in line  # its bits per byte, mean ± sd
    assert table[3].startswith("references (bits/byte): PPMd primed with train ")
    assert f"{sharded['references']['ngram']['bpb']:.4f}" in table[3] and len(table) == 4
    for bad in ("3/2", "x", "0/2"):
        code, _, err = run_cli(["study", "--config", config, "--data", prepared_bpe, "--out", tmp_path / "o",
                                "--shard", bad], capsys)
        assert code == 2 and err.count("\n") == 1 and "--shard must be K/N" in err


def test_jobs_runs_the_shards_then_reports_as_the_study_run_whole(micro_study, prepared_bpe, tmp_path, capsys):
    """--jobs 2: two shard processes at once (their lines relayed with a prefix), then bench and report in the
    calling process; the same per-seed bits per byte as micro_study."""
    config = micro_config(tmp_path, bench="false")
    out = tmp_path / "out"
    command = study_command(config, prepared_bpe, out, "--device", "cpu", "--jobs", "2")
    wall = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=child_env())
    wall = time.perf_counter() - wall
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for k in (1, 2):
        assert sum(line.startswith(f"[shard {k}/2] [") for line in lines) == 2  # two runs each
        assert any(line.startswith(f"[shard {k}/2] shard {k}/2 done") for line in lines)
    assert sum("trained already" in line for line in lines if not line.startswith("[shard")) == 4
    # the study's time is the command's, the shards' included: at least the slower shard's, at most the wall clock's

    def seconds(line: str, before: str) -> int:
        minutes, secs = re.search(before + r" (?:(\d+)m)?(\d+)s", line).groups()
        return int(minutes or 0) * 60 + int(secs)

    shards = max(seconds(line, r"run\(s\) in") for line in lines if " done: " in line)
    study = seconds(next(line for line in lines if line.startswith("study done in")), "study done in")
    invocation = int(re.search(r"this invocation ([\d,]+) s", (out / "report.md").read_text()).group(1))
    assert shards <= study <= wall + 1 and shards <= invocation <= wall + 1, (shards, study, invocation, wall)
    whole = json.loads((micro_study / "results.json").read_text())
    jobs = json.loads((out / "results.json").read_text())
    assert [v["bpb"]["values"] for v in whole["variants"]] == [v["bpb"]["values"] for v in jobs["variants"]]
    for bad in (["--jobs", "0"], ["--jobs", "2", "--shard", "1/2"]):
        code, _, err = run_cli(["study", "--config", config, "--data", prepared_bpe, "--out", tmp_path / "o", *bad],
                               capsys)
        assert code == 2 and err.count("\n") == 1 and "--jobs must be a positive number" in err


def study_processes(out) -> list[int]:
    """The processes whose command line names the study folder `out` (Linux's /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(out).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # ended while being read
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the shards' processes through /proc")
def test_jobs_stopped_by_sigterm_stop_their_shards(prepared_bpe, tmp_path):
    """SIGTERM to `capitu study --jobs 2` (a scheduler's cancel, `timeout`) stops the shards too, rather than leaving
    them training; the error is one line, exit code 2."""
    out = tmp_path / "out"
    command = study_command(micro_config(tmp_path, seeds=1, tokens=10**8), prepared_bpe, out, "--device", "cpu",
                            "--jobs", "2")
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    watchdog = threading.Timer(120, parent.kill)  # should the line below never come, the wait ends (and the test fails)
    watchdog.start()
    try:
        started = any(line.startswith("[shard 1/2] [1/") for line in parent.stdout)  # shard 1 trains its first run
        watchdog.cancel()
        assert started, "shard 1 never started a run"
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=120)
        assert parent.returncode == 2 and err.count("\n") == 1 and "stopped by SIGTERM" in err, err
        assert study_processes(out) == []
    finally:
        for pid in study_processes(out):
            os.kill(pid, signal.SIGKILL)
        parent.kill()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="sees the shard wait for the lock through /proc/locks")
def test_a_shard_looks_at_the_folder_only_under_the_setup_lock(prepared_bpe, tmp_path):
    """Another shard holding the setup lock may have a file half-written and no plan yet: a shard started beside it
    waits for the lock before it judges the folder, instead of calling it not empty."""
    import fcntl

    from capitu.folders import StudyFolder
    from capitu.study.runner import SETUP_LOCK

    out = tmp_path / "out"
    out.mkdir()
    with open(out / SETUP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other shard, setting the study up
        (out / ".study.json.tmp").write_text("{")  # its plan, being written
        command = study_command(micro_config(tmp_path, seeds=1), prepared_bpe, out, "--device", "cpu", "--shard", "2/2")
        shard = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        deadline = time.monotonic() + 120
        while shard.poll() is None and time.monotonic() < deadline:  # until it waits for the lock, or has ended
            if any("->" in line and f" {shard.pid} " in line for line in Path("/proc/locks").read_text().splitlines()):
                break
            time.sleep(0.05)
        (out / ".study.json.tmp").unlink()  # the other shard gave up: the folder is empty again
    _, err = shard.communicate(timeout=600)
    assert shard.returncode == 0, err
    assert StudyFolder(out).plan.is_file() and StudyFolder(out).run("rope", 1337).is_dir()  # shard 2/2: the 2nd run


def test_each_measures_comparisons_with_the_baseline_are_adjusted_as_one_family(micro_study, tmp_path):
    """A twin of rope (its runs copied) makes each family two equal tests: Holm takes each p to twice its own (the
    smaller times 2, the other raised to it). In micro_study, rope alone, each p is its own."""
    from capitu.study.report import collect
    from capitu.study.variants import Variant

    out = tmp_path / "out"
    shutil.copytree(micro_study, out)
    study, variants = load_study("tiny", micro_config(tmp_path))
    for seed in study.seed_list:
        shutil.copytree(out / "runs" / f"rope-s{seed}", out / "runs" / f"twin-s{seed}")
    budgets = json.loads((out / "budgets.json").read_text())
    (out / "budgets.json").write_text(json.dumps({**budgets, "twin": budgets["rope"]}))
    alone = {e["name"]: e for e in json.loads((micro_study / "results.json").read_text())["variants"]}["rope"]
    entries = {e["name"]: e for e in collect(out, study, [*variants, Variant("twin", set=["model.pos=rope"])])[
        "variants"]}
    families = [lambda e: e["vs_baseline"], lambda e: e["grammar"]["vs_baseline"]]
    families += [lambda e, name=name, measure=measure: e["out_of_domain"][name]["vs_baseline"][measure]
                 for name in ("written", "poetry") for measure in ("bpb", "gap")]
    for test_of in families:
        rope, twin = test_of(entries["rope"]), test_of(entries["twin"])
        assert rope["p"] == twin["p"] == test_of(alone)["p"] == test_of(alone)["p_holm"]
        assert rope["p_holm"] == twin["p_holm"] == pytest.approx(min(1.0, 2 * rope["p"]))


def test_references_computed_beside_the_training_are_the_studys(micro_study, prepared_bpe, tmp_path):
    """On a GPU the references run in another process while the block trains: the same file as computed in line."""
    from capitu.study.runner import references_beside

    study, _ = load_study("tiny", micro_config(tmp_path))
    (tmp_path / "out").mkdir()
    with references_beside(tmp_path / "out", study, prepared_bpe, wanted=True):
        pass  # the block would train; leaving it waits for the references
    beside = json.loads((tmp_path / "out" / "references.json").read_text())
    in_line = json.loads((micro_study / "references.json").read_text())
    assert beside.pop("seconds").keys() == in_line.pop("seconds").keys()  # timings differ, the figures may not
    assert beside == in_line


def test_a_failing_bench_costs_its_variant_the_timings_not_the_study_its_report(micro_study, prepared_bpe, tmp_path,
                                                                               monkeypatch):
    import capitu.bench
    from capitu.cli import main
    from capitu.errors import UserError
    from capitu.folders import RunFolder, StudyFolder

    out = tmp_path / "out"
    shutil.copytree(micro_study, out)
    rope = RunFolder(StudyFolder(out).run("rope", 1337))
    rope.bench_path.unlink()
    measured = capitu.bench.bench

    def bench(config, weights=None, options=None):  # the bench of the RoPE model runs out of memory
        if config.model.pos == "rope":
            raise UserError("the generate benchmark failed: torch.OutOfMemoryError: CUDA out of memory.")
        return measured(config, weights, options)

    monkeypatch.setattr(capitu.bench, "bench", bench)
    command = ["study", "--config", str(micro_study.parent / "study.toml"), "--data", str(prepared_bpe), "--out",
               str(out), "--quiet", "--device", "cpu"]
    assert main(command) == 0
    variants = {e["name"]: e for e in json.loads((out / "results.json").read_text())["variants"]}
    assert variants["rope"]["bench"] is None and "CUDA out of memory" in variants["rope"]["bench_failed"]
    assert variants["baseline"]["bench"]["train_tok_s"] > 0 and variants["baseline"]["bench_failed"] is None
    report = (out / "report.md").read_text(encoding="utf-8")
    assert ("The bench of rope failed, so its speed and memory columns are empty: the generate benchmark failed: "
            "torch.OutOfMemoryError") in report
    assert json.loads(rope.bench_path.read_text()) == {"rounds": [], "failed": variants["rope"]["bench_failed"]}

    monkeypatch.setattr(capitu.bench, "bench", measured)  # run again: the bench is tried again, and passes
    assert main(command) == 0
    variants = {e["name"]: e for e in json.loads((out / "results.json").read_text())["variants"]}
    assert variants["rope"]["bench"]["spread"]["rounds"] == 2 and variants["rope"]["bench_failed"] is None
    assert "The bench of rope failed" not in (out / "report.md").read_text(encoding="utf-8")


def test_flops_budget_gives_each_variant_the_baselines_flops(prepared_bpe, tmp_path):
    from capitu.folders import DataFolder
    from capitu.models import build_model
    from capitu.study.runner import plan_budgets, study_configs

    study, variants = load_study("tiny", micro_config(tmp_path, tokens=4096, budget="flops"))
    variants.append(next(v for v in load_study("tiny", grid="full")[1] if v.name == "ffn"))
    configs = study_configs(study, variants, prepared_bpe, DataFolder(prepared_bpe).vocab_size)
    budgets = plan_budgets(tmp_path, study, configs, "cpu")
    flops = {name: build_model(config.model).flops_per_token() for name, config in configs.items()}
    assert budgets["baseline"]["tokens"] == 4096
    for name in ("rope", "ffn"):
        # the same FLOPs, to within one optimizer step of tokens
        assert abs(budgets[name]["tokens"] * flops[name] - 4096 * flops["baseline"]) <= 256 * flops[name]
    assert budgets["ffn"]["tokens"] < 4096 / 2  # Bengio's model costs several times the FLOPs per token
    assert json.loads((tmp_path / "budgets.json").read_text()) == budgets


def test_timings_are_compared_round_by_round_and_not_at_all_on_a_busy_machine():
    from capitu.study.report import speed_findings

    def entry(name, train, decode, others=0.01):
        return {"name": name, "bench": {"busy": others > 0.15, "others": others, "spread": {
            "rounds": 3, "train_tok_s": {"values": train}, "decode_tok_s": {"1": {"values": decode}}}}}

    baseline = entry("baseline", [100, 105, 110], [50, 51, 52])
    fast = entry("fast", [120, 126, 131], [45, 51, 60])
    said = speed_findings([baseline, fast], baseline)
    assert said[0].startswith("Speed against the baseline, in tokens/s over 3 interleaved rounds") and len(said) == 3
    assert said[1].startswith("Training: ") and "faster: fast (1.20x, p = " in said[1]
    assert "no difference shown: none" in said[1]
    assert said[2].startswith("Decoding at batch 1: ") and "faster: none" in said[2]
    assert "no difference shown: fast (1.01x, p = 0.88)" in said[2]
    # two variants each faster alone at p < 0.05 (0.042 and 0.034), but not as a family of two: Holm takes the
    # smaller p to 2 x 0.034 = 0.069, and the larger to that too
    one, two = entry("one", [110, 118, 116], [50, 51, 52]), entry("two", [108, 119, 118], [50, 51, 52])
    for alone in (one, two):
        assert "faster: " + alone["name"] in speed_findings([baseline, alone], baseline)[1]
    said = speed_findings([baseline, one, two], baseline)[1]
    assert "faster: none" in said and "no difference shown: one (1.09x, p = 0.069), two (1.10x, p = 0.069)" in said
    busy = entry("fast", [120, 126, 131], [45, 51, 60], others=0.6)
    said = speed_findings([baseline, busy], baseline)
    assert len(said) == 1 and said[0].startswith("Timings were taken on a busy machine") and "60%" in said[0]


def test_training_seconds_are_called_disturbed_only_beyond_the_cores_the_training_left():
    from capitu.study.report import budget_blocks

    def results(others, spare):
        seeds = {"1": {"train_seconds": 25.0, "train_others_cores": others, "train_spare_cores": spare}}
        budget = {"budget": "seconds", "flops_per_token": 1e6, "tokens": 1000}
        return {"variants": [{"name": name, "seeds": seeds, "budget": budget, "bench": None}
                             for name in ("baseline", "rope")]}

    said = budget_blocks(results(others=1.0, spare=0))[0].text  # a CPU run beside a busy loop
    assert "Other programs ran beside the training of baseline, rope" in said
    assert "Other programs" not in budget_blocks(results(others=4.0, spare=15))[0].text  # --jobs 4 on a GPU


def test_equal_seconds_come_from_the_bench_rates_not_the_training_wall_time():
    from capitu.study.report import budget_blocks

    def entry(name, rate, seconds):  # rope: trained 3 at once (--jobs), so its wall time says nothing of its speed
        return {"name": name, "seeds": {"1": {"train_seconds": seconds}}, "bench": {"train_tok_s": rate},
                "budget": {"budget": "seconds", "flops_per_token": 2e6, "tokens": 30_000}}

    paragraph, table = budget_blocks({"variants": [entry("baseline", 1_000.0, 30.0), entry("rope", 1_500.0, 90.0)]})
    assert [row[-1] for row in table.rows] == ["30,000", "45,000"]  # the baseline's tokens, x 1.5 for rope
    assert "anchored on the baseline (30,000 tokens, 30.0 s at its bench rate" in paragraph.text


def test_load_study_layers(tmp_path):
    study, variants = load_study("tiny")
    assert study.vocab_size == 4096 and study.seeds == 3 and study.budget == "flops"
    assert [v.name for v in variants] == ["baseline", "rope", "alibi", "gqa", "mqa", "ffn"]
    assert len(load_study("tiny", grid="full")[1]) == 11
    path = tmp_path / "s.toml"
    path.write_text('[study]\ntokens = 1000\n\n[[variant]]\nname = "baseline"\n', encoding="utf-8")
    study, variants = load_study("tiny", path, seeds=3)
    assert study.tokens == 1000 and study.seeds == 3 and [v.name for v in variants] == ["baseline"]


def test_evaluation_lengths_the_test_split_cannot_fill_are_dropped_with_a_warning(caplog):
    from capitu.study.config import StudyConfig
    from capitu.study.runner import lengths_that_fit

    study = StudyConfig(eval_lengths=[128, 1000, 999, 4096])
    assert lengths_that_fit(study, 1000).eval_lengths == [128, 999] and study.eval_lengths == [128, 1000, 999, 4096]
    assert [r.getMessage() for r in caplog.records] == [
        f"study: evaluation length {n} skipped: the test split has only 999 tokens to score" for n in (1000, 4096)]


@pytest.mark.parametrize("content, message", [
    ('[study]\nseeds = 0\n', "study.seeds"),
    ('[study]\ncolour = "red"\n', "unknown config key 'study.colour'"),
    ('[model]\nn_layer = 2\n', "unknown table"),
    ('[[variant]]\nname = "rope"\nset = ["model.pos=rope"]\n', "baseline"),
    ('[[variant]]\nname = "../x"\n', "variant name"),
    ('[study]\nbudget = "seconds"\nseconds = 5\ntokens = 1000\n', "does not apply to this study's budget of 5 "),
    ('[study]\nseconds = 5\n', "study.seconds applies to budget = \"seconds\" only; this study's budget is flops"),
])
def test_bad_study_config_exits_2(tmp_path, prepared_bpe, capsys, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    code, _, err = run_cli(["study", "--config", path, "--data", prepared_bpe, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err


def test_study_refuses_missing_data_and_another_study(micro_study, tmp_path, prepared_bpe, capsys):
    code, _, err = run_cli(["study", "--data", tmp_path / "nothing", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not a prepared folder" in err
    config = micro_config(tmp_path, tokens=4096)
    code, _, err = run_cli(["study", "--config", config, "--data", prepared_bpe, "--out", micro_study], capsys)
    assert code == 2 and "holds another study" in err


def test_a_refused_new_study_leaves_its_folder_as_it_found_it(tmp_path, small_corpus, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nset = ["model.pos=foo"]\n', encoding="utf-8")
    # a bad config is refused before the corpus is prepared
    code, _, err = run_cli(["study", "--config", bad, "--source", small_corpus, "--out", out, "--quiet"], capsys)
    assert code == 2 and "model.pos must be one of" in err and not out.exists()
    # a source refused by the preparation: no plan stays behind to make the corrected command "another study"
    (tmp_path / "empty").mkdir()
    (tmp_path / "one.txt").write_text("Era uma vez um texto só.\n" * 50, encoding="utf-8")
    for source, message in ((tmp_path / "empty", "no .txt files"), (tmp_path / "one.txt", "at least 3")):
        code, _, err = run_cli(["study", "--source", source, "--out", out, "--quiet"], capsys)
        assert code == 2 and message in err, err
        assert not out.exists()  # the folder it made, gone (its shards' lock file with it)
    out.mkdir()  # a folder the user made stays, as empty as it was
    code, _, err = run_cli(["study", "--source", tmp_path / "empty", "--out", out, "--quiet"], capsys)
    assert code == 2 and list(out.iterdir()) == []
    # a shard leaves the lock, which another shard may be holding
    code, _, err = run_cli(["study", "--source", tmp_path / "empty", "--out", out, "--quiet", "--shard", "1/2"], capsys)
    assert code == 2 and [p.name for p in out.iterdir()] == [".setup.lock"]


def test_variants_that_resolve_to_the_same_model_are_refused():
    from capitu.config import load_config
    from capitu.errors import UserError
    from capitu.study.runner import check_distinct
    from capitu.study.variants import Variant, variant_config

    base = load_config("tiny", overrides=["model.n_head=4", "model.vocab_size=64"])
    configs = {v.name: variant_config(base, v) for v in [Variant("baseline"), Variant("gqa", kv_divisor=4),
                                                          Variant("mqa", set=["model.n_kv_head=1"])]}
    with pytest.raises(UserError, match="gqa and mqa resolve to the same model"):
        check_distinct(configs)
    del configs["mqa"]
    check_distinct(configs)
    # a ladder rung that changes only the optimizer is a different run
    from capitu.study.variants import grid_names, load_grid

    study, _ = load_study("tiny")
    for grid in grid_names():
        check_distinct({v.name: variant_config(load_config("tiny", overrides=[*study.set, "model.vocab_size=64"]), v)
                        for v in load_grid(grid)})


LADDER = """
[[variant]]
name = "baseline"

[[variant]]
name = "rope"
parent = "baseline"
set = ["model.pos=rope"]

[[variant]]
name = "relu2"
parent = "rope"
set = ["model.mlp=relu2"]

[[variant]]
name = "swiglu"
parent = "rope"
set = ["model.mlp=swiglu"]
"""


def test_a_ladder_study_reports_each_rung_against_the_one_below(prepared_bpe, tmp_path):
    config = micro_config(tmp_path, seeds=2, bench="false")
    config.write_text(config.read_text().split("[[variant]]")[0] + LADDER, encoding="utf-8")
    from capitu.cli import main

    assert main(["study", "--config", str(config), "--data", str(prepared_bpe), "--out", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    bpb = {e["name"]: [s["bpb"] for s in e["seeds"].values()] for e in results["variants"]}
    view = results["ladder"]
    assert view["main"] == ["baseline", "rope", "relu2"]
    rungs = {r["name"]: r for r in view["rungs"]}
    assert rungs["swiglu"]["main"] is False and rungs["swiglu"]["parent"] == "rope"
    for name, parent in (("rope", "baseline"), ("relu2", "rope"), ("swiglu", "rope")):
        expected = sum(bpb[name]) / 2 - sum(bpb[parent]) / 2
        assert rungs[name]["vs_parent"]["difference"] == pytest.approx(expected, abs=1e-12)
    expected = sum(bpb["relu2"]) / 2 - sum(bpb["baseline"]) / 2
    assert rungs["relu2"]["vs_baseline"]["difference"] == pytest.approx(expected)
    assert rungs["relu2"]["change"] == "model.mlp=relu2"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Ladder" in report and "swiglu (side branch of rope)" in report
    assert any(f.startswith("Ladder: from GPT-2's") for f in results["findings"])
    assert (tmp_path / "out" / "plots" / "ladder.png").read_bytes().startswith(b"\x89PNG")


def test_report_shows_writing_numbers_and_the_blind_votes(micro_study, prepared_bpe, tmp_path):
    from capitu.cli import main
    from capitu.quality import training_vocabulary, writing_numbers
    from capitu.votes import connect, record_vote

    out = tmp_path / "again"
    shutil.copytree(micro_study, out)
    generations = json.loads((out / "generations.json").read_text())
    names = {path: name for name, path in generations["settings"]["runs"].items()}
    rope = [text[len(entry["prompt"]):] for entry in generations["results"]
            for run, text in entry["outputs"].items() if names[run] == "rope"]
    distinct = writing_numbers(rope, training_vocabulary(prepared_bpe))["distinct_1"]
    connection = connect(out / "votes.sqlite")
    for choice in ("A", "A", "tie"):
        record_vote(connection, "Era", ("rope", "baseline"), ("x", "y"), {}, choice)
    connection.close()
    assert main(["study", "--config", str(micro_study.parent / "study.toml"), "--data", str(prepared_bpe), "--out",
                 str(out), "--quiet", "--device", "cpu"]) == 0
    report = (out / "report.md").read_text()
    assert "## Blind votes" in report and "3 blind votes" in report
    assert table_rows(report, "variant | known words")["rope"][2] == f"{distinct:.1%}"


def test_a_run_saved_before_a_setting_existed_trains_the_same():
    # a study continued by a newer capitu: its runs' configs lack the settings added since (model.norm_eps),
    # whose defaults are what they were trained with
    from capitu.config import load_config, to_dict
    from capitu.study.runner import same_training

    wanted = to_dict(load_config("tiny", overrides=["model.vocab_size=64"]))
    older = copy.deepcopy(wanted)
    del older["model"]["norm_eps"]
    older["run"]["device"] = "cuda"  # the device may differ
    assert same_training(older, wanted)
    changed = copy.deepcopy(wanted)
    changed["model"]["n_layer"] += 1
    assert not same_training(changed, wanted)
    unknown = copy.deepcopy(wanted)
    unknown["model"]["colour"] = "blue"  # a setting this version does not know
    assert not same_training(unknown, wanted)
