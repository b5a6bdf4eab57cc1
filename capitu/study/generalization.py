"""Generalization in a study: how each run reads Portuguese unlike its training data (`[study] eval_texts`, in bits
per byte beside its test split) and whether it prefers the grammatical side of minimal pairs (capitu pairs, from
Universal Dependencies treebanks). The inputs are made once per study (OUT/generalization/), each run is scored
once (RUN/eval_generalization.json), and the report gets its tables, findings and results.json entries here."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from capitu.errors import UserError, warn
from capitu.folders import DataFolder, RunFolder, StudyFolder
from capitu.paths import atomic_write_bytes, atomic_write_json
from capitu.study.config import StudyConfig
from capitu.study.stats import adjust_family, mean, paired_t_test, summary

ALPHA = 0.05
PAIRS_SEED = 2026  # the sample of pairs per phenomenon, the same for every study


def raw_documents(paths: list[str]) -> list[tuple[str, str]]:
    """(SHA-256, cleaned text) of every document under `paths` (evaluate.hashed_documents)."""
    from capitu.evaluate import hashed_documents

    return [document for path in paths for document in hashed_documents(Path(path))]


def from_here(*paths) -> str:
    """Paths for a warning, with the folder that relative ones are relative to (the working directory): a study run
    from elsewhere misses the shipped presets' ../shared/... paths."""
    text = ", ".join(map(str, paths))
    return text if all(Path(path).is_absolute() for path in paths) else f"{text} (from {Path.cwd()})"


def present_sets(study: StudyConfig, say: Callable[[str], None] = warn) -> dict[str, list[str]]:
    """The evaluation text sets whose paths are all there; each other one is named in a warning."""
    present = {}
    for name, paths in study.eval_texts.items():
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            say(f"study: eval text set {name} skipped: {from_here(*missing)} not found")
        else:
            present[name] = paths
    return present


def held_out(study: StudyConfig) -> list[str]:
    """The SHA-256 of every evaluation text, for a study that prepares its own data to leave them out of it."""
    return sorted({sha for paths in present_sets(study, lambda _: None).values() for sha, _ in raw_documents(paths)})


def build_pairs(study: StudyConfig) -> tuple[list[dict], str] | None:
    """The study's minimal pairs and where they came from; None (with a warning) when neither is there."""
    from capitu.pairs import minimal_pairs, read_pairs, treebank_files

    if study.pairs:
        if not Path(study.pairs).is_file():
            warn(f"study: pairs file {from_here(study.pairs)} not found: no grammar scores")
            return None
        return read_pairs(Path(study.pairs)), study.pairs
    ud = Path(study.ud)
    files = treebank_files(ud) if ud.exists() else []
    if not files:
        warn(f"study: no CoNLL-U treebank at {from_here(ud)} (study.ud): no grammar scores")
        return None
    pairs = minimal_pairs(files)
    if study.pairs_per_phenomenon:
        by_phenomenon: dict[str, list[dict]] = {}
        for pair in pairs:
            by_phenomenon.setdefault(pair["phenomenon"], []).append(pair)
        rng, limit = random.Random(PAIRS_SEED), study.pairs_per_phenomenon
        pairs = [pair for name in sorted(by_phenomenon) for pair in
                 (rng.sample(by_phenomenon[name], limit) if len(by_phenomenon[name]) > limit else by_phenomenon[name])]
    return pairs, ", ".join(f.name for f in files)


