"""The study's report, built only from the files its runs left (eval_test.json, bench.json,
metrics.jsonl, run.json, generations.json): results.json and results.csv with every number,
report.md (figures in plots/) and a self-contained report.html (figures embedded).

Both documents are rendered from one list of sections, so they cannot disagree."""

from __future__ import annotations

import copy
import csv
import io
import json
import shlex
from dataclasses import asdict
from pathlib import Path

from capitu.environment import MachineLoad, git_commit, hardware, is_busy, versions
from capitu.errors import UserError
from capitu.folders import DataFolder, RunFolder, StudyFolder
from capitu.pages import Block, Image, Items, Paragraph, Preformatted, Section, Table, render, render_markdown
from capitu.paths import atomic_write_bytes, atomic_write_json
from capitu.quality import training_vocabulary, writing_numbers
from capitu.references import NAMES as REFERENCE_KEYS
from capitu.references import label as reference_label
from capitu.study import generalization, plots
from capitu.study.config import StudyConfig
from capitu.study.ladder import ladder, ladder_blocks, ladder_figure, ladder_findings
from capitu.study.stats import (
    SPEED_ALPHA,
    SPEED_MARGIN,
    adjust_family,
    compare_rates,
    mean,
    paired_t_test,
    rate_verdict,
    spread,
    summary,
)
from capitu.study.variants import Variant
from capitu.votes import ranking, read_votes

ALPHA = 0.05
MIB = 2**20


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"the report needs {path}, which is missing or unreadable ({error}); run the study "
                        "again") from None


def decode_path_words(entries: list[dict]) -> str:
    """Which decode path the benches ran, compiling time apart: a sentence for the setup."""
    benched = [e for e in entries if e.get("bench")]
    compiled = [e for e in benched if e["bench"].get("decode_path") == "compiled"]
    eager = [e for e in benched if e not in compiled]
    words = []
    if compiled:
        seconds = [e["bench"]["compile_s"] for e in compiled]
        words.append(f"Decoding ran through the compiled step for {', '.join(e['name'] for e in compiled)} "
                     f"(compiling took {min(seconds):.1f}-{max(seconds):.1f} s in the first round, not counted in "
                     "tokens/s)")
    if eager:
        reasons = ", ".join(f"{e['name']} ({e['bench'].get('decode_path_reason', 'eager')})" for e in eager)
        words.append(("eagerly for " if compiled else "Decoding ran eagerly for ") + reasons)
    return ("; ".join(words) + ".") if words else ""


def bench_summary(rounds: list[dict]) -> dict:
    """One bench result of the rounds: the first round's memory and shapes, the timings'
    medians in place of its timings, under "spread" each timing's median and range, and
    whether other programs disturbed any round ("busy", "others")."""
    summary_ = copy.deepcopy(rounds[0])
    timings = {"train_tok_s": spread([r["train_tok_s"] for r in rounds])}
    for key in ("prefill_tok_s", "decode_tok_s"):
        timings[key] = {batch: spread([r[key][batch] for r in rounds]) for batch in rounds[0][key]}
        summary_[key] = {batch: value["median"] for batch, value in timings[key].items()}
    summary_["train_tok_s"] = timings["train_tok_s"]["median"]
    summary_["spread"] = {"rounds": len(rounds), **timings}
    loads = [r.get(f"{task}_load") for r in rounds for task in ("train", "generate")]
    shares = [load["others"] for load in loads if load and load.get("others") is not None]
    summary_["others"] = max(shares) if shares else None  # the largest share of the cores other programs took
    summary_["busy"] = any(is_busy(load) for load in loads)
    return summary_


