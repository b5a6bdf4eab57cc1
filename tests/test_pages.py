from pathlib import Path

import pytest

from capitu.pages import Items, Paragraph, Section, Table, inline_code, render

CHROMIUM = Path("/usr/bin/chromium")


def test_inline_code_is_escaped_prose_with_its_spans_as_code():
    assert inline_code("From `capitu bench` on <b>") == "From <code>capitu bench</code> on &lt;b&gt;"
    assert inline_code("`<a>` and `x`") == "<code>&lt;a&gt;</code> and <code>x</code>"
    assert inline_code("one ` alone <i>") == "one ` alone &lt;i&gt;"  # unpaired: as it is, escaped


def test_the_html_report_shows_code_in_prose_and_table_cells_as_they_are():
    html = render("report.html", title="t", sections=[Section("S", [
        Paragraph("run `capitu study` <now>"), Items(["see `runs/`"]), Table(["a"], [["`model text`"]])])])
    assert "<p>run <code>capitu study</code> &lt;now&gt;</p>" in html
    assert "<li>see <code>runs/</code></li>" in html
    assert "<td>`model text`</td>" in html  # a cell (a model's writing) is text, never markup


def test_a_table_of_writing_keeps_its_lines_and_reads_from_the_left():
    html = render("report.html", title="t", sections=[Section("S", [
        Table(["variant", "text"], [["rope", "Era uma vez\n— Não."]], writing=True), Table(["n"], [["1"]])])])
    assert '<table class="writing">' in html and "<td>Era uma vez\n— Não.</td>" in html
    assert html.count("<table>") == 1  # a table of numbers stays as it was


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_browser_shows_writing_on_its_lines_from_the_left_and_numbers_from_the_right(tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(render("report.html", title="t", sections=[Section("S", [
        Table(["variant", "text"], [["rope", "Era uma vez\n— Não."]], writing=True),
        Table(["variant", "ppl"], [["rope", "112.75"]])])]), encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(page_file.as_uri())
        writing, number = page.locator("td:nth-child(2)").all()
        assert writing.evaluate("cell => getComputedStyle(cell).textAlign") == "left"
        assert writing.inner_text() == "Era uma vez\n— Não."  # two lines, as the model wrote them
        assert number.evaluate("cell => getComputedStyle(cell).textAlign") == "right"
        browser.close()
