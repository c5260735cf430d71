"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (unknown name, bad size, impossible device...).

    `field` names the input that was wrong when one setting was, so a caller that knows where the setting
    came from (an experiment file's line) can point there: ("option", KEY) for a method option,
    ("override", KEY) for a model-config override."""

    def __init__(self, message: str = "", *, field: tuple[str, str] | None = None):
        super().__init__(message)
        self.field = field


class PreflightError(UserError):
    """Problems a sweep found before any run: `problems` is a list of (message, field or None)."""

    def __init__(self, problems: list[tuple[str, tuple[str, str] | None]]):
        super().__init__("; ".join(message for message, _ in problems))
        self.problems = problems


class FaultError(RuntimeError):
    """Not the input but the machine stopped a command (a full disk, a database locked for too long): the CLI
    prints one line and exits 1; what was stored before stays."""


def one_of(names) -> str:
    """Names as a help text offers them: 'a, b or c' ('a' alone)."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
