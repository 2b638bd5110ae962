"""The board's page (rendered from its Markdown) and frontier plot (clipped to where methods differ).

The last tests open pages in headless Chromium: what a reader sees is the DOM after the page's own script
ran, not the HTML string; they skip, with the reason, where no browser is installed. One of them renders the
board from the committed results with the current renderer and measures, at a 1400 px wide window, that no
table is wider than the page's content box.
"""

import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import time

import pytest
from test_leaderboard_stats import bon_rec, rec

from prefopt.leaderboard.aggregate import aggregate
from prefopt.leaderboard.page import html_page, slug, sort_key
from prefopt.leaderboard.plot import _task_curves, frontier_png, x_limit, y_limits
from prefopt.leaderboard.render import render

BOARD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "leaderboard")

PNG = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["rank", "method"] + [f"col {i} (s)" for i in range(21)]  # as wide as the board's main table

BOARD_MD = "\n".join([
    "# prefopt leaderboard — suite `standard`", "",
    "Code version `c1`, CPU capability **AVX512**; see [the grids](LEADERBOARD.md#reviews-tuning-grids).", "",
    "![gold reward against √KL along training](frontier.png)", "",
    "## reviews", "",
    "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    "| 1 | **dpo** | " + " | ".join(f"**{i}.5 [1.0, 2.0]**" for i in range(21)) + " |",
    "| 2 | &lt;b&gt;evil&lt;/b&gt; | " + " | ".join(f"−{i},000" for i in range(21)) + " |",
    "| — | <b>evil</b> | " + " | ".join("—" for _ in range(21)) + " |",
    "| 3 | rejection_sampling | **FAIL** | FAIL: chosen log-prob fell on 1/3 | "
    + " | ".join("PASS" for _ in range(19)) + " |", "",
    "## reviews: tuning grids", "", "- dpo: β=0.1 lr=0.001: 1.000 (KL 1.00)★", "",
])


def board_agg():
    """A small board: DPO, GRPO (proxy RM), best-of-n, and one run that diverges (gold −8 at KL 200)."""
    rs = []
    for seed in (0, 1, 2):
        rs.append(rec("dpo", seed, 1.0 + 0.1 * seed, 5.0 + seed, point={"lr": 1e-3, "beta": 0.1}))
        rs.append(rec("grpo", seed, 0.4 + 0.05 * seed, 2.0, reward="proxy", category="online", proxy=2.0 + seed,
                      eval={"proxy_reward_ref": 1.0}))
        rs.append(rec("diverges", seed, -8.0, 200.0, reward="proxy", category="online", proxy=9.0,
                      eval={"proxy_reward_ref": 1.0}))
        rs.append(bon_rec(seed))
    return aggregate(rs)


# ---------------------------------------------------------------- the page, as HTML text


def test_the_page_renders_the_markdown_and_shows_no_markdown_syntax():
    page = html_page(BOARD_MD, "prefopt leaderboard — standard", {"frontier.png": PNG + b"tiny"})
    body = page.split("<body>")[1].split("<script>")[0]
    assert "**" not in body and "`" not in body
    assert "<strong>AVX512</strong>" in body and "<code>standard</code>" in body
    assert '<table class="board' in body and len(re.findall(r"<th[ >]", body)) == len(COLUMNS)
    assert '<div class="tbl">\n<table class="board wide">' in body  # many columns: the smaller font, no scroll box
    assert "rejection_<wbr>sampling" in body and 'data-v="rejection_sampling"' in body  # may break after "_"
    assert body.count('<td data-v="FAIL" class="fail">') == 1 and body.count('class="fail"') == 2  # red, not green
    assert '<img src="data:image/png;base64,' in body and 'src="frontier.png"' not in body
    # headings carry GitHub's anchors, and a link into LEADERBOARD.md becomes a link within the page
    assert '<h2 id="reviews-tuning-grids">' in body and 'href="#reviews-tuning-grids"' in body
    # HTML in the Markdown is text, whether written raw or as entities
    assert "<b>evil</b>" not in page and body.count(">&lt;b&gt;evil&lt;/b&gt;<") == 2
    # sort keys: the number a cell starts with (bold, thousands, the Unicode minus), else its text
    assert 'data-v="3.5"' in body and 'data-v="-2000"' in body and 'data-v="dpo"' in body
    assert "http" not in page  # self-contained: nothing is fetched


def test_sort_keys_and_anchors():
    assert sort_key("1.015 [0.763, 1.233]") == "1.015" and sort_key("4,096") == "4096" and sort_key("> 40") == "40"
    assert sort_key("−0.209 [−0.3, 0.1]") == "-0.209" and sort_key("β=0.1 lr=0.003") == "β=0.1 lr=0.003"
    assert sort_key("—") == "—"
    assert slug("reviews: tuning grids") == "reviews-tuning-grids" and slug("gold @ KL≤1 (curve)") == "gold--kl1-curve"


# ---------------------------------------------------------------- the plot


