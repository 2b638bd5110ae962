"""Render the board: leaderboard/LEADERBOARD.md, its plots (frontier.png, one per tier, and the sections')
and index.html from results/*.json.

Everything is derived from the result files (nothing is re-run), so the outputs always agree: the
:class:`~prefopt.leaderboard.board.Board` is built once, each registered section
(:mod:`prefopt.leaderboard.section`) adds its headlines, Markdown and plots, and the page is rendered
from the Markdown (:mod:`prefopt.leaderboard.page`). index.html is one self-contained file: the plots
inlined as base64, a few lines of inline script to sort the tables, no network access; every string
that comes from a result is escaped.
"""

from __future__ import annotations

import html
import os
from collections import Counter

import prefopt.leaderboard.sections  # noqa: F401  (registers the built-in sections)
from prefopt.core import files
from prefopt.core.errors import UserError
from prefopt.leaderboard import board as boards
from prefopt.leaderboard import manifest, page, section
from prefopt.leaderboard.store import load_results
from prefopt.leaderboard.tables import EXTRAPOLATION, header_lines, md_table, table

PROTOCOL = """\
Per task and seed: π_SFT (the testbed's SFT policy; on the real-checkpoint tier, the checkpoint itself) →
K completions per training prompt → pairs labelled by the gold reward (Bradley–Terry draws on the toy
tasks, exact match on smol_arith) → a proxy reward model (the `reward` objective) on those pairs where
the suite lists the task in `proxy_tasks` → every method on the same pairs / prompts: offline methods on
the pairs; online methods against the proxy reward model and, where the task has one, the verifiable
reward. Three disjoint prompt sets per task: training, validation, test. **Tuning**: each method runs
its grid (the suite's learning rates × its own declared main coefficient, where the suite tunes
coefficients) on tuning seeds that are never report seeds. A grid point whose validation curve
**diverged** on any tuning seed (gold below π_SFT's by more than the suite's margin, or, on an accuracy
task, below the suite's fraction of π_SFT's accuracy, or KL past its bound, at any evaluation) is not
eligible; among the rest, the pick maximises the **worst tuning seed's** final validation gold. Scores
equal within 1e-9 are a tie, and a tie goes to the more conservative point: the smaller learning rate,
then the larger β / KL coefficient (other coefficients: the smaller). A second pick does the same among
the points within the suite's validation-KL budget on every tuning seed. Where the suite extends grid
edges, a pick on the top or bottom learning rate extends the grid one step that way, once.
**Reported numbers are test-prompt numbers of the picks' report runs only**, on a block of report seeds
written into the suite and committed before their runs (the header names the commit and checks it).
Every run evaluates on the validation prompts every k steps (where the suite sets k): the curves and
Gao et al.'s fits come from those, and a report run counts as diverged by the same rule; a report seed
also counts as *below π_SFT* when its test gold is below π_SFT's on that seed. **Intervals**: 95%
Student-t intervals of the mean over report seeds (scipy.stats), each labelled with its n. **Comparisons**:
seeds share π_SFT, pairs and reward model across methods, so every pair of rows is compared by a paired
t-test over seeds, and the p-values of all pairs of a task are adjusted together by Benjamini–Hochberg
(scipy.stats.false_discovery_control; under the global null, the chance of any separated pair is ≤ 5%).
Rows are in order of mean test gold; "vs best" says whether a row is the best by mean, statistically
indistinguishable from it (adjusted p ≥ 0.05), or separated below it; a small loss on every seed can be
separated where a larger, noisier one is not, so "≈ best" states the evidence, not an order (a row named
as indistinguishable because a report seed diverged says so). Means equal within 1e-9 are all "best",
and a row is ≈ best when any of them leaves it unseparated. **Bold**: the best mean of an
outcome column (test gold, win rate) among methods; diagnostics and the oracle carry no marker."""

REPRO = """\
Reproduces exactly: the same code version on the same CPU capability (and the same torch threads per
job): every number is a deterministic function of config, code and machine. Reproduces only
statistically: another CPU kind (AVX2 vs AVX-512 round differently and RL amplifies it), which is why
results carry their CPU capability and the board never mixes them in one row. π_SFT is cached per CPU
kind, so a rerun on another CPU starts from scratch; the board compares it (the Cross-CPU section) only
once such a rerun includes the online methods, and otherwise makes no cross-CPU claim."""


