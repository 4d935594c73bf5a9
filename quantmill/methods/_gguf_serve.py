"""GGUF's servable probe: the card's ``llama_cpp`` snippet, then greedy generation with llama.cpp.

Runs in the probe's fresh process (``quantmill.evaluation.serve_probe``), offline, with
a Hub cache holding only the variant's upload. The card's snippet calls
``Llama.from_pretrained(repo_id, filename=...)``, which lists the repo's files with
``HfFileSystem`` (a Hub API call, even when the file is cached) before
``hf_hub_download`` takes the file from the cache. Offline, that listing is
answered from the cached snapshot (:func:`repo_listing_from_cache`): the one
deviation from what a user online runs; the file match and the download path are
llama_cpp's own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class _CachedRepoFileSystem:
    """What ``Llama.from_pretrained`` asks of ``HfFileSystem``: ``ls(repo_id, recursive=True)``, from the cache."""

    def ls(self, path: str, recursive: bool = False, **kwargs: Any) -> list[str]:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(path, local_files_only=True))
        found = snapshot.rglob("*") if recursive else snapshot.iterdir()
        return [f"{path}/{p.relative_to(snapshot).as_posix()}" for p in sorted(found) if p.is_file()]


@contextmanager
def repo_listing_from_cache() -> Iterator[None]:
    import huggingface_hub

    original = huggingface_hub.HfFileSystem
    huggingface_hub.HfFileSystem = _CachedRepoFileSystem  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        huggingface_hub.HfFileSystem = original  # type: ignore[misc]


def prompt_tokens(llm, prompt: str) -> list[int]:
    """The prompt's tokens as llama_cpp's chat completion makes them: through the GGUF's chat template when it
    has one, else the plain text (with BOS when the GGUF says to add it)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return llm.tokenize(prompt.encode(), add_bos=True, special=False)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()
    formatted = Jinja2ChatFormatter(
        template,
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
    )(messages=[{"role": "user", "content": prompt}])
    return llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)


def gguf_greedy_generate(usage: str, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """Run the card's snippet (it leaves ``llm``) and greedy-generate from each prompt, the end token included."""
    import llama_cpp

    from quantmill.errors import NotServableError
    from quantmill.evaluation.servable import run_usage_snippet

    with repo_listing_from_cache():
        namespace = run_usage_snippet(usage)
    llm = namespace.get("llm")
    if llm is None:
        raise NotServableError("not servable: the card's usage snippet loads no `llm`")
    generated = []
    for prompt in prompts:
        tokens: list[int] = []
        for token in llm.generate(prompt_tokens(llm, prompt), top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(tokens) >= max_new_tokens:
                break
        generated.append(tokens)
    return generated