def test_y_limits_leave_a_diverging_curve_out_and_name_it():
    curves = {"dpo": [0.0, 0.5, 1.0], "grpo": [0.0, 0.3, 0.45], "ipo": [0.0, -0.1, -0.2], "diverges": [0.0, -4.0, -8.0]}
    lo, hi, clipped = y_limits(curves, reference=0.0)
    assert -8.0 < lo < -0.2  # the outlier is out of view; π_SFT and the method below it are in it
    assert 1.0 < hi < 1.2
    assert clipped == {"diverges": -8.0}
    # when most methods end below π_SFT, they are where methods differ: nothing is clipped
    lo, hi, clipped = y_limits({"a": [0.0, -1.0], "b": [0.0, -1.5], "c": [0.0, -2.0], "d": [0.0, 0.2]}, 0.0)
    assert clipped == {} and lo < -2.0
    assert y_limits({}, None) == (0.0, 1.0, {})


def test_x_limit_clips_a_run_far_beyond_the_others():
    hi, clipped = x_limit({"a": [0.0, 1.0, 2.0], "b": [0.0, 1.5], "c": [0.0, 2.5], "far": [0.0, 5.0, 16.4]})
    assert 2.5 < hi < 16.4 and clipped == {"far": 16.4}
    hi, clipped = x_limit({"a": [0.0, 1.0], "b": [0.0, 2.0]})
    assert clipped == {} and hi >= 2.0


def test_frontier_png_from_results(tmp_path):
    agg = board_agg()
    curves = _task_curves(agg["tasks"]["reviews"]["rows"])
    gold = {name: ys for _, name, _, ys, _ in curves["methods"]}
    assert min(gold["diverges"]) == pytest.approx(-8.0) and curves["sft"] == pytest.approx(0.0)
    lo, _, clipped = y_limits(gold, curves["sft"])
    assert lo > -8.0 and "diverges" in clipped
    path = tmp_path / "frontier.png"
    png = frontier_png(agg, ["reviews"], "test board", str(path))
    assert png[:8] == PNG and path.read_bytes() == png and len(png) > 10_000
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically: no temporary file left


# ---------------------------------------------------------------- the page, as a browser shows it


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium: apt-get install chromium (Debian) to run the page check")


