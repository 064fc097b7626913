"""The book as a reader sees it: a tiny fixture book with the real book's stylesheet and figure script is built
with jupyter-book and rendered in headless Chromium at 1280 px; no table may stick out of its column or need a
sideways scroll (a hidden column), and no raw ``{numref}`` / ``{glue}`` source may reach the page.  Skipped when
Chromium is not installed (Debian: ``apt-get install chromium``).

:func:`render_report` is usable on any built page (``python tests/test_book_render.py book/_build/html/x.html``)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000"]
RAW = re.compile(r"\{(numref|glue(:[a-z]+)?|doc|cite(:[a-z]+)?)\}`")

# Measured in the page once it has laid out: every table's box against its own width and the article column,
# and the article's text (raw roles).  Written into the DOM so that --dump-dom returns it.
MEASURE = """
<script>
function renderReport() {
  let pre = document.getElementById("render-report");
  if (!pre) { pre = document.createElement("pre"); pre.id = "render-report"; document.body.appendChild(pre); }
  try {
  const article = document.querySelector(".bd-article") || document.body;
  const col = article.getBoundingClientRect();
  const tables = [...article.querySelectorAll("table")].map((t, i) => {
    const r = t.getBoundingClientRect();
    return {index: i, id: t.id || t.className, width: r.width, right: r.right, column_right: col.right,
            scroll_width: t.scrollWidth, client_width: t.clientWidth,
            header: [...t.querySelectorAll("th")].map(th => th.innerText.trim())};
  });
  pre.textContent = JSON.stringify({tables, text: article.innerText});
  } catch (e) { pre.textContent = JSON.stringify({error: String(e), tables: [], text: ""}); }
}
renderReport();                                   // at parse end (stylesheets applied) ...
window.addEventListener("load", renderReport);    // ... and again once images and fonts are in
</script>
"""


def render_report(html: Path) -> dict:
    """Render ``html`` in headless Chromium at 1280 px and return {tables: [...], text, overflowing, raw}: the
    tables that stick out of the article column or need a sideways scroll, and any raw role source."""
    html = Path(html).resolve()
    probe = html.with_name(f"render-probe-{html.name}")        # beside the page, so its relative links resolve
    src = html.read_text(encoding="utf-8")
    head, sep, tail = src.rpartition("</body>")      # the last one: the page's scripts may quote "</body>"
    probe.write_text(head + MEASURE + sep + tail if sep else src + MEASURE, encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                                  "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="render-report"[^>]*>(.*?)</pre>', out.stdout, re.S)   # the theme adds attributes
    assert m, f"no report from Chromium: {out.stderr[-2000:]}"
    import html as h
    report = json.loads(h.unescape(m.group(1)))
    assert "error" not in report, f"the measuring script failed: {report.get('error')}"
    report["overflowing"] = [t for t in report["tables"] if t["right"] > t["column_right"] + 1
                             or t["scroll_width"] > t["client_width"] + 1]
    report["raw"] = sorted({m.group(0) for m in RAW.finditer(report["text"] + src)})
    return report


def fixture_page() -> str:
    """One page with the book's widest kind of table (the protocol chapter's comparisons, its deciding columns
    last), made by the book's own table helper, and a figure that a ``{numref}`` refers to."""
    import pandas as pd

    from harness.book import table_html
    row = {"task": "CoLA", "b − a": "lora_fa_svd − random", "lr (a, b)": "0.001, 0.003", "quantity": "final",
           "dev examples": "−67.6", "difference [95 % CI]": "−0.065 [−0.081, −0.049]", "b ahead": "0/5",
           "family": "init_vs_random", "p (Holm)": "0.0083",
           "verdict": "not determined at n = 5 (detectable: |Δ| ≥ 0.124)"}
    table = table_html(pd.DataFrame([row, {**row, "task": "MRPC", "b − a": "svd_seed − random", "verdict": "behind"}]))
    return ("# Render check\n\n```{raw} html\n" + table + "\n```\n\n"
            "```{figure} dot.png\n:name: fig-dot\n\nA figure that {numref}`fig-dot` refers to.\n```\n\n"
            "See {numref}`fig-dot`.\n")



@pytest.fixture(scope="module")
def fixture_book(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    book = tmp_path_factory.mktemp("book")
    (book / "_static").mkdir()
    for f in ("custom.css", "figures.js"):
        shutil.copy(ROOT / "book" / "_static" / f, book / "_static" / f)
    (book / "_config.yml").write_text(
        "title: render check\nexecute:\n  execute_notebooks: 'off'\nsphinx:\n  config:\n"
        "    html_css_files: [custom.css]\n    html_js_files: [figures.js]\n    numfig: true\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (book / "index.md").write_text(fixture_page())
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    fig.savefig(book / "dot.png")
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(book), "-W", "-n", "--keep-going"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return book / "_build" / "html"


def test_no_table_overflows_and_no_raw_roles(fixture_book):
    report = render_report(fixture_book / "index.html")
    assert len(report["tables"]) == 1 and report["tables"][0]["header"][-2:] == ["p (Holm)", "verdict"]
    assert report["overflowing"] == [], report["overflowing"]
    assert report["raw"] == []
    assert "Fig. 1" in report["text"]                                # the {numref} resolved


def test_the_check_sees_an_overflowing_table_and_a_raw_role(fixture_book):
    """The same page with a table forced wider than the column and an unresolved role: both are reported."""
    page = fixture_book / "index.html"
    wide = fixture_book / "wide.html"
    wide.write_text(page.read_text().replace("<table", '<table style="min-width: 2000px"', 1)
                    .replace("</article>", "<p>{numref}`fig-missing`</p></article>", 1))
    report = render_report(wide)
    assert len(report["overflowing"]) == 1 and report["overflowing"][0]["width"] >= 2000
    assert "{numref}`" in report["raw"]


if __name__ == "__main__":                # check pages of a built book: python tests/test_book_render.py PAGE...
    bad = 0
    for p in sys.argv[1:]:
        r = render_report(Path(p))
        for t in r["overflowing"]:
            print(f"{p}: table {t['index']} ({', '.join(t['header'][:3])}, ...) {t['scroll_width']:.0f} px in a "
                  f"{t['client_width']:.0f} px box")
        for raw in r["raw"]:
            print(f"{p}: raw {raw}")
        bad += bool(r["overflowing"] or r["raw"])
    sys.exit(1 if bad else 0)
