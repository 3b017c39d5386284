"""The user-facing error hierarchy.

Library code raises these; only ``quantforge.cli.main`` catches them and renders one
line on stderr. ``exit_code`` follows the project's convention: 2 for bad input or
usage, 1 for runtime failures (a tool crashed, a disk filled), 130 for Ctrl-C.
"""

from __future__ import annotations


class QuantforgeError(Exception):
    """Base of every error a user is meant to read.

    ``where`` names the spot (``recipe.toml:12:5 quant[0].rules[3].match``, a file
    path, a tensor name); ``hint`` says what would fix it or which command to run next.
    """

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def one_line(self) -> str:
        """The single line the CLI prints: ``where: message (hint)``, newlines folded."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split("\n")).strip()

    def __str__(self) -> str:
        return self.one_line()


class InputError(QuantforgeError):
    """Something the user gave us is wrong: a file, a field, a flag. Exit code 2."""

    exit_code = 2


class UsageError(InputError):
    """A command-line usage mistake (conflicting flags, a missing argument)."""


class RecipeError(InputError):
    """A recipe is malformed, refers to unknown types, or its rules cannot compile."""


class InventoryError(InputError):
    """A tensor inventory cannot be read: not a GGUF, truncated, absurd header, unknown id."""


class TargetError(InputError):
    """A hardware target file is missing or holds impossible values."""


class ToolError(QuantforgeError):
    """An external binary is missing, unusable, or of the wrong engine."""


class BuildError(QuantforgeError):
    """Quantizing failed or the output does not match the plan."""


class EvalError(QuantforgeError):
    """A perplexity/KLD or speed run failed or its inputs do not belong together."""


class PublishError(QuantforgeError):
    """A model card or an upload cannot be produced."""


class ClusterError(QuantforgeError):
    """A cluster run cannot start or lost a task: no Ray, no connection, no node that fits, a node died."""


class FileSystemError(QuantforgeError):
    """The file system failed under a valid request: disk full, I/O error, quota. Exit code 1."""


class LockedError(QuantforgeError):
    """Another quantforge run holds the folder this one would write. Exit code 1."""


class Interrupted(QuantforgeError):
    """The user pressed Ctrl-C; children were stopped and partial files removed."""

    exit_code = 130