def collect(out: Path, study: StudyConfig, variants: list[Variant]) -> dict:
    """Every number of the report, per variant and per seed."""
    budgets = read_json(StudyFolder(out).budgets)
    entries = []
    for variant in variants:
        seeds = {}
        for seed in study.seed_list:
            run = StudyFolder(out).run(variant.name, seed)
            folder = RunFolder(run)
            evaluation = read_json(folder.evaluation_path("test"))
            info, saved = read_json(folder.info_path), read_json(folder.config_path)
            lengths = {evaluation["context"]: evaluation["ppl"]}
            for length, result in evaluation.get("lengths", {}).items():
                lengths[int(length)] = result["ppl"] if result["supported"] else None
            records = folder.metrics()
            seeds[str(seed)] = {
                **{key: evaluation[key] for key in ("loss", "ppl", "bpb", "bpc", "word_ppl", "tokens")},
                "ppl_by_length": {str(n): lengths[n] for n in sorted(lengths)},
                "train_tokens": saved["tokens"], "parameters": info["parameters"],
                "train_seconds": records[-1].get("elapsed_s") if records else None,
                # other programs' mean CPU (cores) while it trained, and the cores its training left them: its
                # seconds are not a timing if the others needed more
                "train_others_cores": mean(others) if (others := [r["others_cores"] for r in records
                                                                   if "others_cores" in r]) else None,
                "train_spare_cores": min((r.get("spare_cores", 0) for r in records if "others_cores" in r), default=0),
                "val_curve": [[r["tokens"], r["val_loss"]] for r in records if "val_loss" in r],
            }
        per_seed = list(seeds.values())
        model = saved["model"]
        entry = {
            "name": variant.name, "kind": model["kind"], "pos": model["pos"],
            "kv_heads": model["n_kv_head"] or model["n_head"], "parameters": per_seed[0]["parameters"],
            "context": evaluation["context"], "seeds": seeds,
            **{key: summary([s[key] for s in per_seed]) for key in ("loss", "ppl", "bpb", "bpc", "word_ppl")},
            "ppl_by_length": {},
        }
        for length in per_seed[0]["ppl_by_length"]:
            values = [s["ppl_by_length"][length] for s in per_seed]
            entry["ppl_by_length"][length] = None if None in values else summary(values)
        entry["budget"] = budgets[variant.name]
        bench_file = RunFolder(StudyFolder(out).run(variant.name, study.first_seed)).bench_path
        benched = read_json(bench_file) if study.bench else {}
        # a variant whose bench failed in any round has no timings: its rounds would not pair with the baseline's
        entry["bench"] = bench_summary(benched["rounds"]) if benched.get("rounds") and "failed" not in benched else None
        entry["bench_failed"] = benched.get("failed")
        entries.append(entry)
    baseline = next(e for e in entries if e["name"] == "baseline")
    for entry in entries:
        if entry is baseline:
            entry["vs_baseline"] = None
            continue
        losses = [entry["seeds"][str(s)]["loss"] for s in study.seed_list]
        base_losses = [baseline["seeds"][str(s)]["loss"] for s in study.seed_list]
        entry["vs_baseline"] = {
            "ppl_difference": entry["ppl"]["mean"] - baseline["ppl"]["mean"],
            "ppl_ratio": entry["ppl"]["mean"] / baseline["ppl"]["mean"],
            "test": "paired t-test on per-seed test loss (pairs: the same seed, so the same training batches)",
            **(paired_t_test(losses, base_losses) or {"t": None, "df": 0, "p": None}),
        }
    adjust_family(entry["vs_baseline"] for entry in entries)
    path = StudyFolder(out).references
    refs = {k: v for k, v in read_json(path).items() if k != "settings"} if path.exists() else None
    for entry in entries:
        entry["vs_references"] = None if refs is None else {
            key: entry["bpb"]["mean"] - refs[key]["bpb"] for key in REFERENCE_ROWS}
    return {"study": {**asdict(study), "seed_list": study.seed_list}, "variants": entries, "references": refs,
            "generalization": generalization.collect(out, study, entries)}


REFERENCE_ROWS = ("ppmd", "ngram")  # the references a variant is measured against (xz and PPMd alone: rows only)


def reference_findings(results: dict) -> list[str]:
    """Where the variants stand against the compressor and the n-gram model on the same test split."""
    refs = results["references"]
    if refs is None:
        return []
    entries = sorted(results["variants"], key=lambda e: e["bpb"]["mean"])
    best = entries[0]
    words = {"ppmd": f"PPMd primed with the training split ({refs['ppmd']['bpb']:.3f} bits/byte)",
             "ngram": f"the Kneser-Ney {refs['ngram']['order']}-gram model ({refs['ngram']['bpb']:.3f})"}
    standing = []
    for key in REFERENCE_ROWS:
        beating = [e["name"] for e in entries if e["vs_references"][key] < 0]
        standing.append(f"{words[key]}: {len(beating)} of {len(entries)} variants beat it"
                        + (f" ({', '.join(beating)})" if beating else ""))
    said = [f"Against the references on the same test split ({refs['bytes']:,} bytes): " + "; ".join(standing)
            + f". The best variant, {best['name']} ({best['bpb']['mean']:.3f} bits/byte), is "
            f"{best['vs_references']['ppmd']:+.3f} from PPMd and {best['vs_references']['ngram']:+.3f} from the "
            f"n-gram model; xz -9e on the text alone makes {refs['xz']['bpb']:.3f}."]
    if best["vs_references"]["ppmd"] > 0 or best["vs_references"]["ngram"] > 0:
        said.append("So the ranking below is made at a budget where the models are still weak: the same code "
                    "given more time passes both references (the README's Training section: `capitu train "
                    "--preset tiny --time 600`, one model in ten minutes on a laptop CPU).")
    return said


# ---- findings: sentences computed from the numbers --------------------------------------

