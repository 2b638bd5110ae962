"""User errors: bad input that stops a run before training with one clear line.

Anything raised as ``UserError`` is printed by the CLI as a single line (no traceback) and the
process exits with status 2. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's config or data. The message names the file/row/field/key and what
    would be accepted, and fits on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RunStopped(UserError):
    """The run cannot go on for a reason outside it (a full disk): one line that says what is intact
    and how to continue, no traceback. Nothing complete is lost."""


class Interrupted(BaseException):
    """SIGINT / SIGTERM. A BaseException like KeyboardInterrupt, so that ``except Exception`` blocks
    (a sweep that records failures and goes on) let it through. ``checkpoint`` is the one written
    on the way out, if any; ``line`` is what the command prints (what was saved, how to resume),
    set by the run that caught it, else a line naming the signal."""

    def __init__(self, signum: int, step=None, checkpoint=None):
        super().__init__(signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.line = f"interrupted by {self.signame}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @property
    def signame(self) -> str:
        import signal

        return signal.Signals(self.signum).name


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


def first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it): a library's
    exception inside one line of ours."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit] if text else ''}"


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight: the step is stopped before it reaches the weights."""
