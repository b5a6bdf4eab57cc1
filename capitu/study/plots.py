"""The report's figures, as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib import ticker  # noqa: E402


def to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def line_styles(count: int):
    """Distinct colour and dash for up to 30 lines (the default cycle has 10 colours)."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dashes = ["-", "--", ":"]
    return [(colours[i % len(colours)], dashes[(i // len(colours)) % len(dashes)]) for i in range(count)]


def reference_lines(axes, references: dict[str, float] | None) -> None:
    """Each reference's value as a horizontal grey line, named at its right end."""
    for (name, value), dash in zip((references or {}).items(), ("--", ":", "-.")):
        axes.axhline(value, color="#555555", linestyle=dash, linewidth=1.1, label=f"reference: {name}")


def validation_curves(curves: dict[str, list[tuple[int, float]]], references: dict[str, float] | None = None) -> bytes:
    """Validation loss against training tokens, one line per variant (mean over seeds), and
    the references' validation loss as horizontal lines."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for (name, points), (colour, dash) in zip(curves.items(), line_styles(len(curves))):
        if points:
            axes.plot([t for t, _ in points], [v for _, v in points], dash, color=colour, label=name, linewidth=1.4)
    reference_lines(axes, references)
    axes.set_xlabel("training tokens")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title("Validation loss during training (mean over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    return to_png(figure)


def perplexity_by_length(series: dict[str, dict[int, float]], context: int,
                         references: dict[str, float] | None = None) -> bytes:
    """Test perplexity against evaluation context length; unsupported lengths are absent; the
    references' perplexity per token of the same split as horizontal lines."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for (name, points), (colour, dash) in zip(series.items(), line_styles(len(series))):
        lengths = sorted(points)
        axes.plot(lengths, [points[n] for n in lengths], dash, marker="o", color=colour, label=name, linewidth=1.4)
    reference_lines(axes, references)
    axes.axvline(context, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    lengths = sorted({n for points in series.values() for n in points})
    axes.set_xticks(lengths, [str(n) for n in lengths])
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
    axes.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.0f"))
    axes.set_xlabel(f"evaluation context length (tokens; dotted: the training context, {context})")
    axes.set_ylabel("test perplexity")
    axes.set_title("Perplexity by evaluation length (mean over seeds)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, ncol=2)
    return to_png(figure)


def bars(panels: list[tuple[str, dict[str, float]]], title: str,
         ranges: list[dict[str, tuple[float, float]] | None] | None = None) -> bytes:
    """One horizontal bar chart per panel (title, {variant: value}), three to a row; `ranges`,
    one per panel or None, draws each value's (low, high) range as an error bar."""
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    height = 0.32 * max(len(values) for _, values in panels) + 1.0
    figure, grid = plt.subplots(lines, columns, figsize=(4.2 * columns, height * lines + 0.4), sharey=True,
                                layout="constrained", squeeze=False)
    axes = grid.flatten()
    for ax in axes[len(panels):]:  # the last row's empty places
        ax.set_visible(False)
    for ax, (label, values), spans in zip(axes, panels, ranges or [None] * len(panels)):
        names = list(values)
        errors = None
        if spans:  # distances from the bar's end to each end of the range
            errors = [[values[n] - spans[n][0] for n in names], [spans[n][1] - values[n] for n in names]]
        ax.barh(names, [values[n] for n in names], color="#4c72b0", xerr=errors, ecolor="#222222", capsize=3)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    axes[0].yaxis.set_inverted(True)  # the first variant on top; the y axis is shared (inverting each would toggle)
    figure.suptitle(title)
    return to_png(figure)


def waterfall(start: float, steps: list[tuple[str, float]]) -> bytes:
    """A waterfall: the baseline's value, then each step's change as a floating bar (green
    down, red up), then where the steps end."""
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * (len(steps) + 2)), 4.5))
    level, names = start, ["GPT-2"]
    axes.bar(0, start, color="#888888")
    for i, (name, change) in enumerate(steps, 1):
        axes.bar(i, change, bottom=level, color="#2a9d4b" if change < 0 else "#c0392b")
        axes.text(i, max(level, level + change), f"{change:+.3f}", ha="center", va="bottom", fontsize=8)
        level += change
        names.append(name)
    axes.bar(len(steps) + 1, level, color="#4c72b0")
    names.append("end")
    low = min(start, level, *(start + sum(c for _, c in steps[:i]) for i in range(len(steps) + 1)))
    high = max(start, level, *(start + sum(c for _, c in steps[:i]) for i in range(len(steps) + 1)))
    margin = 0.25 * (high - low) or 0.05
    axes.set_ylim(low - margin, high + margin)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel("test bits per byte (lower is better)")
    axes.set_title("From GPT-2, one change at a time (mean over seeds)")
    axes.grid(axis="y", alpha=0.3)
    return to_png(figure)
