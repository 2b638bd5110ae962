"""Board sections register by name; the planner and the renderer call every registered section's hooks,
in ``order``, and name none of them.

A section is a subclass of :class:`Section`, registered with ``@register("name")``; it overrides only
the hooks it uses (the defaults do nothing):

- ``jobs(suite, plan)``: add the section's jobs to the plan being built
  (:class:`prefopt.leaderboard.jobs.Planner`: ``plan.add(job)``, ``plan.add_spec(job)``, ``plan.notes``);
- ``headlines(board)``: lines for the board's Headlines;
- ``markdown(board)``: the section's Markdown lines, placed after the sections of lower ``order``;
- ``plots(board)``: ``{file name: PNG bytes}`` written next to LEADERBOARD.md and inlined in index.html;
- ``shown_suites(board)``: suites whose results the section shows besides the board's own (the Notes
  list the results of any other suite as not shown).

``board`` is a :class:`prefopt.leaderboard.board.Board`, built once from the results; a result a
section computes for more than one hook is kept with ``board.memo(key, compute)``. The built-in
sections live in :mod:`prefopt.leaderboard.sections`; a section defined anywhere else takes part once
its module is imported.
"""

from __future__ import annotations

from prefopt.core.registry import Registry


class Section:
    name: str = ""
    order: int = 100  # place on the board (and in the plan): the main table is 10, the built-in others 20–50

    def jobs(self, suite, plan) -> None:
        pass

    def headlines(self, board) -> list:
        return []

    def markdown(self, board) -> list:
        return []

    def plots(self, board) -> dict:
        return {}

    def shown_suites(self, board) -> list:
        return []


SECTIONS = Registry("board section", base=Section, instances=True,
                    unknown="unknown board section '{name}'; available: {names}")
register = SECTIONS.register  # ``@register("transfer")`` registers an instance of the class
available = SECTIONS.available
get_section = SECTIONS.lookup


def ordered() -> list[Section]:
    """Every registered section, by ``order`` (then by name)."""
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.name))
