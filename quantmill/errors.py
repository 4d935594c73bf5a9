"""Every error quantmill raises on purpose.

    QuantmillError
    ├── RecipeError              a recipe file is unreadable or invalid (CLI exit 2)
    ├── UnknownMethodError       a method name that no registry entry provides
    ├── InvalidMethodError       a registry entry that does not give a method spec
    ├── MissingDependencyError   an optional backend is not installed (names the extra)
    ├── QuantizationError        a method failed on a variant
    ├── EvaluationError          an evaluation could not produce numbers
    │   └── TokenizerDriftError  the artifact's tokenizer splits the evaluation texts differently
    ├── NotServableError         a variant's uploaded files do not load and generate in a fresh process
    ├── GateFailedError          a required gate failed (CLI exit 3)
    ├── RunStoreError            the run store cannot be read or written
    ├── PublishError             a push to a zoo or hub failed (CLI exit 4)
    ├── RegressionError          a run got worse than the recipe's previous run (CLI exit 5)
    ├── LlamaCppError            llama.cpp's tree or tools are missing or failed
    └── LinkRefusedError         a lock or temporary file path is a symbolic link

All are defined here except ``LlamaCppError``, which lives beside the tools in
``quantmill.llamacpp``, and ``LinkRefusedError``, beside ``open_no_follow`` in
``quantmill.trust.files``. Messages say what is wrong and what to do next; the CLI
prints them without a traceback unless ``QUANTMILL_DEBUG=1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class QuantmillError(Exception):
    """Root of quantmill's errors. ``exit_code`` is what the CLI returns."""

    exit_code = 1


@dataclass(frozen=True)
class RecipeProblem:
    """One thing wrong with a recipe, located as precisely as the input allows.

    Attributes:
        file: the recipe file (or ``<string>``).
        line: 1-based line of the offending node, when known.
        column: 1-based column, when known.
        path: dotted field path such as ``variants.methods[1].bits``.
        message: what is wrong.
        hint: what would be valid, or how to fix it.
    """

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None
    hint: str | None = None

    def location(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def format(self) -> str:
        text = f"{self.location()}: {self.path or '<recipe>'}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class RecipeError(QuantmillError):
    """A recipe could not be loaded; ``problems`` lists every issue found."""

    problems: list[RecipeProblem] = field(default_factory=list)
    exit_code = 2

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in recipe"
        return head + ":\n" + "\n".join("  " + p.format() for p in self.problems)


class UnknownMethodError(QuantmillError):
    """A method name that is not registered."""


class InvalidMethodError(QuantmillError):
    """A registered method (a plug-in's entry point) that cannot be loaded or is not a ``MethodSpec``."""


class MissingDependencyError(QuantmillError):
    """An optional dependency is missing; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'quantmill[{extra}]'"
        )


class QuantizationError(QuantmillError):
    """A quantization method failed or refused a variant."""


class EvaluationError(QuantmillError):
    """An evaluation failed; a variant with this error never passes a gate."""


class TokenizerDriftError(EvaluationError):
    """The variant's own tokenizer tokenizes evaluation texts differently from the base model's."""


class NotServableError(QuantmillError):
    """A variant's upload failed the servable check (``not servable: <what failed>``); it is never published."""


class GateFailedError(QuantmillError):
    """A required gate failed for at least one variant."""

    exit_code = 3


class RunStoreError(QuantmillError):
    """The run store could not be read or written."""


class PublishError(QuantmillError):
    """Publishing a variant failed; a run whose passing variant was not published exits 4."""

    exit_code = 4


class RegressionError(QuantmillError):
    """A run regressed against the recipe's previous completed run, and nothing worse happened (exit 5)."""

    exit_code = 5