def findings(results: dict) -> list[str]:
    entries = results["variants"]
    by_name = {e["name"]: e for e in entries}
    baseline = by_name["baseline"]
    seeds = results["study"]["seeds"]
    ranked = sorted(entries, key=lambda e: e["ppl"]["mean"])
    said = []

    def ppl(e):
        return f"{e['ppl']['mean']:.2f} ± {e['ppl']['std']:.2f}, {e['bpb']['mean']:.3f} bits/byte"

    said.append("Best test perplexity: " + ", then ".join(f"{e['name']} ({ppl(e)})" for e in ranked[:3])
                + f". The baseline (GPT-2: learned positions, multi-head) ranks {ranked.index(baseline) + 1} of "
                f"{len(ranked)} with {ppl(baseline)}; the worst is {ranked[-1]['name']} ({ppl(ranked[-1])}).")

    if seeds < 2:
        said.append("With one seed per variant no significance test is possible: differences may be noise "
                    "(run with --seeds 2 or more).")
    else:
        better, worse, unclear = [], [], []
        for e in entries:
            test = e["vs_baseline"]
            if test is None:
                continue
            bpb_difference = e["bpb"]["mean"] - baseline["bpb"]["mean"]
            text = (f"{e['name']} ({bpb_difference:+.3f} bits/byte, ppl {test['ppl_difference']:+.2f}, "
                    f"p = {test['p_holm']:.3g})")
            (unclear if test["p_holm"] >= ALPHA else better if test["ppl_difference"] < 0 else worse).append(text)
        sentence = (f"Against the baseline (paired t-test on per-seed test loss, {seeds} seeds, {seeds - 1} degree(s) "
                    f"of freedom, p Holm-adjusted over the {len(entries) - 1} variants, α = {ALPHA}): significantly "
                    f"better: {', '.join(better) or 'none'}; significantly worse: {', '.join(worse) or 'none'}; "
                    f"not significant: {len(unclear)} variant(s).")
        if seeds == 2:
            sentence += (" With two seeds the test has one degree of freedom: only large, consistent differences "
                         "pass it.")
        said.append(sentence)

    context = baseline["context"]
    longer = [int(n) for n in baseline["ppl_by_length"] if int(n) > context]
    if longer:
        longest = max(longer)
        ratios = sorted(((e["ppl_by_length"][str(longest)]["mean"] / e["ppl"]["mean"], e["name"])
                         for e in entries if e["ppl_by_length"].get(str(longest)) and e["kind"] == "gpt"))
        cannot = [e["name"] for e in entries if e["kind"] == "gpt" and e["ppl_by_length"].get(str(longest)) is None]
        holds = [f"{name} (x{r:.2f})" for r, name in ratios if r <= 1.05]
        degrades = [f"{name} (x{r:.2f})" for r, name in ratios if r > 1.05]
        said.append(f"Extrapolation, perplexity at {longest} tokens over perplexity at the training context "
                    f"({context}): holds within 5%: {', '.join(holds) or 'none'}; degrades: "
                    f"{', '.join(degrades) or 'none'}; cannot be evaluated (learned positions): "
                    f"{', '.join(cannot) or 'none'}.")

    benched = [e for e in entries if e["bench"]]
    if benched and baseline["bench"]:
        base = baseline["bench"]
        said.extend(speed_findings(benched, baseline))
        base_kv = base["kv_bytes_per_token"]["shapes"]
        smaller = [f"{e['name']} {e['bench']['kv_bytes_per_token']['shapes']:,} B "
                   f"({e['bench']['kv_bytes_per_token']['shapes'] / base_kv:.3g}x)"
                   for e in benched if e["kind"] == "gpt" and e["bench"]["kv_bytes_per_token"]["shapes"] < base_kv]
        if smaller:
            said.append(f"KV cache per token: the baseline keeps {base_kv:,} B; {', '.join(smaller)}.")

    transformers = [e for e in ranked if e["kind"] == "gpt"]
    for e in entries:
        if e["kind"] == "ffn" and transformers:
            best = transformers[0]
            said.append(f"Bengio's feed-forward LM ({e['parameters']:,} parameters, {e['budget']['tokens']:,} "
                        f"training tokens under the {e['budget']['budget']} budget) reaches {ppl(e)}, "
                        f"{e['ppl']['mean'] / best['ppl']['mean']:.2f}x the perplexity of the best transformer, "
                        f"{best['name']} ({best['parameters']:,} parameters, {best['budget']['tokens']:,} tokens).")
    return said


