"""Render model card templates in Jinja's sandbox and refuse cards that carry a secret.

A card template may come from a recipe (``publish.card_template``, capability
``card_template``), so it is untrusted code: it renders in
``jinja2.sandbox.SandboxedEnvironment`` (no ``_`` attributes, so no
``cycler.__init__.__globals__.os.environ``), its context holds only what the card
shows, and the rendered text is scanned for the values of known secrets before it
can be published.
"""

from __future__ import annotations

import functools
from typing import Any

from quantmill.errors import PublishError
from quantmill.redact import secret_names_in


def render_model_card(card_data: Any, template: str, **context: Any):
    """A ``huggingface_hub.ModelCard`` rendered from ``template`` like ``ModelCard.from_template``, sandboxed.

    A template without front matter gets ``card_data`` as its front matter, so the
    card always carries quantmill's metadata.

    Raises:
        PublishError: the template is invalid or broke the sandbox's rules, or the
            rendered card contains the value of a secret.
    """
    import jinja2
    from huggingface_hub import ModelCard

    values = {**card_data.to_dict(), **context}
    try:
        text = _compiled(template).render(card_data=card_data.to_yaml(), **values)
    except jinja2.TemplateError as exc:
        raise PublishError(f"the model card template failed: {type(exc).__name__}: {exc}") from exc
    if not text.startswith("---"):
        text = f"---\n{card_data.to_yaml()}\n---\n{text}"
    leaked = secret_names_in(text)
    if leaked:
        raise PublishError(f"the rendered model card contains the value of {', '.join(leaked)}; it is not published")
    card = ModelCard(text)
    if getattr(card.data, "quantmill", None) is None and getattr(card_data, "quantmill", None) is not None:
        # a custom front matter without quantmill's block; CardData keeps any extra attribute
        card.data.quantmill = card_data.quantmill  # type: ignore[attr-defined]
    return card


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """The template compiled once per process: a run renders a card per variant from the same one."""
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment().from_string(template)