def prepare_inputs(out: Path, study: StudyConfig, data: Path) -> dict:
    """Once per study: each evaluation text set's tokens (documents of the training split left out) and the
    minimal pairs with a unigram model's accuracy on them, in OUT/generalization/ (kept while the settings hold)."""
    from capitu.evaluate import document_tokens, pair_accuracy, unigram_log_probs, unigram_right
    from capitu.tokenizer import load_tokenizer

    prepared = DataFolder(data)
    folder, meta = StudyFolder(out).generalization, prepared.meta
    settings = {"eval_texts": study.eval_texts, "ud": study.ud, "pairs": study.pairs,
                "pairs_per_phenomenon": study.pairs_per_phenomenon, "data_fingerprint": meta.get("fingerprint")}
    index = folder / "inputs.json"
    if index.exists() and (saved := json.loads(index.read_text(encoding="utf-8")))["settings"] == settings:
        return saved
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    trained_on = prepared.trained_documents
    texts = {}
    for name, paths in present_sets(study).items():
        documents = raw_documents(paths)
        kept = [text for sha, text in documents if sha not in trained_on and text]
        if not kept:
            warn(f"study: eval text set {name} skipped: every document of it is in the training split")
            continue
        tokens, counts = document_tokens(kept, tokenizer)
        buffer = io.BytesIO()
        np.save(buffer, tokens)
        atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())
        texts[name] = {"paths": paths, "left_out": len(documents) - len(kept), **counts}
    pairs = None
    built = build_pairs(study)
    if built:
        items, source = built
        atomic_write_bytes(folder / "pairs.jsonl",
                           "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in items).encode("utf-8"))
        unigram = unigram_right(items, tokenizer, unigram_log_probs(prepared, prepared.vocab_size))
        pairs = {"source": source, "n": len(items), "counts": dict(sorted(Counter(p["phenomenon"] for p in items)
                                                                          .items())),
                 "unigram": pair_accuracy(unigram, [p["phenomenon"] for p in items])}
    inputs = {"settings": settings, "texts": texts, "pairs": pairs}
    atomic_write_json(index, inputs)
    return inputs


def evaluate_run(run: Path, out: Path, device, progress: bool) -> None:
    """A run's bits per byte on each evaluation text set and its minimal-pair accuracy (RUN/eval_generalization.json;
    kept while the study's inputs are the same)."""
    from capitu.checkpoint import load_model
    from capitu.evaluate import evaluate_tokens, pair_accuracy, pairs_right
    from capitu.pairs import read_pairs
    from capitu.tokenizer import load_tokenizer

    folder = StudyFolder(out).generalization
    inputs = json.loads((folder / "inputs.json").read_text(encoding="utf-8"))
    path = RunFolder(run).generalization_path
    if path.exists() and json.loads(path.read_text(encoding="utf-8"))["settings"] == inputs["settings"]:
        return
    model, _ = load_model(run, device)
    texts = {name: evaluate_tokens(model, np.load(folder / f"{name}.npy"), entry, device, progress)
             for name, entry in inputs["texts"].items()}
    pairs = None
    if inputs["pairs"]:
        items = read_pairs(folder / "pairs.jsonl")
        right = pairs_right(model, load_tokenizer(RunFolder(run).tokenizer_path), items, device, progress)
        pairs = pair_accuracy(right, [p["phenomenon"] for p in items])
    atomic_write_json(path, {"settings": inputs["settings"], "texts": texts, "pairs": pairs})


# ---- the report ---------------------------------------------------------------------------

def collect(out: Path, study: StudyConfig, entries: list[dict]) -> dict | None:
    """Add each variant's grammar and out-of-domain numbers (per seed, mean ± sd, paired t-tests against the baseline
    over seeds) to its results entry; returns what the study scored them on, None if nothing."""
    index = StudyFolder(out).generalization / "inputs.json"
    if not index.exists():
        return None
    inputs = json.loads(index.read_text(encoding="utf-8"))
    for entry in entries:
        scored = {}
        for seed in study.seed_list:
            path = RunFolder(StudyFolder(out).run(entry["name"], seed)).generalization_path
            try:
                scored[seed] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise UserError(f"the report needs {path} ({error}); run the study again") from None
        seeds = study.seed_list
        if inputs["pairs"]:
            accuracy = [scored[s]["pairs"]["accuracy"] for s in seeds]
            by_phenomenon = {name: summary([scored[s]["pairs"]["by_phenomenon"][name]["accuracy"] for s in seeds])
                             for name in inputs["pairs"]["counts"]}
            entry["grammar"] = {**summary(accuracy), "per_seed": dict(zip(map(str, seeds), accuracy)),
                                "by_phenomenon": by_phenomenon}
        entry["out_of_domain"] = {}
        for name in inputs["texts"]:
            bpb = [scored[s]["texts"][name]["bpb"] for s in seeds]
            gap = [b - entry["seeds"][str(s)]["bpb"] for b, s in zip(bpb, seeds)]
            entry["out_of_domain"][name] = {"bpb": {**summary(bpb), "per_seed": dict(zip(map(str, seeds), bpb))},
                                            "gap": summary(gap), "ratio": mean(bpb) / entry["bpb"]["mean"]}
    baseline = next(e for e in entries if e["name"] == "baseline")
    for entry in entries:
        if entry is baseline:
            continue
        if "grammar" in entry:
            entry["grammar"]["vs_baseline"] = paired_t_test(entry["grammar"]["values"], baseline["grammar"]["values"])
        for name, result in entry["out_of_domain"].items():
            base = baseline["out_of_domain"][name]
            result["vs_baseline"] = {"bpb": paired_t_test(result["bpb"]["values"], base["bpb"]["values"]),
                                     "gap": paired_t_test(result["gap"]["values"], base["gap"]["values"])}
    # each measure's comparisons with the baseline are one family (stats.holm)
    others = [entry for entry in entries if entry is not baseline]
    adjust_family(entry["grammar"]["vs_baseline"] for entry in others if "grammar" in entry)
    for name in inputs["texts"]:
        for measure in ("bpb", "gap"):
            adjust_family(entry["out_of_domain"][name]["vs_baseline"][measure] for entry in others)
    return {"texts": inputs["texts"], "pairs": inputs["pairs"]}


def verdicts(entries: list[dict], test_of: Callable[[dict], dict | None], lower_is_better: bool) -> str:
    """Which variants differ from the baseline beyond seed noise (paired t-test over seeds, Holm-adjusted p < ALPHA)."""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "not significant": []}
    for e in entries:
        test = test_of(e) if e["name"] != "baseline" else None
        if test is None:
            continue
        if test["p_holm"] is None or test["p_holm"] >= ALPHA:
            groups["not significant"].append(e["name"])
        else:
            improved = (test["mean_difference"] < 0) == lower_is_better
            groups["better" if improved else "worse"].append(f"{e['name']} (p = {test['p_holm']:.2g})")
    return "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in groups.items())


