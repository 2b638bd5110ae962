"""User errors: bad input that stops a run before training with one clear line.

Anything raised as ``UserError`` is printed by the CLI as a single line (no traceback) and the
process exits with status 2. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's config or data. The message names the file/row/field/key and what
    would be accepted, and fits on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def where(path=None, row=None, field=None) -> str:
    """Format a location prefix like ``data.jsonl, row 3, field 'chosen'``."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)
