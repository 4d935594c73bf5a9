"""lm-eval on the demo model with no quantmill in between: the reference quantmill's evaluation must match."""

from __future__ import annotations

from quantmill.testing.recipes import DEMO_MODEL, DEMO_TASKS


def lm_eval_directly(task: str) -> dict:
    """``lm_eval.simple_evaluate`` on the demo model, this task's results."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(DEMO_MODEL), batch_size=16)
    return simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(DEMO_TASKS)))["results"][
        task
    ]
