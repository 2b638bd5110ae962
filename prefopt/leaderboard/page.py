"""The board's web page (index.html), rendered from the board's Markdown (LEADERBOARD.md).

The page is derived from the Markdown rather than built separately so that there is one source: the
page never shows Markdown syntax (every ``**bold**``, `` `code` ``, link, heading and table becomes
HTML) and can never disagree with LEADERBOARD.md. It is one self-contained file: the images the
Markdown references are inlined as data: URIs and a few lines of inline script sort the tables; it
makes no network request. HTML inside the Markdown is shown as text, never interpreted (a method named
``<b>x</b>`` is a name, not markup).

Every table fits the width of the page, nothing hidden and nothing to scroll sideways: cells wrap at spaces and
after "_" and "/" inside words (a <wbr>, which copy and paste do not see), columns share the width by their content
(``table-layout: auto``), and a table with many columns is set smaller (class "wide"); a matrix (many columns of
short cells, e.g. method against method) turns its column titles upright, where they would not fit across, so
that a column is as wide as its numbers. The header row stays in view while the page scrolls. A column title sorts
its table by the number each cell starts with (text where a cell has none). A cell whose text starts with FAIL
is red (class "fail"), unlike a best cell's green bold.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

WIDE_COLUMNS = 10  # from this many columns a table is set in the smaller font
MATRIX_COLUMNS = 12  # from this many columns, with every cell but the row's name short, titles may turn upright
MATRIX_CELL_CHARS = 8  # "short": at most this many characters (e.g. "1.00*", "0.04", "·")

# Where a cell's long token may break besides spaces: after "_" inside a word (rejection_sampling; not π_SFT), after
# "/" between words (logps/chosen; not 1/3, s/run or a literal "</b>").
_BREAK_AFTER = re.compile(r"(?<=\w\w_)(?=\w)|(?<=[^\W\d_]{2}/)(?=[^\W\d_])")

# A cell's sort key: the number it starts with (after an optional comparison sign), e.g. "1.015 [0.76, 1.23]",
# "4,096", "> 40", "−0.2"; a cell that does not start with a number sorts by its text.
_NUMBER = re.compile(r"^\s*[<>≤≥~≈]?\s*([-+−]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;line-height:1.45;color:#1b1b1b;
  max-width:1500px;margin:0 auto;padding:1em 2em}
h1,h2,h3,h4{line-height:1.2;margin-top:1.6em}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:90%;background:#f2f2f2;padding:0 .25em;
  border-radius:3px}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.7em 1em}
pre code{background:none;padding:0}
img{max-width:100%;height:auto}
.tbl{max-width:100%;margin:0 0 1.5em}
table.board{border-collapse:separate;border-spacing:0;font-size:12px;font-variant-numeric:tabular-nums;
  table-layout:auto;max-width:100%;border-top:1px solid #d6d6d6;border-left:1px solid #d6d6d6}
table.board th,table.board td{border-right:1px solid #e2e2e2;border-bottom:1px solid #e2e2e2;padding:3px 6px;
  white-space:normal;overflow-wrap:break-word;vertical-align:top;background:#fff}
table.board th{position:sticky;top:0;z-index:2;background:#f0f0f0;cursor:pointer;text-align:left;
  vertical-align:bottom}
table.board th[data-dir=asc]::after{content:" \\25B2"}
table.board th[data-dir=desc]::after{content:" \\25BC"}
table.board.wide{font-size:11px}
table.board.wide th,table.board.wide td{padding:2px 4px}
table.board.matrix td:not(:first-child){white-space:nowrap}
table.board.matrix.upright th:not(:first-child){text-align:center}
table.board.matrix.upright th:not(:first-child) span{writing-mode:vertical-rl;transform:rotate(180deg);
  white-space:nowrap}
table.board td strong{background:#e3f2e5}
table.board td.fail,table.board td.fail strong{background:#fbe0e0;color:#9b1111}
table.board tbody tr:hover td{background:#fff8dc}
table.board tbody tr:hover td.fail{background:#f6caca}
"""

