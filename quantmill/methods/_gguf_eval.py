"""How the GGUF format is evaluated: an lm-eval backend over ``llama_cpp.Llama``, and KL divergence.

The backend is registered with lm-eval as ``quantmill-gguf``, so GGUF variants see
the same requests as transformers ones. Requests are tokenized the way lm-eval's
HF backend does it (context and continuation split on the whole string's tokens;
trailing context whitespace moved to the continuation; special-token text parsed
as those tokens; no BOS added before text that starts with it), chat templates
are the GGUF's own (``tokenizer.chat_template``, written by the converter from the
HF tokenizer) rendered as transformers renders them, and rolling log-likelihood
uses the same windows as quantmill's perplexity.

KL divergence is what the GGUF community trusts for comparing quants:
``llama-perplexity`` saves the unquantized GGUF's logits over a corpus once
(``--kl-divergence-base``), then each variant is scored against them
(``--kl-divergence``). It needs llama.cpp's tools.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from quantmill.evaluation.backends import EvalModel, free_memory
from quantmill.evaluation.evaluate import EvaluationSetup
from quantmill.evaluation.perplexity import windows_for
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.llamacpp import LlamaCpp, route_llama_log, run_tool

MAX_CONTEXT = 4096


def has_amx() -> bool:
    """Whether this CPU has AMX, whose llama.cpp kernels crash here (SIGSEGV in ggml_backend_amx_mul_mat)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def weight_repacking(enabled: bool) -> Iterator[None]:
    """Turn llama.cpp's weight repacking (extra buffer types, AMX among them) off for models loaded inside.

    llama-cpp-python has no argument for it, so the default model parameters it
    starts from are adjusted while the model loads. Repacking only changes speed.
    """
    import llama_cpp.llama_cpp as llama_cpp  # the module llama_cpp.Llama reads its defaults from

    if enabled:
        yield
        return
    original = llama_cpp.llama_model_default_params

    def without_repacking():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        llama_cpp.llama_model_default_params = original


def trained_context(path: Path) -> int:
    """The context length the model was trained with, from the GGUF header."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}
    arch_field = fields.get("general.architecture")
    arch = bytes(arch_field.parts[-1]).decode() if arch_field else "llama"
    length = fields.get(f"{arch}.context_length")
    return int(length.parts[-1][0]) if length else 2048


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def llama_tokenize(llm, text: str, add_special: bool) -> list[int]:
    """Token ids of ``text`` as transformers gives them: special-token text (``<s>``, chat markers) is
    parsed as those tokens, and with ``add_special`` BOS is added when the vocabulary says so, except
    before text that already starts with it (lm-eval's HF backend skips it there)."""
    if not text:
        return []
    bos = llm.token_bos()
    if add_special and bos >= 0 and text.startswith(llm.detokenize([bos], special=True).decode("utf-8", "replace")):
        add_special = False
    return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)


def gguf_tokenizer(path: Path) -> Callable[[str], list[int]]:
    """The GGUF's own tokenizer (vocabulary only, no weights) as text → token ids, without special tokens."""
    from llama_cpp import Llama

    llm = Llama(str(path), vocab_only=True, verbose=route_llama_log())
    return lambda text: llama_tokenize(llm, text, add_special=False)


def chat_templates(metadata: dict[str, str]) -> dict[str, str]:
    """The GGUF's chat templates by name (``default`` for ``tokenizer.chat_template``)."""
    prefix = "tokenizer.chat_template"
    return {
        ("default" if key == prefix else key[len(prefix) + 1 :]): value
        for key, value in metadata.items()
        if key == prefix or key.startswith(prefix + ".")
    }


def special_token_texts(llm) -> dict[str, str]:
    """``bos_token``/``eos_token``… as texts, the variables transformers gives a chat template."""
    ids = {"bos_token": llm.token_bos(), "eos_token": llm.token_eos()}
    return {name: llm.detokenize([i], special=True).decode("utf-8", "replace") for name, i in ids.items() if i >= 0}


