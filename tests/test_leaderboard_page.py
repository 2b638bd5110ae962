"""The board's page (rendered from its Markdown) and frontier plot (clipped to where methods differ).

The last test opens the page in headless Chromium: what a reader sees is the DOM after the page's own script
ran, not the HTML string; it skips, with the reason, where no browser is installed.
"""

import html.parser
import re
import shutil
import subprocess
import time

import pytest
from test_leaderboard_stats import bon_rec, rec

from prefopt.leaderboard.aggregate import aggregate
from prefopt.leaderboard.page import html_page, slug, sort_key
from prefopt.leaderboard.plot import _task_curves, frontier_png, x_limit, y_limits

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
    "| — | <b>evil</b> | " + " | ".join("—" for _ in range(21)) + " |", "",
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
    assert '<table class="board"' in body and len(re.findall(r"<th[ >]", body)) == len(COLUMNS)
    assert '<div class="scroll">' in body  # wide tables scroll in their own box
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
    # the page's script ran: the leading columns up to the method's name are kept in view
    assert re.search(r'<td data-v="dpo" class="stick" style="left: \d', dom.stdout)
    shot = tmp_path / "page.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000
    print(f"headless Chromium: DOM and screenshot in {time.monotonic() - t0:.1f} s")