# Sorting by a column title's click; a matrix's titles upright where they do not fit across; on load, how many
# images decoded (a headless check reads it from the DOM).
SCRIPT = """
document.querySelectorAll('table.board').forEach(function (table) {
  var body = table.tBodies[0], head = table.tHead;
  if (!head) return;
  head.querySelectorAll('th').forEach(function (th) {
    th.addEventListener('click', function () {
      if (!body) return;
      var col = th.cellIndex, rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== 'asc';
      head.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var ca = a.cells[col], cb = b.cells[col];
        var x = ca ? ca.dataset.v || '' : '', y = cb ? cb.dataset.v || '' : '';
        var nx = parseFloat(x), ny = parseFloat(y);
        if (isNaN(nx) && isNaN(ny)) return x.localeCompare(y) * (asc ? 1 : -1);
        if (isNaN(nx)) return 1;
        if (isNaN(ny)) return -1;
        return (nx - ny) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
// a matrix whose titles, wrapped, still make it wider than the page turns them upright (again on each resize)
function fitMatrices() {
  document.querySelectorAll('table.board.matrix').forEach(function (table) {
    table.classList.remove('upright');
    var box = table.parentElement;
    if (box.scrollWidth > box.clientWidth) table.classList.add('upright');
  });
}
fitMatrices();
window.addEventListener('resize', fitMatrices);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""


def slug(text: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped except '-' and '_', each space a '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _text(inline) -> str:
    """The visible text of an inline token (markup dropped, code spans kept)."""
    out = []
    for t in inline.children or ():
        if t.type in ("text", "code_inline"):
            out.append(t.content)
        elif t.type in ("softbreak", "hardbreak"):
            out.append(" ")
        elif t.type == "image":
            out.append(_text(t))
    return "".join(out)


def sort_key(cell_text: str) -> str:
    """The value a column sort compares: the number the cell starts with, else its text."""
    m = _NUMBER.match(cell_text)
    if m:
        return m.group(1).replace("−", "-").replace(",", "")
    return cell_text.strip()


def _data_uri(name: str, data: bytes) -> str:
    mime = mimetypes.guess_type(name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

    def table_open(self, tokens, idx, options, env):
        return '<div class="tbl">\n' + self.renderToken(tokens, idx, options, env)

    def table_close(self, tokens, idx, options, env):
        return self.renderToken(tokens, idx, options, env) + "</div>\n"

    def th_open(self, tokens, idx, options, env):  # an upright title is a <span> inside the cell
        return self.renderToken(tokens, idx, options, env) + ("<span>" if tokens[idx].meta.get("span") else "")

    def th_close(self, tokens, idx, options, env):
        return ("</span>" if tokens[idx].meta.get("span") else "") + self.renderToken(tokens, idx, options, env)

    def text(self, tokens, idx, options, env):
        out = escapeHtml(tokens[idx].content)
        return _BREAK_AFTER.sub("<wbr>", out) if tokens[idx].meta.get("cell") else out

    for name, rule in [("table_open", table_open), ("table_close", table_close), ("th_open", th_open),
                       ("th_close", th_close), ("text", text)]:
        md.add_render_rule(name, rule)
    return md


def _table_class(tokens, start: int) -> str:
    """The table's classes: board; wide for many columns; matrix for many columns whose cells after the first (the
    row's name) are all short. ``start`` is the index of the table's table_open token."""
    columns, longest, column = 0, 0, 0
    for i in range(start, len(tokens)):
        tok = tokens[i]
        if tok.type == "table_close":
            break
        if tok.type == "th_open":
            columns += 1
        elif tok.type == "tr_open":
            column = 0
        elif tok.type == "td_open":
            if column > 0 and tokens[i + 1].type == "inline":
                longest = max(longest, len(_text(tokens[i + 1]).strip()))
            column += 1
    names = "board"
    if columns >= WIDE_COLUMNS:
        names += " wide"
    if columns >= MATRIX_COLUMNS and longest <= MATRIX_CELL_CHARS:
        names += " matrix"
    return names


def html_body(markdown_text: str, images: dict, source_name: str = "LEADERBOARD.md") -> str:
    """The Markdown as HTML: tables of class "board" with sort keys, headings with GitHub's anchors, the images
    named in ``images`` inlined, and links into ``source_name`` turned into links within the page."""
    md = _renderer()
    tokens = md.parse(markdown_text)
    used, table = {}, ""
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and i + 1 < len(tokens):
            base = slug(_text(tokens[i + 1]))
            n = used.get(base, 0)
            used[base] = n + 1
            tok.attrSet("id", base if n == 0 else f"{base}-{n}")
        elif tok.type == "table_open":
            table = _table_class(tokens, i)
            tok.attrSet("class", table)
        elif tok.type in ("td_open", "th_open") and i + 1 < len(tokens):
            for child in tokens[i + 1].children or ():
                child.meta["cell"] = True  # its text may break after "_" and "/"
            if tok.type == "td_open":
                text = _text(tokens[i + 1])
                tok.attrSet("data-v", sort_key(text))
                if text.strip().startswith("FAIL"):
                    tok.attrSet("class", "fail")
            else:
                tok.attrSet("title", "click to sort")
                tok.meta["span"] = "matrix" in table.split()
        elif tok.type == "th_close":
            tok.meta["span"] = "matrix" in table.split()
        elif tok.type == "inline":
            for child in tok.children or ():
                if child.type == "image" and child.attrGet("src") in images:
                    child.attrSet("src", _data_uri(child.attrGet("src"), images[child.attrGet("src")]))
                elif child.type == "link_open":
                    href = child.attrGet("href") or ""
                    if href.startswith(source_name + "#"):
                        child.attrSet("href", href[len(source_name):])
    return md.renderer.render(tokens, md.options, {})


def html_page(markdown_text: str, title: str, images: dict, source_name: str = "LEADERBOARD.md") -> str:
    """The whole page: ``html_body`` of the Markdown with its style and script, self-contained.

    ``images`` maps a name the Markdown references (``![alt](frontier.png)``) to the file's bytes."""
    return "\n".join([
        "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head><body>",
        html_body(markdown_text, images, source_name),
        f"<script>{SCRIPT}</script>", "</body></html>", ""])
