"""One exception type for user mistakes (the CLI prints it on one line and exits with code 2), and the warnings
the library gives about results that are legal but of little use."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: a file, an option or a value.

    ``where`` names the file or option, ``fix`` says how to put it right. Bugs raise ordinary
    exceptions and keep their traceback.
    """

    def __init__(self, where: str, what: str, fix: str = ""):
        self.where, self.what, self.fix = str(where), what, fix
        super().__init__(self.one_line())

    def __reduce__(self):
        # Exception pickles as cls(*self.args) = cls(message), which does not fit __init__: without this a
        # UserError raised in a Ray task or a worker process could not travel back to the CLI
        return type(self), (self.where, self.what, self.fix)

    def one_line(self) -> str:
        text = f"{self.where}: {self.what}"
        return f"{text} ({self.fix})" if self.fix else text


class WeakPredictorWarning(UserWarning):
    """A fitted predictor barely ranks under cross-validation; the message says what to raise."""


def refuse_changed_settings(path, made_with: str, theirs: dict, ours: dict, fix) -> None:
    """A resumable job's folder holds work made with the settings ``theirs``; asked for ``ours``. Reusing it
    would mix the two silently: raise a UserError naming the settings that differ, both ways. ``fix``: the
    hint, or a function of the differing keys that writes it."""
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if keys:
        raise UserError(path, f"{made_with} {', '.join(f'{k}={theirs.get(k)}' for k in keys)}, not "
                        f"{', '.join(f'{k}={ours.get(k)}' for k in keys)}", fix(keys) if callable(fix) else fix)


class WeakTableWarning(UserWarning):
    """A latency table's validation falls short of the project's goals on its held-out networks; the message says
    by how much and what to try."""
