"""A search recipe on the bundled demo model, quick enough for a flow test and the search bench."""

from __future__ import annotations

from quantmill.testing.recipes import DEMO_DATA, fast_recipe

#: a small space of quick methods: RTN needs no calibration, GGUF runs on the CPU
QUICK_SPACE = "    - {method: rtn, bits: [2, 4, 8], group_size: 64}\n    - {method: gguf, types: [q4_k_m, q8_0]}\n"
QUALITY = "    - {metric: tiny_world_mc/acc, min_recovery: 0.95}\n"


def search_recipe(
    space: str = QUICK_SPACE,
    *,
    constraints: str = QUALITY,
    budget: int = 4,
    objective: str = "{minimize: size_mb}",
    publish: str = "publish: {target: none}\n",
) -> str:
    """:func:`~quantmill.testing.recipes.fast_recipe`'s recipe with a ``search:`` in place of its matrix, and the
    demo's perplexity corpus (the screening proxy reads its first documents)."""
    matrix = fast_recipe("", gates="", publish=publish)
    search = (
        f"search:\n  objective: {objective}\n  constraints:\n{constraints}  space:\n{space}"
        f"  budget: {{full_evaluations: {budget}}}\n  proxy_documents: 4\n"
    )
    corpus = f"  perplexity: {{dataset: {{path: {DEMO_DATA / 'tiny_world_ppl.jsonl'}}}, max_documents: 16}}\n"
    text = matrix.replace("variants:\n  methods:\ngates:\n", search).replace(
        "  metrics: [size]\n", "  metrics: [size]\n" + corpus
    )
    assert "search:" in text and "perplexity:" in text, "fast_recipe changed its layout"
    return text