@register_model("quantmill-gguf")
class LlamaCppLM(LM):
    """lm-eval's LM interface over a GGUF file."""

    def __init__(self, model_path: str, n_threads: int | None = None, n_gpu_layers: int = 0, **_unused) -> None:
        super().__init__()
        import os

        from llama_cpp import Llama

        self.n_ctx = min(trained_context(Path(model_path)), MAX_CONTEXT)
        with weight_repacking(not has_amx()):
            self.llm = Llama(
                model_path,
                n_ctx=self.n_ctx,
                n_batch=self.n_ctx,
                logits_all=True,
                verbose=route_llama_log(),
                n_threads=n_threads or os.cpu_count(),
                n_gpu_layers=n_gpu_layers,
                seed=0,
            )
        self.prefix_token = self.llm.token_bos() if self.llm.token_bos() >= 0 else self.llm.token_eos()
        self.model_path = model_path
        self.templates = chat_templates(self.llm.metadata)

    # -- tokens ---------------------------------------------------------------
    def tok(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` as lm-eval's HF backend gets them (see :func:`llama_tokenize`)."""
        return llama_tokenize(self.llm, text, add_special)

    # -- chat templates (lm-eval's HF backend's contract) ------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.model_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The chat template lm-eval applies: the GGUF's (``tokenizer.chat_template``), the GGUF's
        template of that name, or a template given as text (the order of lm-eval's HF backend).

        Raises:
            ValueError: when the GGUF carries no chat template.
        """
        if chat_template is False or chat_template is None:
            return None
        if isinstance(chat_template, str):
            return self.templates.get(chat_template, chat_template)
        if "default" not in self.templates:
            raise ValueError(
                "apply_chat_template needs a chat template, and this GGUF has none (tokenizer.chat_template): "
                "the model it was converted from had none"
            )
        return self.templates["default"]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``chat_history`` with the GGUF's chat template, as transformers renders a tokenizer's."""
        import jinja2
        from transformers.utils.chat_template_utils import render_jinja_template

        template = self.chat_template(True)

        def render(history: list[dict[str, str]]) -> str:
            rendered, _ = render_jinja_template(
                conversations=[history],
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
                **special_token_texts(self.llm),
            )
            return rendered[0]

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:  # HF's backend retries without the system turn, so do we
            return render([m for m in chat_history if m["role"] != "system"])

    def _logprobs(self, tokens: list[int]) -> np.ndarray:
        """Row i: log-probabilities of the token after tokens[i]."""
        self.llm.reset()
        self.llm.eval(tokens)
        return _log_softmax(np.asarray(self.llm.scores[: len(tokens)], dtype=np.float64))

    def score_windows(self, windows: Sequence[tuple[list[int], int]]) -> list[float]:
        sums = []
        for tokens, n_scored in windows:
            logprobs = self._logprobs(tokens[:-1])
            targets = tokens[len(tokens) - n_scored :]
            rows = logprobs[len(tokens) - n_scored - 1 :]
            sums.append(float(sum(rows[i, t] for i, t in enumerate(targets))))
        return sums

    # -- lm-eval API ------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if context:
                whole = self.tok(context + continuation)
                context_tokens = self.tok(context)
                continuation_tokens = whole[len(context_tokens) :]
            else:
                context_tokens, continuation_tokens = [self.prefix_token], self.tok(continuation, add_special=False)
            tokens = (context_tokens + continuation_tokens)[-(self.n_ctx + 1) :]
            logprobs = self._logprobs(tokens[:-1])
            rows = logprobs[len(tokens) - len(continuation_tokens) - 1 :]
            total = float(sum(rows[i, t] for i, t in enumerate(continuation_tokens)))
            greedy = all(int(rows[i].argmax()) == t for i, t in enumerate(continuation_tokens))
            results.append((total, greedy))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            ids = self.tok(request.args[0], add_special=False)
            windows = windows_for(ids, self.prefix_token, self.n_ctx, self.n_ctx - 1)
            results.append(sum(self.score_windows(windows)))
        return results

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kwargs.get("max_gen_toks", 256))
            outputs.append(self.greedy(context, max_tokens, until))
        return outputs

    def greedy(self, context: str, max_tokens: int, until: Sequence[str] = ()) -> str:
        tokens = self.tok(context)[-self.n_ctx :]
        text = b""
        self.llm.reset()
        for token in self.llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            if token == self.llm.token_eos() or max_tokens <= 0:
                break
            text += self.llm.detokenize([token])
            max_tokens -= 1
            decoded = text.decode("utf-8", errors="ignore")
            if any(stop in decoded for stop in until):
                return decoded[: min(decoded.index(s) for s in until if s in decoded)]
        return text.decode("utf-8", errors="ignore")

    def speed(self, prompts: Sequence[str], new_tokens: int) -> tuple[float, float]:
        prefill_tokens = decode_tokens = 0
        prefill_seconds = decode_seconds = 0.0
        for prompt in prompts:
            tokens = [self.prefix_token, *self.tok(prompt, add_special=False)]
            self.llm.reset()
            self.llm.eval(tokens)  # warm-up
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(tokens)
            prefill_seconds += time.perf_counter() - start
            prefill_tokens += len(tokens)
            start = time.perf_counter()
            for _ in range(new_tokens):
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                self.llm.eval([token])
            decode_seconds += time.perf_counter() - start
            decode_tokens += new_tokens
        return prefill_tokens / prefill_seconds, decode_tokens / decode_seconds


def gguf_eval_model(file: Path, device: str) -> EvalModel:
    """The :class:`EvalModel` of a GGUF file."""
    lm = LlamaCppLM(str(file), n_gpu_layers=-1 if device.startswith("cuda") else 0)

    def tokenize(text: str) -> list[int]:
        return lm.tok(text, add_special=False)

    def release() -> None:
        lm.llm.close()  # llama.cpp memory is not Python's: free it now, not at interpreter exit
        free_memory()

    return EvalModel(lm, lm.score_windows, tokenize, lm.prefix_token, lm.speed, release)


# -- KL divergence ------------------------------------------------------------
_MEAN_KLD = re.compile(r"Mean\s+KLD:\s+(?P<value>[-\d.eE+]+)\s+±\s+(?P<stderr>[-\d.eE+]+)")


def _perplexity_command(llama: LlamaCpp, model: Path, corpus: Path, context: int) -> list[str]:
    tool = llama.tool("llama-perplexity")
    assert tool is not None
    command = [str(tool), "-m", str(model), "-f", str(corpus), "-c", str(context), "-b", str(context)]
    return command + (["--no-repack"] if has_amx() else [])  # llama.cpp's AMX kernels crash on this CPU


def kl_divergence(llama: LlamaCpp, base: Path, variant: Path, corpus: Path, context: int) -> MetricValue:
    """Mean KLD (with its stderr) of ``variant`` against ``base`` over ``corpus``; base logits are cached."""
    logits = base.with_name(f"{base.stem}-{corpus.stem}-c{context}.kld")
    if not logits.is_file():
        partial = logits.with_suffix(".partial")
        run_tool(
            _perplexity_command(llama, base, corpus, context) + ["--kl-divergence-base", str(partial)],
            what="llama-perplexity (base logits)",
        )
        partial.rename(logits)
    command = _perplexity_command(llama, variant, corpus, context) + [
        "--kl-divergence-base",
        str(logits),
        "--kl-divergence",
    ]
    # llama.cpp logs from a background thread and can lose the last lines at exit on a
    # loaded machine (seen here); the computation is deterministic, so running it again is safe.
    for _ in range(3):
        output = run_tool(command, what="llama-perplexity --kl-divergence")
        match = _MEAN_KLD.search(output)
        if match is not None:
            break
    if match is None:
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise ValueError(f"llama-perplexity printed no 'Mean KLD' line; its output ended with:\n{tail}")
    return MetricValue(float(match["value"]), float(match["stderr"]))


def add_kl_divergence(folder: Path, weights: Path, setup: EvaluationSetup, result: EvaluationResult) -> None:
    """KLD against the unquantized GGUF, when llama.cpp's tools and a perplexity corpus exist.

    KLD is reported, never gated: when it cannot be measured, the result says why.
    """
    from quantmill.llamacpp import LlamaCppError, find_llama_cpp
    from quantmill.quantize import read_artifact
    from quantmill.textdata import load_texts

    llama = find_llama_cpp()
    perplexity = setup.evaluation.perplexity
    details = read_artifact(folder).provenance["details"]
    if llama is None or llama.tool("llama-perplexity") is None or perplexity is None or "base" not in details:
        result.details["kld"] = "not measured: needs llama.cpp's llama-perplexity and a perplexity corpus"
        return
    base = folder.parent / ".shared" / details["base"]
    if not base.is_file():  # a variant folder moved away from the recipe's shared intermediates
        result.details["kld"] = f"not measured: the unquantized GGUF {details['base']} is not beside the variant"
        return
    corpus = base.with_name(f"kld-corpus-{base.stem}.txt")
    if not corpus.is_file():
        corpus.write_text("\n".join(load_texts(perplexity.dataset, setup.base_dir)) + "\n")
    try:
        result.metrics["kld"] = kl_divergence(llama, base, weights, corpus, min(perplexity.max_length, 512))
    except (LlamaCppError, ValueError) as exc:
        result.details["kld"] = f"not measured: {exc}"