class _Text(html.parser.HTMLParser):
    """Text nodes outside <script> and <style>, the tables' count, the images and the body's attributes."""

    def __init__(self):
        super().__init__()
        self.text, self.tables, self.images, self.body, self._skip = [], 0, [], {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table" and "board" in (a.get("class") or ""):
            self.tables += 1
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def test_the_page_in_headless_chromium(tmp_path):
    browser = _browser()
    png = frontier_png(board_agg(), ["reviews"], "test board", str(tmp_path / "frontier.png"))
    page = tmp_path / "index.html"
    page.write_text(html_page(BOARD_MD, "prefopt leaderboard", {"frontier.png": png}), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    t0 = time.monotonic()
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0 and "<table" in dom.stdout, dom.stderr[-2000:]
    p = _Text()
    p.feed(dom.stdout)
    text = "".join(p.text)
    assert "**" not in text and "`" not in text and "AVX512" in text and "<b>evil</b>" in text
    assert p.tables == 1 and len(p.images) == 1 and p.images[0].startswith("data:image/png;base64,")
    assert p.body.get("data-images-loaded") == "1"  # the plot decoded in the browser
    assert "rejection_sampling" in text  # the <wbr> is a break opportunity, not a character
    shot = tmp_path / "page.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000
    print(f"headless Chromium: DOM and screenshot in {time.monotonic() - t0:.1f} s")


# Runs after the page's own script, on load: measures every table's box (the element around table.board), its
# cells and the page, and the look of a FAIL cell and a best (bold) cell; writes them into the DOM as JSON, which
# --dump-dom brings back.
MEASURE = """<script>
window.addEventListener('load', function () {
  function look(e) { if (!e) return null; var s = getComputedStyle(e); return [s.color, s.backgroundColor]; }
  var tables = [];
  document.querySelectorAll('table.board').forEach(function (table) {
    var box = table.parentElement, h = box.previousElementSibling;
    while (h && !/^H[1-6]$/.test(h.tagName)) h = h.previousElementSibling;
    var cut = Array.prototype.filter.call(table.querySelectorAll('th, td'), function (c) {
      return c.scrollWidth > c.clientWidth;
    });
    tables.push({heading: h ? h.textContent : '', scroll: box.scrollWidth, client: box.clientWidth,
                 width: Math.round(table.getBoundingClientRect().width), columns: table.rows[0].cells.length,
                 cls: table.className, cut: cut.length});
  });
  var out = document.createElement('pre');
  out.id = 'measured';
  out.textContent = JSON.stringify({tables: tables, page: [document.documentElement.scrollWidth,
    document.documentElement.clientWidth], fail: look(document.querySelector('td.fail strong')),
    best: look(document.querySelector('td:not(.fail) strong'))});
  document.body.appendChild(out);
});
</script>"""


def _measured(browser, page_html: str, path, width: int = 1400) -> dict:
    """The page opened in headless Chromium at ``width`` px (scroll bars shown, as on a desktop), measured."""
    head, _, tail = page_html.rpartition("</body>")
    path.write_text(head + MEASURE + "</body>" + tail, encoding="utf-8")
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={path.parent / 'profile'}", f"--window-size={width},1000",
                          "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=90)
    m = re.search(r'<pre id="measured">(.*?)</pre>', run.stdout, re.S)
    assert run.returncode == 0 and m, run.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


def _too_wide(measured: dict) -> list:
    """The tables wider than their box, or with a cell whose content is wider than the cell, as readable lines."""
    return [f"{t['heading'][:60]!r}: {t['scroll']} px in a {t['client']} px box, {t['columns']} columns, "
            f"{t['cut']} cell(s) overflowing" for t in measured["tables"]
            if t["scroll"] > t["client"] or t["cut"]]


def _images(markdown_text: str, directory: str) -> dict:
    names = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", markdown_text)
    return {n: open(os.path.join(directory, n), "rb").read() for n in names
            if os.path.exists(os.path.join(directory, n))}


def test_every_table_of_the_board_fits_a_1400_px_window(tmp_path):
    """The board as the current renderer makes it from the committed results (index.html), and the committed
    LEADERBOARD.md through the current page: at 1400 px no table is wider than its box, and no page scrolls
    sideways."""
    browser = _browser()
    results = os.path.join(BOARD_DIR, "results")
    if not os.path.isdir(results) or not any(n.endswith(".json") for n in os.listdir(results)):
        pytest.skip(f"no results in {results} to render the board from")
    out = tmp_path / "board"
    out.mkdir()
    os.symlink(results, out / "results")  # render reads results/ and writes only next to it
    t0 = time.monotonic()
    report = render(str(out))
    assert (out / "index.html").exists(), "\n".join(report)
    committed = open(os.path.join(BOARD_DIR, "LEADERBOARD.md"), encoding="utf-8").read()
    # (page, tables it must at least have): the committed board is complete; a render of results/ while a
    # pre-registered block is still running shows its tuning grids and what is in, so fewer tables
    pages = {"index.html rendered from results/": ((out / "index.html").read_text(encoding="utf-8"), 3),
             "the committed LEADERBOARD.md": (html_page(committed, "prefopt leaderboard", _images(committed, BOARD_DIR)), 5)}
    for name, (page_html, least) in pages.items():
        m = _measured(browser, page_html, tmp_path / "measured.html")
        for t in m["tables"]:
            print(f"{name}: {t['width']:5d} px of {t['client']} ({t['columns']:2d} columns) {t['heading'][:70]}")
        assert len(m["tables"]) >= least, name
        assert not _too_wide(m), f"{name}:\n" + "\n".join(_too_wide(m))
        assert m["page"][0] <= m["page"][1], f"{name}: the page scrolls sideways ({m['page']})"
    print(f"render and two pages measured in {time.monotonic() - t0:.1f} s")


def test_the_page_fits_what_the_board_may_grow_to_and_shows_fail_in_red(tmp_path):
    """Beyond today's board: a 30-method matrix turns its titles upright, a 23-column table of intervals and a
    table with a very long cell wrap; a FAIL cell is red, not the green of a best cell."""
    browser = _browser()
    methods = [f"method_{i}_{'x' * (i % 7)}" for i in range(30)]
    matrix = ["| P(row beats column) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    matrix += ["| " + a + " | " + " | ".join("·" if a == b else "1.00*" for b in methods) + " |" for a in methods]
    long_cell = "; ".join(f"{m}: gold peak 1.385 at step 40 (KL 6.30), last 1.365; proxy 0.800 → 0.805"
                          for m in methods)
    sanity = ["| check | expected | result | numbers |", "|---|---|---|---|",
              f"| over-optimization | proxy keeps rising while gold peaks and falls | PASS | {long_cell} |",
              "| DPO's chosen log-probs fall | logps/chosen: last &lt; first | **FAIL** | fell on 1/3 seeds |"]
    markdown_text = "\n".join([BOARD_MD, "## matrix", ""] + matrix + ["", "## sanity", ""] + sanity + [""])
    m = _measured(browser, html_page(markdown_text, "prefopt leaderboard", {}), tmp_path / "grown.html")
    assert [t["heading"] for t in m["tables"]] == ["reviews", "matrix", "sanity"]
    assert not _too_wide(m), "\n".join(_too_wide(m))
    assert m["page"][0] <= m["page"][1]
    assert "matrix upright" in m["tables"][1]["cls"] and "wide" in m["tables"][0]["cls"]
    fail, best = m["fail"], m["best"]
    assert fail and best and fail[0] != best[0] and fail[1] != best[1], (fail, best)
    red, green, blue = (int(v) for v in re.findall(r"\d+", fail[0])[:3])
    assert red > 2 * max(green, blue), fail  # the text of a FAIL cell is red
