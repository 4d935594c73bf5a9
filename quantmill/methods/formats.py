"""Output formats: what a variant folder is, for everything that happens after quantization.

A method's spec names its format object. The format loads the folder for
evaluation (an :class:`~quantmill.evaluation.backends.EvalModel`), says which
file or folder holds the weights, whether the folder carries its tokenizer, gives
the artifact's own tokenizer (checked against the base model's), adds any
format-specific measurement, and writes the model card's usage snippet,
library name, tags and file table. Nothing outside ``quantmill/methods/`` asks
which format a variant has; it asks the format.

This module imports no backend: loading happens inside the methods, so
``quantmill validate`` stays light.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantmill.evaluation.backends import EvalModel
    from quantmill.evaluation.evaluate import EvaluationSetup
    from quantmill.evaluation.results import EvaluationResult


class OutputFormat(ABC):
    """The contract of an output format; subclass it for a format of your own.

    Attributes:
        name: the format's name, recorded in the provenance (``output_format``) and shown in plans and cards.
        library_name: the card's ``library_name`` (the library the Hub offers to load it with).
        tags: the card's tags for this format (besides ``quantmill`` and the method's name).
        has_tokenizer: whether the folder carries the tokenizer; when it does and the method
            wrote none, the driver saves the baseline's tokenizer into it.
    """

    name: str
    library_name: str = "transformers"
    tags: tuple[str, ...] = ()
    has_tokenizer: bool = True

    def weights(self, folder: Path) -> Path:
        """The weight file, or the folder whose weight files are measured as the variant's size."""
        return folder

    @abstractmethod
    def load_for_evaluation(
        self, folder: Path, device: str, batch_size: int | str, *, trust_remote_code: bool = False
    ) -> EvalModel:
        """Load the variant in ``folder`` for evaluation on ``device``.

        ``trust_remote_code`` goes to every transformers ``from_pretrained`` the format makes
        (the recipe asked to run the model's own code and the operator allowed it).
        """

    def add_metrics(self, folder: Path, setup: EvaluationSetup, result: EvaluationResult) -> None:
        """Measurements only this format can make, added to ``result`` after the shared ones (none by default)."""
        return None

    def artifact_tokenizer(self, folder: Path, *, trust_remote_code: bool = False) -> Callable[[str], list[int]] | None:
        """The artifact's own tokenizer as text → token ids, without special tokens; None when the artifact
        has no tokenizer of its own. Every variant's is compared with the base model's before it is evaluated
        (``quantmill.evaluation.fidelity``)."""
        return None

    @abstractmethod
    def usage(self, repo_id: str, provenance: dict[str, Any]) -> str:
        """Markdown for the card's "How to use" section."""

    def card_files(self, provenance: dict[str, Any]) -> list[dict[str, str]]:
        """Rows of the card's file table (column → text); none by default."""
        return []

    def greedy_generate(
        self,
        repo_id: str,
        provenance: dict[str, Any],
        prompts: Sequence[str],
        max_new_tokens: int,
        device: str,
        *,
        trust_remote_code: bool = False,
    ) -> list[list[int]]:
        """Load the variant as the card's :meth:`usage` snippet says and greedy-generate from each prompt.

        Runs in the servable probe's fresh process (``quantmill.evaluation.servable``), where
        the Hub cache holds exactly the variant's upload as ``repo_id``, offline. Returns the
        generated token ids per prompt (through the chat template when the model has one, up to
        ``max_new_tokens``, the end token included); raises when the variant cannot be served.
        A format without this is never proven servable, so its variants are never published.
        """
        raise NotImplementedError(
            f"output format '{self.name}' has no serving check (OutputFormat.greedy_generate), so it is never published"
        )


def transformers_usage(repo_id: str) -> str:
    return (
        f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n```'
    )


@dataclass(frozen=True)
class TransformersFormat(OutputFormat):
    """A folder transformers loads (``from_pretrained``), or that ``load_model`` loads.

    Attributes:
        name: the format's name.
        tags: the card's tags for it (default: the name).
        library_name: the card's ``library_name``.
        load_model: ``load_model(folder, device)`` for a folder ``from_pretrained`` cannot read
            (None: ``AutoModelForCausalLM.from_pretrained``).
        usage_text: ``usage_text(repo_id)``, the card's snippet (default: transformers' two lines).
        serve_note: markdown appended to the snippet (how to serve it).
    """

    name: str
    tags: tuple[str, ...] = ()
    library_name: str = "transformers"
    load_model: Callable[[Path, str], Any] | None = None
    usage_text: Callable[[str], str] = transformers_usage
    serve_note: str | None = None

    def __post_init__(self) -> None:
        if not self.tags:
            object.__setattr__(self, "tags", (self.name,))

    def load_for_evaluation(
        self, folder: Path, device: str, batch_size: int | str, *, trust_remote_code: bool = False
    ) -> EvalModel:
        from transformers import AutoTokenizer

        from quantmill.evaluation.backends import load_transformers_model, transformers_eval_model

        if self.load_model:
            model = self.load_model(folder, device)
        else:
            model = load_transformers_model(folder, "auto", device, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return transformers_eval_model(model, tokenizer, batch_size)

    def artifact_tokenizer(self, folder: Path, *, trust_remote_code: bool = False) -> Callable[[str], list[int]] | None:
        from transformers import AutoTokenizer

        from quantmill.evaluation.fidelity import hf_tokenize

        return hf_tokenize(AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code))

    def usage(self, repo_id: str, provenance: dict[str, Any]) -> str:
        snippet = self.usage_text(repo_id)
        if self.serve_note:
            snippet += "\n\n" + self.serve_note.format(repo=repo_id)
        return snippet

    def greedy_generate(
        self,
        repo_id: str,
        provenance: dict[str, Any],
        prompts: Sequence[str],
        max_new_tokens: int,
        device: str,
        *,
        trust_remote_code: bool = False,
    ) -> list[list[int]]:
        """Run the card's snippet (it leaves ``model``, and ``tokenizer`` or the repo's tokenizer is loaded), then
        generate; a ``from_pretrained`` that leaves weights missing or unused fails."""
        from transformers import AutoTokenizer

        from quantmill.errors import NotServableError
        from quantmill.evaluation.servable import complete_transformers_loads, run_usage_snippet, transformers_greedy

        with complete_transformers_loads():
            namespace = run_usage_snippet(self.usage(repo_id, provenance))
        if "model" not in namespace:
            raise NotServableError("not servable: the card's usage snippet loads no `model`")
        tokenizer = namespace.get("tokenizer") or AutoTokenizer.from_pretrained(
            repo_id, trust_remote_code=trust_remote_code
        )
        return transformers_greedy(namespace["model"], tokenizer, prompts, max_new_tokens, device)
