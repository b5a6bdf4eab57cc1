"""Rendering: Markdown, and HTML from Jinja2 templates (`capitu/templates/`): the study report and `capitu serve`'s
page share one style sheet and are edited as HTML. Autoescaping is on: text from a model or
a user is shown as text, never as markup."""

from __future__ import annotations

import base64
import tomllib
from collections import namedtuple
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

ENVIRONMENT = Environment(loader=PackageLoader("capitu", "templates"), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.filters["base64"] = lambda data: base64.b64encode(data).decode("ascii")


def inline_code(text: str) -> Markup:
    """Prose for HTML: escaped, its `spans` in <code>, as Markdown shows them (a text with an unpaired backtick is
    left as it is)."""
    parts = str(escape(text)).split("`")
    if len(parts) % 2 == 0:
        return escape(text)
    return Markup("".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts)))


ENVIRONMENT.filters["inline_code"] = inline_code


def render(template: str, **context) -> str:
    return ENVIRONMENT.get_template(template).render(**context)


PAGE_WORDS = tomllib.loads(resources.files("capitu").joinpath("templates", "page.toml").read_text(encoding="utf-8"))


def page_language(asked: str | None, accept_language: str | None) -> str:
    """The language of capitu serve's page: the one asked for (?lang=), else the first of the browser's
    (Accept-Language, e.g. "pt-BR,pt;q=0.9,en;q=0.8") the page has, else English."""
    if asked in PAGE_WORDS:
        return asked
    for entry in (accept_language or "").split(","):
        primary = entry.split(";")[0].strip().split("-")[0].lower()
        if primary in PAGE_WORDS:
            return primary
    return "en"


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown_grid(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, the rule, one line per row."""
    lines = ["| " + " | ".join(map(markdown_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_comparison(results: list[dict]) -> str:
    """generate.compare's results, one table per prompt: a column per run, its text in the cell."""
    blocks = []
    for entry in results:
        runs = list(entry["outputs"])
        table = markdown_grid(runs, [[entry["outputs"][r] for r in runs]])
        blocks.append(f"**Prompt:** {markdown_cell(entry['prompt']) or '(empty: from end-of-text)'}\n\n{table}")
    return "\n\n".join(blocks)


# ---- a document: titled sections of named blocks, rendered as Markdown or HTML ------------
# (`kind` tells the HTML template which; an image's `file` is its name beside a Markdown document)

Paragraph = namedtuple("Paragraph", "text kind", defaults=["p"])
Items = namedtuple("Items", "items kind", defaults=["list"])
Table = namedtuple("Table", "head rows kind writing", defaults=["table", False])  # writing: cells of text to read
Image = namedtuple("Image", "file png caption kind", defaults=["image"])
Preformatted = namedtuple("Preformatted", "text kind", defaults=["pre"])
Block = Paragraph | Items | Table | Image | Preformatted
Section = namedtuple("Section", "title blocks")


def markdown_block(block: Block) -> str:
    if isinstance(block, Items):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return markdown_grid(block.head, block.rows)
    if isinstance(block, Image):
        return f"![{block.caption}](plots/{block.file})"
    if isinstance(block, Preformatted):
        return "```\n" + block.text + "\n```"
    return block.text


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts += [f"## {section.title}", *map(markdown_block, section.blocks)]
    return "\n\n".join(parts) + "\n"