def suite_lines(spec) -> list:
    """The suite's settings as shipped in conf/leaderboard/SUITE.yaml (empty for a suite known only from its results)."""
    if spec is None:
        return []
    c = spec
    out = [f"report seeds {c.seeds}, tuning seeds {c.tuning_seeds}, tasks {c.tasks}; seed s sets {', '.join(c.seed_keys)}",
           "learning-rate grid: " + "; ".join(f"{t}: {v}" for t, v in c.lr_grid.items())
           + f"; second pick at validation KL ≤ {c.pick_kl_budget}",
           f"every run: {' '.join(c.common)}",
           f"reward model ({c.reward_model}) on {c.proxy_tasks}: {' '.join(c.stage1)}",
           f"offline: {' '.join(c.offline)}", f"online: {' '.join(c.online)}"]
    out += [f"every run on {t}: {' '.join(v)}" for t, v in c.common_task.items()]
    out += [f"online on {t}: {' '.join(v)}" for t, v in c.online_task.items()]
    out += [f"{k}: {' '.join(v)}" for k, v in c.algo.items()]
    if c.best_of_n:
        out.append(f"best-of-n: n in {c.best_of_n.ns} from {c.best_of_n.samples} samples per prompt")
    if c.ablation:
        a = c.ablation
        out.append(f"pairs ablation: {a.method} on {a.task} against reward models on {a.pair_prompts} pair "
                   f"prompts, seeds {a.seeds}")
    if c.exclude:
        out.append(f"not run: {', '.join(c.exclude)}")
    return out


def notes(board, sections: list, built_from: list = ()) -> list:
    loaded, suite = board.loaded, board.suite
    mine = [b.suite for b in board.boards()]
    shown = set(mine) | {s for sec in sections for s in sec.shown_suites(board)}
    out = []
    other = Counter(r["leaderboard"].get("suite") for r in loaded.ok if r["leaderboard"].get("suite") not in shown)
    for s, n in sorted(other.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} result(s) of suite `{s}` not shown (`prefopt-leaderboard render suite={s}`)")
    for r in loaded.failed:
        lb = r["leaderboard"]
        if lb.get("suite") in mine:
            out.append(f"failed: {lb.get('job')} ({r.get('result_id') or r.get('config_hash')}): {str(r.get('error', ''))[:300]}")
    for name, why in loaded.problems:
        out.append(f"skipped file {name}: {why}")
    out += list(built_from)
    for b in board.boards():
        for task in b.task_order():
            out += [f"{task} (suite `{b.suite}`): {n}" for n in b.agg["tasks"][task].get("seed_notes", [])]
        if b.other_blocks:
            out.append(f"{b.other_blocks} result(s) of suite `{b.suite}` on seeds outside its current block (earlier "
                       "boards' report seeds) not shown: a rule revised after seeing them is reported on new seeds.")
    out += list(board.main.spec.board_notes if board.main.spec else [])
    out.append("Selection reads validation numbers only (the `eval_periodic` block of the tuning runs); the table's test "
               "numbers come from the report seeds' runs, which chose nothing. `val. gold @ KL≤B` reads the report runs' "
               "validation curves (the best step within the budget), so it is a curve read-off, not a test number, and "
               "sits beside π_SFT's validation gold.")
    out.append("Peak KL / peak gain: Gao et al.'s RL form d(α − β log d), d = √KL, fitted by least squares to the mean "
               "validation curve (gain over π_SFT); — when the fit has no peak, and \"> K\" when its peak lies more than "
               f"{EXTRAPOLATION:g}× beyond the curve's largest KL K (gold still rising at the end of the budget: the peak "
               "would be an extrapolation, not a reading).")
    out.append("Cost: labels = preference labels the method drew on (its pairs, or its reward model's training pairs; 0 "
               "for a verifiable reward); samples = completions generated during training; policy tokens = tokens the "
               "policy was trained on; peak MB = RSS high-water mark of the job (CPU). Wall time and memory depend on "
               "the machine and on how many jobs ran at once.")
    out.append("Proxy−gold gap = label_temperature·(proxy − proxy_ref) − (gold − gold_ref), in gold units: positive "
               "when the reward model claims more than the real gain (over-optimization).")
    return out


def markdown(board, sections: list, headlines: list, built_from: list = ()) -> str:
    """LEADERBOARD.md: the headlines, the board's version and protocol, each section in order, then the
    reproducibility note, the suites' settings, the notes (``built_from``: the manifest's) and the library versions."""
    main = board.main
    lines = ["# prefopt leaderboard", "",
             "Generated by `prefopt-leaderboard render` from `leaderboard/results/*.json`; do not edit by hand.", "",
             "## Headlines", ""] + [f"- {x}" for x in headlines] + [""]
    lines += header_lines(main.agg, main.shown, main.protocol) + ["", "![gold reward against √KL along training](frontier.png)", "",
                                                   "## Protocol", "", PROTOCOL, ""]
    for sec in sections:
        lines += sec.markdown(board)
    lines += ["## Reproducibility", "", REPRO, ""]
    for b in board.boards():
        lines += [f"## Suite `{b.suite}`", ""] + [f"- {html.escape(x, quote=False)}" for x in suite_lines(b.spec)] + [""]
    lines += ["## Notes", ""] + [f"- {html.escape(n, quote=False)}" for n in notes(board, sections, built_from)]
    for t in board.tiers:
        lines += [f"- {t.suite}: {html.escape(n, quote=False)}" for n in (t.spec.board_notes if t.spec else [])]
    lines += [""]
    lines += ["## Versions", ""] + [f"- {v}" for v in main.versions] + [""]
    return "\n".join(lines)


