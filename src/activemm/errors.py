"""One family of exceptions for user mistakes; the CLI turns each into a one-line message."""

from __future__ import annotations


class ActiveMmError(Exception):
    """Base class: anything a user can get wrong (bad scenario, unknown preset, bad trace)."""

    exit_code = 2


class ConfigError(ActiveMmError):
    """An unknown preset or a kernel configuration the kernel would refuse."""


class OperationError(ActiveMmError):
    """An operation the kernel would never perform in this state (scheduling a dead task...)."""


class ScenarioError(ActiveMmError):
    """A scenario file that cannot be read or names something that does not exist."""

    def __init__(self, message: str, *, path: str | None = None, step: int | None = None) -> None:
        where = path or "<scenario>"
        if step is not None:
            where += f": step {step}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.step = step


class ExpectationFailed(ActiveMmError):
    """A scenario's `expect` table disagrees with the model's state."""

    exit_code = 1