def speed_findings(benched: list[dict], baseline: dict) -> list[str]:
    """Each timing against the baseline's, round by round (stats.compare_rates); none at all when
    other programs disturbed the rounds."""
    busy = [e["name"] for e in benched if e["bench"]["busy"]]
    if busy:
        worst = max(e["bench"]["others"] or 0.0 for e in benched)
        return [f"Timings were taken on a busy machine: other programs took up to {worst:.0%} of the cores during "
                f"the bench rounds ({', '.join(busy)}), so the speed columns are not results and no speed finding "
                f"is drawn; run the study's bench again on a quiet machine (delete runs/*/bench.json and rerun the "
                f"study command)."]
    spreads = baseline["bench"]["spread"]
    measures = [("Training", lambda e: e["bench"]["spread"]["train_tok_s"]["values"])]
    for key, words in (("prefill_tok_s", "Prefill"), ("decode_tok_s", "Decoding")):
        for batch in spreads.get(key, {}):
            measures.append((f"{words} at batch {batch}",
                             lambda e, k=key, b=batch: e["bench"]["spread"][k][b]["values"]))
    said = [f"Speed against the baseline, in tokens/s over {spreads['rounds']} interleaved rounds: a difference counts "
            f"only with a paired t-test over the rounds on log tokens/s at p < {SPEED_ALPHA}, Holm-adjusted over the "
            f"{len(benched) - 1} variants, and a ratio at least {SPEED_MARGIN:.0%} from 1."]
    for label, measure in measures:
        verdicts = {"faster": [], "slower": [], "no difference shown": []}
        tests = {e["name"]: compare_rates(measure(e), measure(baseline)) for e in benched if e is not baseline}
        adjust_family(tests.values())
        for name, test in tests.items():
            p = "n/a" if test["p_holm"] is None else f"{test['p_holm']:.2g}"
            verdicts[rate_verdict(test["ratio"], test["p_holm"])].append(f"{name} ({test['ratio']:.2f}x, p = {p})")
        base = spread(measure(baseline))
        said.append(f"{label}: the baseline {timing(base)}; faster: {', '.join(verdicts['faster']) or 'none'}; "
                    f"slower: {', '.join(verdicts['slower']) or 'none'}; no difference shown: "
                    f"{', '.join(verdicts['no difference shown']) or 'none'}.")
    return said


# ---- documents ----------------------------------------------------------------------------

def cell(summary_: dict | None, digits: int) -> str:
    if summary_ is None:
        return "—"
    return f"{summary_['mean']:,.{digits}f} ± {summary_['std']:,.{digits}f}"


def timing(value: dict) -> str:
    """A timing's median and its range over the bench rounds."""
    return f"{value['median']:,.0f} ({value['min']:,.0f}-{value['max']:,.0f})"


def main_table(results: dict) -> tuple[list[str], list[list[str]]]:
    refs = results["references"]
    grammar = bool((results.get("generalization") or {}).get("pairs"))
    head = ["variant", "parameters", "train tokens", "test ppl", "bits/byte", "word ppl", "Δ ppl vs baseline",
            "p (paired t, Holm)", *(["Δ bits/byte vs PPMd", "Δ vs n-gram"] if refs else []),
            *(["grammar (minimal pairs)", "p grammar (paired t, Holm)"] if grammar else [])]
    rows = []
    for e in results["variants"]:
        test = e["vs_baseline"]
        if test is None:
            difference, p = "—", "—"
        else:
            difference = f"{test['ppl_difference']:+.2f} ({test['ppl_ratio'] - 1:+.1%})"
            p = "n/a (1 seed)" if test["p_holm"] is None else f"{test['p_holm']:.3g}"
        distances = [f"{e['vs_references'][key]:+.4f}" for key in REFERENCE_ROWS] if refs else []
        grammar_cells = []
        if grammar:
            grammar_test = e["grammar"].get("vs_baseline")
            grammar_cells = [generalization.percent(e["grammar"]),
                             "—" if test is None else "n/a (1 seed)" if grammar_test is None else
                             f"{grammar_test['p_holm']:.3g}"]
        rows.append([e["name"], f"{e['parameters']:,}", f"{e['budget']['tokens']:,}", cell(e["ppl"], 2),
                     cell(e["bpb"], 4), cell(e["word_ppl"], 1), difference, p, *distances, *grammar_cells])
    for key in REFERENCE_KEYS if refs else ():
        entry = refs[key]
        ppl = f"{entry['ppl']:,.2f}" if "ppl" in entry else "—"
        trained = "train split" if key in REFERENCE_ROWS else "none"
        rows.append([f"reference: {reference_label(key, entry)}", "—", trained, ppl, f"{entry['bpb']:.4f}",
                     f"{entry['word_ppl']:,.1f}", *["—"] * (len(head) - 6)])
    return head, rows


# the results table's columns the study's command prints when it is done, under shorter names
SUMMARY_COLUMNS = {"variant": "variant", "bits/byte": "test bits/byte", "Δ bits/byte vs PPMd": "vs PPMd",
                   "Δ vs n-gram": "vs n-gram", "p (paired t, Holm)": "p vs baseline",
                   "grammar (minimal pairs)": "grammar"}


