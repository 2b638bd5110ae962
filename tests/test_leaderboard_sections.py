"""Board sections are one file each that registers itself: a section defined in a temporary module takes part
in the plan and in the rendered board (Markdown and page) without any edit to the planner or the renderer.
Also: the registry's errors, and the typed suite's one-line errors."""

import importlib.util
import sys

import pytest
import yaml
from test_leaderboard_render import fixture_results

from prefopt.core.errors import UserError
from prefopt.leaderboard import section
from prefopt.leaderboard.plan import plan
from prefopt.leaderboard.render import render
from prefopt.leaderboard.suite import load_suite

NEW_SECTION = '''
from prefopt.leaderboard.section import Section, register


@register("tmp_extra")
class Extra(Section):
    """Counts the board's shown results; plans nothing but a note."""

    def jobs(self, suite, plan):
        plan.notes.append(f"tmp_extra: saw suite {suite.name}")

    def headlines(self, board):
        return [f"**Extra**: {len(board.main.shown)} results shown"]

    def markdown(self, board):
        return ["## An extra section", "", f"Tasks on the board: {', '.join(board.main.task_order())}.", ""]
'''


@pytest.fixture
def extra_section(tmp_path, monkeypatch):
    """The module above, written to tmp_path and imported (which registers it); the registry is restored after."""
    path = tmp_path / "tmp_extra_section.py"
    path.write_text(NEW_SECTION)
    spec = importlib.util.spec_from_file_location("tmp_extra_section", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tmp_extra_section", module)
    spec.loader.exec_module(module)
    yield module
    section.SECTIONS.pop("tmp_extra", None)


def test_the_built_in_sections_are_registered():
    import prefopt.leaderboard.sections  # noqa: F401

    assert [s.name for s in section.ordered()][:5] == ["main", "transfer", "cross_cpu", "selection", "ensemble"]


def test_a_section_in_a_new_file_appears_on_the_rendered_board(tmp_path, extra_section):
    assert "tmp_extra" in section.available()
    fixture_results(str(tmp_path / "results"))
    render(str(tmp_path))
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## An extra section" in md and "Tasks on the board: reviews." in md
    # after the built-in sections (default order), before the board's closing parts
    assert md.index("## Toy tier") < md.index("## An extra section") < md.index("## Reproducibility")
    headlines = md.split("## Headlines")[1].split("\n## ")[0]
    assert "- **Extra**: " in headlines and "results shown" in headlines
    assert "An extra section" in (tmp_path / "index.html").read_text()


def test_a_section_in_a_new_file_plans_its_jobs(tmp_path, extra_section):
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nseeds: [0]\ntasks: [reviews]\nexclude: ['*']\nproxy_tasks: []\nbest_of_n: null\n"
                     "lr_grid: {default: [1.0e-3]}\n")
    jobs, notes = plan(load_suite(str(suite)), str(tmp_path / "work"))
    assert jobs == [] and "tmp_extra: saw suite tiny" in notes


def test_registry_errors_list_the_valid_names():
    import prefopt.leaderboard.sections  # noqa: F401

    with pytest.raises(UserError) as e:
        section.get_section("bogus")
    assert "unknown board section 'bogus'; available: " in str(e.value) and "main" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="registered twice"):
        section.register("main")(type("Again", (section.Section,), {}))
    with pytest.raises(TypeError, match="must subclass"):
        section.register("not_a_section")(object)


@pytest.mark.parametrize("change,needle", [
    ({"tuning_seed": [1]}, "unknown key 'tuning_seed'; accepted: ablation, algo, best_of_n,"),
    ({"seeds": 3}, "seeds: 3 is not a list"),
    ({"pick_kl_budget": "lots"}, "pick_kl_budget: 'lots' is not a number or null"),
    ({"best_of_n": {"ns": [1, 2], "sample": 4}}, "unknown key 'best_of_n.sample'; accepted: ns, samples"),
    ({"ablation": {"task": "reviews"}}, "missing key 'ablation.method'"),
    ({"tuning_seeds": [0]}, "seeds [0] are both tuning and report seeds"),
    ({"lr_grid": {"arith": [1.0e-4]}}, "lr_grid has no learning rates for task reviews"),
])
def test_a_bad_suite_is_one_line_naming_the_file_and_key(tmp_path, change, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "seeds": [0], "tasks": ["reviews"], "lr_grid": {"default": [1.0e-4]},
                                 **change}))
    with pytest.raises(UserError) as e:
        load_suite(str(p))
    msg = str(e.value)
    assert msg.startswith(f"suite {p}: ") and needle in msg and "\n" not in msg, msg


def test_the_shipped_suites_load():
    from prefopt.leaderboard.suite import suite_files

    for name in suite_files():
        assert load_suite(name).name == name
    with pytest.raises(UserError, match="unknown suite 'nope'; available: ensemble, quick, smol, standard"):
        load_suite("nope")


def test_transfer_shows_the_matched_budget_rows_and_the_main_boards(tmp_path):
    """The smol tier's own arith rows (matched budgets) and the standard board's arith rows, each against the tier's
    real-checkpoint task: two comparisons, each with its τ-b, permutation p and n."""
    from test_leaderboard_stats import rec

    from prefopt.leaderboard import store

    std, smol = load_suite("standard"), load_suite("smol")
    tr = std.transfer
    assert tr.suite == "smol" and tr.task in smol.tasks and tr.toy in smol.tasks  # the matched rows exist by design
    methods = ["dpo", "ipo", "orpo", "kto", "simpo"]
    d = str(tmp_path / "results")
    for seed in std.seeds:
        for i, m in enumerate(methods):  # standard arith: dpo best … simpo worst
            store.write_result(d, rec(m, seed, 0.6 - 0.05 * i + 0.001 * (seed % 10), 1.0, suite="standard", task=tr.toy,
                                      point={"lr": 1e-3}, code="c", cpu="AVX512"))
    for seed in smol.seeds:
        for i, m in enumerate(methods):  # smol's arith agrees with its real task; the standard board's is reversed
            for task, g in ((tr.toy, 0.3 + 0.05 * i), (tr.task, 0.2 + 0.04 * i)):
                store.write_result(d, rec(m, seed, g + 0.001 * (seed % 10), 1.0, suite="smol", task=task,
                                          point={"lr": 1e-3}, code="c", cpu="AVX512"))
    render(str(tmp_path))
    md = (tmp_path / "LEADERBOARD.md").read_text()
    matched = md.split("(matched budgets: both from suite `smol`)")[1].split("\n## ")[0]
    own = md.split(f"(`{tr.toy}` from suite `standard`, under its own budget)")[1].split("\n## ")[0]
    assert "τ-b = +1.00 over 5 methods, permutation p = 0.017" in matched and "agree beyond chance" in matched
    assert "τ-b = -1.00 over 5 methods, permutation p = 0.017" in own and "reversed beyond chance" in own
    headlines = md.split("## Headlines")[1].split("\n## ")[0]
    assert headlines.count("**Transfer**") == 2
