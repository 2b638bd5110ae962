"""The architecture holds: the layer contracts of pyproject.toml (``lint-imports``) are kept, and no
module takes part in an import cycle. Both read every import statement, function-local ones
included, from the source files (grimp), without importing prefopt."""

import os

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")


def _lint(config: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = lint_imports(config_filename=config, no_cache=True, no_logo=True)
    return code, capsys.readouterr().out


def test_layer_contracts_are_kept(capsys):
    code, report = _lint(PYPROJECT, capsys)
    assert code == 0, f"lint-imports: the layer contracts of pyproject.toml are broken\n{report}"


def test_the_layer_contract_catches_an_upward_import(tmp_path, capsys):
    # models imports core, so a contract that puts core above models must break: a sign that the
    # tool reads the real package (a contract naming no real module would pass, checking nothing).
    cfg = tmp_path / "inverted.toml"
    cfg.write_text('[tool.importlinter]\nroot_package = "prefopt"\n\n[[tool.importlinter.contracts]]\n'
                   'name = "inverted"\ntype = "layers"\nlayers = ["prefopt.core", "prefopt.models"]\n')
    code, report = _lint(str(cfg), capsys)
    assert code != 0 and "prefopt.models" in report and "prefopt.core" in report, report


def _cycles(graph) -> list:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _edges(graph, comp: list) -> list:
    lines = []
    for a in comp:
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            if b in comp:
                where = sorted({d["line_number"] for d in graph.get_import_details(importer=a, imported=b)})
                lines.append(f"  {a} -> {b} (line {', '.join(map(str, where))})")
    return lines


def test_no_import_cycle():
    graph = grimp.build_graph("prefopt", cache_dir=None)
    cycles = _cycles(graph)
    report = "\n".join(f"cycle {i + 1}:\n" + "\n".join(_edges(graph, c)) for i, c in enumerate(cycles))
    assert not cycles, f"{len(cycles)} import cycle(s), function-local imports included:\n{report}"


@pytest.mark.parametrize("edges,expected", [
    ({"a": ["b"], "b": ["a"], "c": ["a"]}, [["a", "b"]]),
    ({"a": ["b"], "b": ["c"], "c": []}, []),
    ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["d2"], "d2": ["d"]}, [["a", "b", "c"], ["d", "d2"]]),
])
def test_cycle_finder(edges, expected):
    class Graph:
        modules = set(edges)

        @staticmethod
        def find_modules_directly_imported_by(m):
            return set(edges[m])

    assert sorted(_cycles(Graph)) == expected