README_COLS = ("vs best", "method", "signal", "chosen (validation)", "test gold", "win vs π_SFT", "KL", "diverged", "seeds")


def readme_block(board, headlines: list) -> str:
    """The README's compact copy of the board: per task of every tier, the columns of README_COLS, and the
    headlines (transfer, cross-CPU, selection)."""
    code, cpu = board.main.agg["version"] or ("—", "—")
    lines = [f"Suite `{board.suite}`" + "".join(f" + `{t.suite}`" for t in board.tiers) + f", code version `{code}`, "
             f"CPU capability **{cpu}**; test-prompt numbers of each method's validation-chosen configuration, means over "
             "report seeds with 95% t-intervals; rows in order of mean test gold; vs best: the best mean, statistically "
             "indistinguishable from it (≈ best: paired t-tests, Benjamini–Hochberg-adjusted over every pair of the "
             "task, p ≥ 0.05) or separated below it; diverged: report seeds whose validation curve diverged. The whole "
             "board (grids, curves, fits, paired comparisons, checks, cost): "
             "[`leaderboard/LEADERBOARD.md`](leaderboard/LEADERBOARD.md).", ""]
    if board.main.protocol is not None:
        lines += [board.main.protocol["line"], ""]
    for b in board.boards():
        for task in b.task_order():
            header, rows = table(b.agg["tasks"][task], b.budgets)
            lines += [f"**{task}** (suite `{b.suite}`)", ""] + md_table(header, rows, README_COLS) + [""]
    lines += [f"- {x}" for x in headlines]
    return "\n".join(lines).rstrip() + "\n"


README_BEGIN, README_END = "<!-- leaderboard:begin", "<!-- leaderboard:end -->"


def write_readme_block(readme: str, block: str) -> bool:
    """Replace what lies between the README's leaderboard markers with ``block``; False if there are no markers."""
    if not os.path.exists(readme):
        return False
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        return False
    start = text.index("\n", i) + 1  # the begin marker's own line stays
    files.write_text(readme, text[:start] + block + text[j:])
    return True


def render(out_dir: str = "leaderboard", suite: str = None, kl_budgets=None) -> list:
    """Write LEADERBOARD.md, the plots and index.html into ``out_dir``; returns report lines."""
    loaded = load_results(os.path.join(out_dir, "results"))
    suite = boards.pick_suite(loaded, suite)
    report = [f"prefopt-leaderboard: {len(loaded.ok)} result(s), {len(loaded.failed)} failed run(s), "
              f"{len(loaded.problems)} unreadable file(s)"]
    report += [f"  skipped {n}: {why}" for n, why in loaded.problems]
    if suite is None:
        report.append("  nothing to render: no successful results")
        return report
    board = boards.build(loaded, suite, kl_budgets)
    report += [f"  not compared (short of a report seed; see the board's Notes): {b.suite} {task} {r.label}, {r.short}"
               for b in board.boards() for task in b.task_order() for r in b.agg["tasks"][task]["rows"] if r.short]
    sections = section.ordered()
    headlines = [h for sec in sections for h in sec.headlines(board)]
    images = {}
    for sec in sections:
        images.update(sec.plots(board))
    # The results it is built from, against those of the board it replaces: a deleted or rewritten result says so.
    now = manifest.build(loaded, suite, board.main.agg["version"])
    try:
        before = manifest.read(out_dir)
    except UserError as e:
        report.append(f"  {e}; replaced")
        before = None
    changed = manifest.change_lines(manifest.changes(before, now) if before else None)
    report += [f"  {line}" for line in changed]
    built_from = [f"Built from {len(now['results'])} result file(s), listed with the sha256 of each in "
                  f"{manifest.MANIFEST} (`prefopt-leaderboard verify` checks them against results/)."] + changed
    md = markdown(board, sections, headlines, built_from)
    for name, png in images.items():
        files.write_bytes(os.path.join(out_dir, name), png)
    files.write_text(os.path.join(out_dir, "LEADERBOARD.md"), md)
    files.write_text(os.path.join(out_dir, "index.html"), page.html_page(md, f"prefopt leaderboard — {suite}", images))
    manifest.write(out_dir, now)
    report.append(f"  suite {suite}: wrote {out_dir}/LEADERBOARD.md, {', '.join(images)}, index.html, {manifest.MANIFEST}")
    # The README next to the board's directory keeps a compact copy between its markers, so it follows the board.
    readme = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "README.md")
    if suite == "standard" and write_readme_block(readme, readme_block(board, headlines)):
        report.append(f"  updated the compact table in {readme}")
    return report
