"""Tokenizer fidelity: a variant whose artifact carries its own tokenizer must tokenize like the baseline.

A format that ships its own tokenizer (GGUF embeds one) can segment text
differently from the base model's; every number measured through it would then
be measured on other tokens. Before a variant is evaluated, a fixed sample of the
recipe's evaluation texts is tokenized with the artifact's tokenizer and with the
base model's; any difference fails the variant (:class:`TokenizerDriftError`).

The sample (deterministic, evenly spaced over each source):

* up to :data:`SAMPLE_PER_SOURCE` documents of the perplexity corpus;
* for each lm-eval task, up to :data:`SAMPLE_PER_SOURCE` of the documents the
  evaluation reads (within ``limit``): the context (``doc_to_text``) and, for
  multiple-choice tasks, each context + delimiter + choice string, which is what
  lm-eval tokenizes; with ``apply_chat_template``, each context also through the
  base tokenizer's chat template (special tokens in text).

Task documents are read with lm-eval's ``TaskManager`` (only the recipe's task
folders when they hold every task, which is fast); when they cannot be read the
details say why and the other texts are still compared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantmill.errors import TokenizerDriftError
from quantmill.evaluation.harness import task_manager
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.textdata import load_texts

if TYPE_CHECKING:
    from quantmill.evaluation.evaluate import EvaluationSetup

log = logging.getLogger(__name__)

Tokenize = Callable[[str], list[int]]

SAMPLE_PER_SOURCE = 32
METRIC = "tokenizer_agreement"


def hf_tokenize(tokenizer: Any) -> Tokenize:
    """A transformers tokenizer as text → token ids, without special tokens (as the evaluation tokenizes)."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all of them when there are no more than ``n``)."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


@dataclass
class TokenizerFidelity:
    """How many sampled texts the artifact's tokenizer splits like the baseline's.

    Attributes:
        texts: how many texts were compared.
        differing: how many gave other token ids.
        sources: texts compared per source (``perplexity``, ``task:<name>``, ``chat_template``).
        notes: what could not be sampled, and why.
        first_difference: the first differing text (shortened), for the reader of the details.
    """

    texts: int = 0
    differing: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    first_difference: str | None = None

    @property
    def agreement(self) -> float:
        return 1.0 - self.differing / self.texts if self.texts else 1.0

    def record(self, result: EvaluationResult) -> None:
        """The agreement as a metric (only when texts were compared) and the counts in the details."""
        if self.texts:
            result.metrics[METRIC] = MetricValue(round(self.agreement, 6))
        result.details["tokenizer_fidelity"] = {
            "texts": self.texts,
            "differing": self.differing,
            "sources": self.sources,
            "notes": self.notes,
        }


def compare(artifact: Tokenize, base: Tokenize, texts: dict[str, list[str]]) -> TokenizerFidelity:
    """Tokenize every text with both tokenizers; ``texts`` maps a source name to its texts."""
    fidelity = TokenizerFidelity()
    for source, items in texts.items():
        fidelity.sources[source] = len(items)
        for text in items:
            fidelity.texts += 1
            if artifact(text) != base(text):
                fidelity.differing += 1
                if fidelity.first_difference is None:
                    fidelity.first_difference = text[:120]
    return fidelity


def check_tokenizer_fidelity(
    artifact: Tokenize | None, base_tokenizer: Path, setup: EvaluationSetup, *, trust_remote_code: bool = False
) -> TokenizerFidelity | None:
    """Compare the artifact's tokenizer with the base model's on the evaluation sample.

    Returns None when the artifact has no tokenizer of its own.

    Raises:
        TokenizerDriftError: ``tokenizer drift: N of M texts tokenize differently``.
    """
    if artifact is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer, trust_remote_code=trust_remote_code)
    notes: list[str] = []
    fidelity = compare(artifact, hf_tokenize(tokenizer), evaluation_sample(setup, tokenizer, notes))
    fidelity.notes = notes if fidelity.texts else [*notes, "the recipe evaluates no texts: nothing compared"]
    if fidelity.differing:
        log.warning("tokenizers differ, first on %r", fidelity.first_difference)
        raise TokenizerDriftError(
            f"tokenizer drift: {fidelity.differing} of {fidelity.texts} texts tokenize differently"
        )
    return fidelity


def evaluation_sample(setup: EvaluationSetup, tokenizer: Any, notes: list[str]) -> dict[str, list[str]]:
    """The fixed sample of the recipe's evaluation texts, by source (see the module docstring)."""
    evaluation = setup.evaluation
    texts: dict[str, list[str]] = {}
    if evaluation.perplexity is not None:
        corpus = load_texts(evaluation.perplexity.dataset, setup.base_dir, limit=evaluation.perplexity.max_documents)
        texts["perplexity"] = spread(corpus, SAMPLE_PER_SOURCE)
    contexts: list[str] = []
    if evaluation.tasks:
        try:
            for name, task in _tasks(evaluation.tasks, [setup.resolve(p) for p in evaluation.include_paths]):
                task_texts, task_contexts = _task_texts(task, evaluation.limit)
                texts[f"task:{name}"] = task_texts
                contexts += task_contexts
        except Exception as exc:  # noqa: BLE001 -- the evaluation itself will report an unreadable task
            notes.append(f"task contexts not sampled: {type(exc).__name__}: {exc}")
    if evaluation.apply_chat_template and contexts:
        if getattr(tokenizer, "chat_template", None):
            texts["chat_template"] = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True
                )
                for c in spread(contexts, SAMPLE_PER_SOURCE)
            ]
        else:
            notes.append("chat template not sampled: the base tokenizer has none")
    return texts


def _tasks(names: list[str], include_paths: list[Path]) -> Iterator[tuple[str, Any]]:
    """The recipe's lm-eval tasks (groups flattened), read from its task folders alone when they suffice."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import get_task_dict

    manager = task_manager(names, include_paths)

    def flatten(tasks: dict) -> Iterator[tuple[str, Any]]:
        for key, value in tasks.items():
            if isinstance(value, dict):
                yield from flatten(value)
            elif isinstance(value, Task):
                yield str(getattr(key, "group_name", key)), value

    yield from flatten(get_task_dict(names, manager))


def _task_texts(task: Any, limit: int | None) -> tuple[list[str], list[str]]:
    """The strings lm-eval tokenizes for a sample of the task's documents, and their contexts."""
    docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
    texts, contexts = [], []
    for doc in spread(docs, SAMPLE_PER_SOURCE):
        context = task.doc_to_text(doc)
        if not isinstance(context, str):
            continue
        contexts.append(context)
        texts.append(context)
        if task.OUTPUT_TYPE == "multiple_choice":
            delimiter = task.config.target_delimiter
            texts += [context + delimiter + str(choice) for choice in task.doc_to_choice(doc)]
    return texts, contexts