def findings(generalization: dict | None, entries: list[dict], seeds: int) -> list[str]:
    if not generalization:
        return []
    said, testing = [], seeds >= 2
    pairs = generalization["pairs"]
    if pairs:
        ranked = sorted(entries, key=lambda e: -e["grammar"]["mean"])
        best, worst = ranked[0], ranked[-1]
        sentence = (f"Grammar, minimal pairs from UD ({pairs['n']:,} pairs, chance 50%; a unigram model of the "
                    f"training split, which knows only how common each form is, gets "
                    f"{pairs['unigram']['accuracy']:.1%}): best {best['name']} ({percent(best['grammar'])}), "
                    f"worst {worst['name']} ({percent(worst['grammar'])})")
        if testing:
            sentence += (f"; against the baseline (paired t-test over {seeds} seeds on accuracy, Holm-adjusted): "
                         + verdicts(entries, lambda e: e["grammar"].get("vs_baseline"), lower_is_better=False))
        said.append(sentence + ".")
    for name, text in generalization["texts"].items():
        ranked = sorted(entries, key=lambda e: e["out_of_domain"][name]["bpb"]["mean"])
        ratios = sorted(entries, key=lambda e: e["out_of_domain"][name]["ratio"])

        def bpb(e):
            return f"{e['name']} ({e['out_of_domain'][name]['bpb']['mean']:.3f} bits/byte)"

        def ratio(e):
            return f"x{e['out_of_domain'][name]['ratio']:.3f} ({e['name']})"

        sentence = (f"Out of domain, {name} ({text['bytes']:,} bytes, none of it in the training split): best "
                    f"{bpb(ranked[0])}, worst {bpb(ranked[-1])}; over the test split's bits per byte, from "
                    f"{ratio(ratios[0])} to {ratio(ratios[-1])}")
        if testing:
            sentence += ("; a smaller gap to the test split than the baseline's (generalizes better), paired t-test "
                         "over seeds on the gap, Holm-adjusted: " + verdicts(
                             entries, lambda e: e["out_of_domain"][name].get("vs_baseline", {}).get("gap"),
                             lower_is_better=True))
        said.append(sentence + ".")
    return said


def percent(value: dict) -> str:
    return f"{value['mean']:.1%} ± {value['std']:.1%}"


def grammar_table(generalization: dict, entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    pairs = generalization["pairs"]
    names = list(pairs["counts"])
    head = ["variant", f"all ({pairs['n']:,})", *(f"{name} ({pairs['counts'][name]:,})" for name in names)]
    rows = [[e["name"], percent(e["grammar"]), *(percent(e["grammar"]["by_phenomenon"][n]) for n in names)]
            for e in entries]
    unigram = pairs["unigram"]
    rows.append(["reference: unigram of the training split", f"{unigram['accuracy']:.1%}",
                 *(f"{unigram['by_phenomenon'][n]['accuracy']:.1%}" for n in names)])
    return head, rows


def text_table(generalization: dict, entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    names = list(generalization["texts"])
    head = ["variant", "test split bits/byte"]
    for name in names:
        head += [f"{name} bits/byte", f"{name} / test"]
    rows = []
    for e in entries:
        row = [e["name"], f"{e['bpb']['mean']:.4f} ± {e['bpb']['std']:.4f}"]
        for name in names:
            result = e["out_of_domain"][name]
            row += [f"{result['bpb']['mean']:.4f} ± {result['bpb']['std']:.4f}", f"x{result['ratio']:.3f}"]
        rows.append(row)
    return head, rows


def describe(generalization: dict) -> str:
    parts = [f"{name}: {', '.join(text['paths'])} ({text['documents']} document{'s' * (text['documents'] != 1)}, "
             f"{text['bytes']:,} bytes"
             + (f"; {text['left_out']} left out, in the training split" if text["left_out"] else "") + ")"
             for name, text in generalization["texts"].items()]
    pairs = generalization["pairs"]
    if pairs:
        parts.append(f"minimal pairs: {pairs['n']:,} from {pairs['source']} (capitu pairs; each sentence scored as a "
                     f"document, a pair right when the grammatical sentence gets the higher probability)")
    return "Scored on: " + "; ".join(parts) + "."


def csv_fields(entry: dict) -> dict:
    row = {}
    if "grammar" in entry:
        row["grammar_mean"], row["grammar_std"] = entry["grammar"]["mean"], entry["grammar"]["std"]
        test = entry["grammar"].get("vs_baseline") or {}
        row["p_grammar_vs_baseline"], row["p_holm_grammar_vs_baseline"] = test.get("p"), test.get("p_holm")
        for name, value in entry["grammar"]["by_phenomenon"].items():
            row[f"grammar_{name.replace(' ', '_')}"] = value["mean"]
    for name, result in entry.get("out_of_domain", {}).items():
        row[f"bpb_{name}_mean"], row[f"bpb_{name}_std"] = result["bpb"]["mean"], result["bpb"]["std"]
        row[f"bpb_{name}_over_test"] = result["ratio"]
    return row