def summary_table(results: dict) -> str:
    """The results table's main columns as aligned text, the variants best first, then the references' bits per
    byte on one line."""
    head, rows = main_table(results)
    keep = [head.index(name) for name in SUMMARY_COLUMNS if name in head]
    by_name = {row[0]: row for row in rows[:len(results["variants"])]}  # the references' rows come after
    variants = [by_name[e["name"]] for e in sorted(results["variants"], key=lambda e: e["bpb"]["mean"])]
    table = [[SUMMARY_COLUMNS[head[i]] for i in keep]] + [[row[i] for i in keep] for row in variants]
    widths = [max(len(line[i]) for line in table) for i in range(len(keep))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    refs = results["references"]
    if refs:
        lines.append("references (bits/byte): " + "; ".join(
            f"{name} {refs[key]['bpb']:.4f}" for key, name in REFERENCE_KEYS.items()))
    return "\n".join(lines)


def speed_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Each variant's bench: tokens/s (median and range of the rounds) of training, of prefill and decoding at each
    batch size, and memory."""
    entries = results["variants"]
    benched = next((e["bench"] for e in entries if e["bench"]), None)
    batches = {key: list(benched[key]) if benched else [] for key in ("prefill_tok_s", "decode_tok_s")}
    head = ["variant", "train tok/s", *(f"prefill tok/s b{b}" for b in batches["prefill_tok_s"]),
            *(f"decode tok/s b{b}" for b in batches["decode_tok_s"]), "train peak MiB", "generate peak MiB",
            "KV B/token"]
    rows = []
    for e in entries:
        bench = e["bench"]
        if not bench:
            rows.append([e["name"], *["—"] * (len(head) - 1)])
            continue
        spreads = bench["spread"]
        rows.append([e["name"], timing(spreads["train_tok_s"]),
                     *(timing(spreads[key][b]) if b in spreads[key] else "—" for key in batches for b in batches[key]),
                     f"{bench['peak_train_bytes'] / MIB:,.0f}", f"{bench['peak_generate_bytes'] / MIB:,.0f}",
                     f"{bench['kv_bytes_per_token']['shapes']:,}"])
    return head, rows


BUDGET_WORDS = {"tokens": "equal training tokens", "flops": "equal training FLOPs (tokens x FLOPs per token)",
                "seconds": "equal training time (tokens from each variant's measured training tokens/s)"}


def budget_blocks(results: dict) -> list[Block]:
    """The budget the study used, and what each variant would get under the others: equal
    tokens (the baseline's), equal FLOPs (the baseline's tokens x FLOPs per token), equal
    seconds (the seconds the baseline's tokens take at its median bench tokens/s, x the variant's:
    bench rates, timed alone in interleaved rounds, where a run's training time may include
    validation, a slow spell or a device shared with other runs of `--jobs`)."""
    entries = results["variants"]
    baseline = next(e for e in entries if e["name"] == "baseline")
    kind = baseline["budget"]["budget"]
    base_tokens, base_flops = baseline["budget"]["tokens"], baseline["budget"]["flops_per_token"]
    base_rate = baseline["bench"]["train_tok_s"] if baseline["bench"] else None
    head = ["variant", "GFLOP/token", "train tokens", "train PFLOP", "train s (mean)", "equal tokens",
            "equal FLOPs", "equal seconds"]
    rows = []
    for e in entries:
        flops, tokens = e["budget"]["flops_per_token"], e["budget"]["tokens"]
        seconds = [s["train_seconds"] for s in e["seeds"].values() if s["train_seconds"]]
        rate = e["bench"]["train_tok_s"] if e["bench"] else None
        rows.append([e["name"], f"{flops / 1e9:.4f}", f"{tokens:,}", f"{tokens * flops / 1e15:.3f}",
                     f"{mean(seconds):.1f}" if seconds else "—", f"{base_tokens:,}",
                     f"{round(base_tokens * base_flops / flops):,}",
                     f"{round(base_tokens * rate / base_rate):,}" if rate and base_rate else "—"])
    disturbed = sorted({e["name"] for e in entries for s in e["seeds"].values()
                        if is_busy({"others_cores": s.get("train_others_cores"),
                                    "spare_cores": s.get("train_spare_cores")})})
    warning = (f" Other programs ran beside the training of {', '.join(disturbed)} (on average more than "
               f"{MachineLoad.BUSY_CORES} of a core beyond the cores its training left free): those training seconds "
               "are not timings." if disturbed else "")
    anchor = f"{base_tokens:,} tokens" + (f", {base_tokens / base_rate:.1f} s at its bench rate" if base_rate else "")
    return [Paragraph(f"Budget: {BUDGET_WORDS[kind]}.{warning} Train s is each run's training time, validation "
                      "included (runs trained at once with --jobs share the device). The last three columns give the "
                      f"training tokens each variant would get under each budget, anchored on the baseline ({anchor}; "
                      "equal seconds from the bench's training tokens/s): a variant with more FLOPs per token (the "
                      "feed-forward LM, a widened MLP) gets fewer tokens under equal FLOPs, and a slower one fewer "
                      "under equal seconds."),
            Table(head, rows)]


def length_table(results: dict) -> tuple[list[str], list[list[str]]]:
    lengths = sorted({int(n) for e in results["variants"] for n in e["ppl_by_length"]})
    head = ["variant"] + [f"ppl @ {n}" for n in lengths]
    rows = [[e["name"]] + [cell(e["ppl_by_length"].get(str(n)), 2) for n in lengths] for e in results["variants"]]
    return head, rows


def generation_blocks(generations: dict, vocabulary: set[str] | None, refs: dict | None = None) -> list[Block]:
    settings = generations["settings"]
    names = {path: name for name, path in settings["runs"].items()}
    if refs is not None:  # the n-gram model's continuations, same prompts, sampling and seed
        names["ngram"] = f"reference: Kneser-Ney {refs['ngram']['order']}-gram"
        generations = {**generations, "results": [
            {**entry, "outputs": {**entry["outputs"], "ngram": refs["generations"][entry["prompt"]]}}
            for entry in generations["results"]]}
    blocks = [Paragraph(f"Each variant's first-seed run continues the same prompts with the same sampling seed "
                    f"({settings['seed']}): temperature {settings['temperature']}, top-k {settings['top_k']}, "
                    f"up to {settings['new_tokens']} new tokens.")]
    for entry in generations["results"]:
        blocks.append(Paragraph(f"Prompt: «{entry['prompt']}»"))
        rows = [[names.get(run, run), text] for run, text in entry["outputs"].items()]
        blocks.append(Table(["variant", "text"], rows, writing=True))
    continuations: dict[str, list[str]] = {}
    for entry in generations["results"]:
        for run, text in entry["outputs"].items():
            continuations.setdefault(names.get(run, run), []).append(text[len(entry["prompt"]):])
    rows = []
    for name, texts in continuations.items():
        numbers = writing_numbers(texts, vocabulary)
        known = "—" if numbers["known_words"] is None else f"{numbers['known_words']:.1%}"
        rows.append([name, known, f"{numbers['distinct_1']:.1%}", f"{numbers['distinct_2']:.1%}",
                     f"{numbers['repeated_4grams']:.1%}", f"{numbers['mean_words']:.1f}"])
    blocks += [Paragraph("Writing numbers of these continuations (capitu/quality.py): known words, the share of "
                     "generated words found in the training split; distinct-1 and distinct-2, distinct words and "
                     "word pairs over all; repeated 4-grams, the share of word 4-grams that recur in the same text; "
                     "words per continuation, before end-of-text."),
               Table(["variant", "known words", "distinct-1", "distinct-2", "repeated 4-grams", "words"], rows)]
    return blocks


def votes_blocks(path: Path) -> list[Block]:
    """The blind votes cast in `capitu serve` on this study, when there are any."""
    result = ranking(read_votes(path))
    if not result["models"]:
        return []
    rows = [[e["model"], f"{e['score']:.0f}", f"{e['low']:.0f}-{e['high']:.0f}", str(e["votes"]), str(e["wins"]),
             str(e["losses"]), str(e["ties"]), str(e["both_bad"])] for e in result["models"]]
    return [Paragraph(f"{result['votes']} blind votes cast in `capitu serve` ({path.name}). {result['method']}."),
            Table(["variant", "score", "95% interval", "votes", "wins", "losses", "ties", "both bad"], rows)]


def training_seconds(results: dict) -> float:
    """Every run's training time, summed (runs trained at once count each)."""
    return sum(s["train_seconds"] or 0.0 for e in results["variants"] for s in e["seeds"].values())


def reproducibility(results: dict, variants: list[Variant], data: Path, command: list[str],
                    seconds: float) -> str:
    meta = DataFolder(data).meta
    lines = [
        f"command:  {shlex.join(command)}",
        f"commit:   {git_commit() or 'unknown (not a git checkout)'}",
        f"versions: {json.dumps(versions())}",
        f"data:     {data} (fingerprint {meta.get('fingerprint')}; tokenizer {meta['tokenizer']['kind']} "
        f"vocab {meta['tokenizer']['vocab_size']}; test split {meta['splits']['test']['tokens']:,} tokens)",
        f"hardware: {hardware()}",
        f"time:     this invocation {seconds:,.0f} s; the runs' training {training_seconds(results):,.0f} s in all "
        "(their train s summed: what a continued or re-reported study's invocation leaves out)",
        "study:    " + json.dumps(results["study"], ensure_ascii=False),
        "grid:     " + json.dumps([asdict(v) for v in variants], ensure_ascii=False),
        "each run's resolved config: runs/NAME-sSEED/config.json",
    ]
    return "\n".join(lines)


def bench_words(study: dict, entries: list[dict]) -> str:
    """How the speed and memory table was measured."""
    bench = next((e["bench"] for e in entries if e["bench"]), None)
    shapes = (f"prefill runs a {bench['prompt_length']}-token prompt through the model at once, decoding "
              f"{bench['new_tokens']} new tokens one at a time through the KV cache, at each batch size; "
              if bench else "")
    return ("From `capitu bench` on the first seed's model, "
            + ("one round" if study["bench_rounds"] == 1 else
               f"{study['bench_rounds']} rounds interleaved across variants: timings are the median (range) of the "
               "rounds")
            + f"; {shapes}training is the trainer's whole optimizer step. Memory: the peak of training and of "
              "generation (on a CPU, the measuring process's peak resident memory), and the KV cache's bytes per "
              "token. "
            + decode_path_words(entries))


def bench_notes(entries: list[dict]) -> list[Block]:
    """A plain warning above the table when other programs disturbed the bench rounds, and one for each variant
    whose bench failed."""
    notes = [Paragraph(f"The bench of {e['name']} failed, so its speed and memory columns are empty: "
                       f"{e['bench_failed']} (running the study command again tries it again).")
             for e in entries if e.get("bench_failed")]
    busy = [e for e in entries if e["bench"] and e["bench"]["busy"]]
    if busy:
        notes.append(Paragraph("Timings taken on a busy machine: other programs ran beside the bench rounds (up to "
                               f"{max(e['bench']['others'] or 0.0 for e in busy):.0%} of the cores), so the tokens/s "
                               "columns below are not results."))
    return notes


def build_sections(results: dict, generations: dict, figures: dict[str, bytes], repro: str,
                   vocabulary: set[str] | None = None, votes: list[Block] | None = None) -> list[Section]:
    study = results["study"]
    entries = results["variants"]
    tokens = next(e for e in entries if e["name"] == "baseline")["budget"]["tokens"]
    seeds = ", ".join(map(str, study["seed_list"]))
    intro = Section("Setup", [Paragraph(f"{len(entries)} variants x {study['seeds']} seed(s) ({seeds}), "
                                    f"preset {study['preset']}, the same data for all, a budget of "
                                    f"{BUDGET_WORDS[study['budget']]} ({tokens:,} training tokens for the baseline). "
                                    f"Test perplexity is over the whole test split "
                                    f"({entries[0]['seeds'][str(study['first_seed'])]['tokens']:,} tokens scored), "
                                    f"at the training context ({entries[0]['context']}) unless stated; "
                                    f"mean ± sample standard deviation over seeds; each variant is compared with "
                                    f"the baseline by a paired t-test over seeds on test loss, its p "
                                    f"Holm-adjusted over the variants (so that α bounds the chance of any false "
                                    f"finding among them).")])
    head, rows = main_table(results)
    length_head, length_rows = length_table(results)
    found = results.get("generalization")
    general = [Paragraph(generalization.describe(found))] if found else []
    if found and found["texts"]:
        general += [Paragraph("Bits per byte on texts unlike the training data, and over the test split's "
                              "(mean ± sd over seeds):"), Table(*generalization.text_table(found, entries))]
    if found and found["pairs"]:
        general += [Paragraph("Minimal pairs right, per phenomenon (mean ± sd over seeds; pairs in brackets; "
                              "chance 50%):"), Table(*generalization.grammar_table(found, entries))]
    sections = [
        intro,
        Section("Findings", [Items(results["findings"])]),
        *([Section("Ladder", ladder_blocks(results["ladder"], figures["ladder.png"]))] if "ladder" in results else []),
        Section("Budget", budget_blocks(results)),
        Section("Results", [Table(head, rows)]),
        Section("Speed and memory", [*bench_notes(entries), Paragraph(bench_words(study, entries)),
                                     Table(*speed_table(results))]),
        Section("Generalization", [*general,
                                   Paragraph("Perplexity by evaluation length (— : learned positions cannot go past "
                                             "their training context; the feed-forward LM reads a fixed window of n "
                                             "tokens, so it is scored at the training context only):"),
                                   Table(length_head, length_rows)]),
        Section("Plots", [Image("val_loss.png", figures["val_loss.png"], "Validation loss vs training tokens"),
                          Image("lengths.png", figures["lengths.png"], "Perplexity vs evaluation length")]
                + [Image(name, figures[name], caption) for name, caption in
                   (("speed.png", "Throughput"), ("memory.png", "Memory")) if name in figures]),
        Section("Generations", generation_blocks(generations, vocabulary, results["references"])),
        *([Section("Blind votes", votes)] if votes else []),
        Section("Reproducibility", [Preformatted(repro)]),
    ]
    return sections


def make_figures(results: dict) -> dict[str, bytes]:
    entries = results["variants"]
    curves = {}
    for e in entries:
        per_seed = [s["val_curve"] for s in e["seeds"].values()]
        steps = min(len(c) for c in per_seed)
        curves[e["name"]] = [(per_seed[0][i][0], mean([c[i][1] for c in per_seed])) for i in range(steps)]
    lengths = {e["name"]: {int(n): s["mean"] for n, s in e["ppl_by_length"].items() if s} for e in entries}
    refs, val_lines, ppl_lines = results["references"], None, None
    if refs is not None:
        names = {"ppmd": "PPMd primed with train", "ngram": f"Kneser-Ney {refs['ngram']['order']}-gram"}
        val_lines = {names[key]: refs["val_loss"][key] for key in REFERENCE_ROWS}
        # PPMd's bits spread over the tokens the models score: its perplexity per token of the same text
        ppl_lines = {names["ppmd"]: 2.0 ** (refs["ppmd"]["bits"] / refs["ngram"]["tokens"]),
                     names["ngram"]: refs["ngram"]["ppl"]}
    figures = {"val_loss.png": plots.validation_curves(curves, val_lines),
               "lengths.png": plots.perplexity_by_length(lengths, entries[0]["context"], ppl_lines)}
    benched = [e for e in entries if e["bench"]]
    if benched:
        speed = [("training tokens/s", {e["name"]: e["bench"]["train_tok_s"] for e in benched})]
        spans = [{e["name"]: (e["bench"]["spread"]["train_tok_s"]["min"], e["bench"]["spread"]["train_tok_s"]["max"])
                  for e in benched}]
        for key, words in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
            for batch in benched[0]["bench"][key]:
                speed.append((f"{words} tokens/s, batch {batch}", {e["name"]: e["bench"][key][batch] for e in benched}))
                spans.append({e["name"]: (e["bench"]["spread"][key][batch]["min"],
                                          e["bench"]["spread"][key][batch]["max"]) for e in benched})
        figures["speed.png"] = plots.bars(speed, "Throughput (capitu bench): median and range of the rounds", spans)
        figures["memory.png"] = plots.bars([
            ("training peak (MiB)", {e["name"]: e["bench"]["peak_train_bytes"] / MIB for e in benched}),
            ("generation peak (MiB)", {e["name"]: e["bench"]["peak_generate_bytes"] / MIB for e in benched}),
            ("KV cache (bytes/token)", {e["name"]: e["bench"]["kv_bytes_per_token"]["shapes"] for e in benched}),
        ], "Memory (capitu bench)")
    return figures


CSV_FIELDS = ["variant", "kind", "pos", "kv_heads", "parameters", "seeds", "ppl_mean", "ppl_std", "loss_mean",
              "loss_std", "bpb_mean", "bpb_std", "bpc_mean", "bpc_std", "word_ppl_mean", "word_ppl_std",
              "ppl_difference_vs_baseline", "p_vs_baseline", "p_holm_vs_baseline", "bpb_minus_ppmd", "bpb_minus_ngram",
              "train_tok_s", "prefill_tok_s_b1", "prefill_tok_s_b16", "decode_tok_s_b1", "decode_tok_s_b16",
              "peak_train_bytes", "peak_generate_bytes", "kv_bytes_per_token"]


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for e in results["variants"]:
        test, bench = e["vs_baseline"] or {}, e["bench"] or {}
        row = {"variant": e["name"], "kind": e["kind"], "pos": e["pos"], "kv_heads": e["kv_heads"],
               "parameters": e["parameters"], "seeds": len(e["seeds"]),
               "ppl_difference_vs_baseline": test.get("ppl_difference"), "p_vs_baseline": test.get("p"),
               "p_holm_vs_baseline": test.get("p_holm"),
               **{f"bpb_minus_{key}": (e["vs_references"] or {}).get(key) for key in REFERENCE_ROWS}}
        for key in ("ppl", "loss", "bpb", "bpc", "word_ppl"):
            row[f"{key}_mean"], row[f"{key}_std"] = e[key]["mean"], e[key]["std"]
        if bench:
            row.update(train_tok_s=bench["train_tok_s"], peak_train_bytes=bench["peak_train_bytes"],
                       peak_generate_bytes=bench["peak_generate_bytes"],
                       kv_bytes_per_token=bench["kv_bytes_per_token"]["shapes"])
            for batch in ("1", "16"):
                row[f"prefill_tok_s_b{batch}"] = bench["prefill_tok_s"].get(batch)
                row[f"decode_tok_s_b{batch}"] = bench["decode_tok_s"].get(batch)
        for length, s in e["ppl_by_length"].items():
            row[f"ppl_at_{length}"] = s["mean"] if s else None
        rows.append({**row, **generalization.csv_fields(e)})
    return rows


def write_report(out: Path, study: StudyConfig, variants: list[Variant], data: Path, command: list[str],
                 seconds: float) -> tuple[Path, dict]:
    """The report's files in `out`; returns report.md's path and the results (results.json's content)."""
    results = collect(out, study, variants)
    generations = read_json(StudyFolder(out).generations)
    figures = make_figures(results)
    repro = reproducibility(results, variants, data, command, seconds)
    results["reproducibility"] = repro
    view = ladder(results, variants)
    if view is not None:  # a ladder grid
        results["ladder"] = view
        figures["ladder.png"] = ladder_figure(view)
    results["findings"] = (reference_findings(results) + findings(results)
                           + generalization.findings(results["generalization"], results["variants"], study.seeds)
                           + (ladder_findings(view) if view else []))
    votes = votes_blocks(StudyFolder(out).votes)
    sections = build_sections(results, generations, figures, repro, training_vocabulary(data), votes)
    title = f"capitu study: {study.preset}, {len(variants)} variants x {study.seeds} seed(s)"
    (out / "plots").mkdir(exist_ok=True)
    for name, png in figures.items():
        atomic_write_bytes(out / "plots" / name, png)
    atomic_write_json(StudyFolder(out).results, results)
    rows = csv_rows(results)
    fields = CSV_FIELDS + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in CSV_FIELDS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode("utf-8"))
    atomic_write_bytes(out / "report.html", render("report.html", title=title, sections=sections).encode("utf-8"))
    atomic_write_bytes(out / "report.md", render_markdown(title, sections).encode("utf-8"))
    return out / "report.md", results
