"""The ladder view of a study whose variants name a `parent` (the `ladder` grid: GPT-2 to the modern recipe, one
change per rung): each rung against the rung below it (paired test over seeds), the cumulative difference to GPT-2,
and a waterfall plot of the main line.

The main line starts at the baseline and follows, in grid order, the first variant whose parent is the line's last
rung; the other variants with a parent are side branches, each compared with its own parent."""

from __future__ import annotations

from capitu.pages import Block, Image, Paragraph, Table
from capitu.study import plots
from capitu.study.stats import adjust_family, paired_t_test
from capitu.study.variants import Variant


def own_changes(variant: Variant, variants: list[Variant]) -> str:
    """What a rung adds to its parent (parse_grid put the parent's settings first)."""
    parent = next(v for v in variants if v.name == variant.parent)
    changes = variant.set[len(parent.set):]
    if variant.kv_divisor != parent.kv_divisor:
        changes.append(f"n_kv_head = n_head / {variant.kv_divisor}")
    return ", ".join(changes) or "(nothing)"


def bpb_test(entry: dict, against: dict, seeds: list[int]) -> dict:
    """Difference of mean test bits per byte, with a paired t-test over seeds."""
    mine = [entry["seeds"][str(s)]["bpb"] for s in seeds]
    theirs = [against["seeds"][str(s)]["bpb"] for s in seeds]
    test = paired_t_test(mine, theirs) or {"p": None}
    return {"difference": entry["bpb"]["mean"] - against["bpb"]["mean"], "p": test["p"]}


def ladder(results: dict, variants: list[Variant]) -> dict | None:
    """Each rung's difference to its parent and to the baseline; None without rungs."""
    if not any(v.parent for v in variants):
        return None
    entries = {e["name"]: e for e in results["variants"]}
    seeds = results["study"]["seed_list"]
    main = ["baseline"]
    for variant in variants:
        if variant.parent == main[-1]:
            main.append(variant.name)
    rungs = []
    for variant in variants:
        if not variant.parent:
            continue
        entry = entries[variant.name]
        rungs.append({
            "name": variant.name, "parent": variant.parent, "main": variant.name in main,
            "change": own_changes(variant, variants), "bpb": entry["bpb"],
            "vs_parent": bpb_test(entry, entries[variant.parent], seeds),
            "vs_baseline": bpb_test(entry, entries["baseline"], seeds), "bench": entry["bench"],
        })
    for family in ("vs_parent", "vs_baseline"):  # each a family of tests (stats.holm)
        adjust_family(rung[family] for rung in rungs)
    return {"main": main, "baseline_bpb": entries["baseline"]["bpb"], "baseline_bench": entries["baseline"]["bench"],
            "rungs": rungs}


def p_text(p: float | None) -> str:
    return "n/a (1 seed)" if p is None else f"{p:.3g}"


def speed_cells(bench: dict | None) -> list[str]:
    if not bench:
        return ["—"] * 3
    decode = bench["decode_tok_s"].get("1")
    return [f"{bench['train_tok_s']:,.0f}", "—" if decode is None else f"{decode:,.0f}",
            f"{bench['peak_train_bytes'] / 2**20:,.0f}"]


def ladder_blocks(view: dict, figure: bytes) -> list[Block]:
    head = ["rung", "adds", "bits/byte", "Δ vs the rung below", "p", "Δ vs GPT-2 (cumulative)", "p",
            "train tok/s", "decode tok/s b1", "train peak MiB"]
    base = view["baseline_bpb"]
    rows = [["baseline (GPT-2)", "—", f"{base['mean']:.4f} ± {base['std']:.4f}", "—", "—", "—", "—",
             *speed_cells(view["baseline_bench"])]]
    for rung in view["rungs"]:
        name = rung["name"] if rung["main"] else f"{rung['name']} (side branch of {rung['parent']})"
        rows.append([name, rung["change"], f"{rung['bpb']['mean']:.4f} ± {rung['bpb']['std']:.4f}",
                     f"{rung['vs_parent']['difference']:+.4f}", p_text(rung["vs_parent"]["p_holm"]),
                     f"{rung['vs_baseline']['difference']:+.4f}", p_text(rung["vs_baseline"]["p_holm"]),
                     *speed_cells(rung["bench"])])
    return [Paragraph("Each rung adds one change to the rung below it (its parent) and keeps everything the parent "
                  "has. Δ is the difference of mean test bits per byte (negative: better); p is a paired t-test "
                  "over seeds on per-seed bits per byte, Holm-adjusted over the rungs (each column a family). Speed "
                  "is the bench's median."),
            Table(head, rows),
            Image("ladder.png", figure, "The ladder: each rung's change of test bits per byte (mean over seeds)")]


def ladder_figure(view: dict) -> bytes:
    steps = [(rung["name"], rung["vs_parent"]["difference"]) for rung in view["rungs"] if rung["main"]]
    return plots.waterfall(view["baseline_bpb"]["mean"], steps)


def ladder_findings(view: dict) -> list[str]:
    main = [rung for rung in view["rungs"] if rung["main"]]
    if not main:
        return []
    top = main[-1]
    significant = [r for r in main if r["vs_parent"]["p_holm"] is not None and r["vs_parent"]["p_holm"] < 0.05]
    best = min(main, key=lambda r: r["vs_parent"]["difference"])
    return [f"Ladder: from GPT-2's {view['baseline_bpb']['mean']:.3f} bits/byte to {top['bpb']['mean']:.3f} at the "
            f"last rung, {top['name']} ({top['vs_baseline']['difference']:+.3f}, "
            f"p = {p_text(top['vs_baseline']['p_holm'])}); "
            f"the largest single step: {best['name']} ({best['vs_parent']['difference']:+.3f}); steps significant "
            f"against the rung below (Holm-adjusted p < 0.05): {', '.join(r['name'] for r in significant) or 'none'}."]
