from capitu.pages import Items, Paragraph, Section, Table, inline_code, render


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
