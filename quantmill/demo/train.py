"""Build the demo world: corpus, tokenizer, tiny Llama, lm-eval data.

    python -m quantmill.demo.train --out quantmill/demo/tiny-llama

Deterministic on CPU: one thread, fixed seeds, deterministic algorithms, so the
same command writes the same first training steps on any machine of this kind
(``test_training_reproduces_the_first_steps_exactly`` in ``tests/demo/test_tiny_model.py``
checks it against the committed ``training_log.json``).

The model is a 2-layer Llama with hidden size 256 and intermediate size 512:
every linear layer's in-features is a multiple of 256, so every method applies
in full, llama.cpp's K-quants included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantmill.demo.world import (
    build_world,
    multiple_choice_items,
    perplexity_documents,
    training_documents,
)

log = logging.getLogger(__name__)

# GPT-2 style: documents are separated by EOS and nothing is prepended, so the
# end-of-text token doubles as BOS (lm-eval's and llama.cpp's prefix token).
EOS, UNK = "</s>", "<unk>"
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    people: int = 120
    vocab_size: int = 768
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 3000
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01


def build_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-style BPE tokenizer (metaspace, byte fallback) trained on ``texts``.

    Llama-2-shaped so llama.cpp's converter recognises it without a pre-tokenizer
    hash; unlike Llama-2 it adds no BOS (see ``EOS`` above).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    def empty(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        # Words, punctuation and line breaks stay separate tokens, so "Paris" is the same
        # token in "lives in Paris." and in "Answer: Paris".
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split("▁", behavior="merged_with_next"),
                pre_tokenizers.Punctuation(behavior="isolated"),
                pre_tokenizers.Split("\n", behavior="isolated"),
            ]
        )
        return tok

    draft = empty(models.BPE(unk_token=UNK))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=[UNK, EOS],
        show_progress=False,
        initial_alphabet=sorted(set("".join(texts)) | {"▁"}),
    )
    draft.train_from_iterator(texts, trainer)
    trained = json.loads(draft.to_str())["model"]
    learned = sorted((tok for tok in trained["vocab"] if tok not in (UNK, EOS)), key=lambda t: trained["vocab"][t])
    vocab = {tok: i for i, tok in enumerate([UNK, EOS, *BYTE_TOKENS, *learned])}
    pairs = (m.split(" ") if isinstance(m, str) else m for m in trained["merges"])
    merges = [(first, second) for first, second in pairs]
    tok = empty(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, EOS)])
    return tok


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=UNK, pad_token=EOS, add_bos_token=False
    )


def write_llama_cpp_tokenizer_files(model_dir: Path) -> None:
    """Add ``tokenizer.model`` (SentencePiece, rank-scored) and explicit BOS/EOS flags beside ``tokenizer.json``.

    Without a SentencePiece model llama.cpp's converter scores every token equally and
    segments some words differently from transformers
    (see ``quantmill.methods._sentencepiece``).
    """
    from quantmill.methods._sentencepiece import write_sentencepiece_model

    write_sentencepiece_model(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def make_model(cfg: TrainingConfig, vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def state_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tokenize_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    """``text </s>`` per document."""
    return [tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id] for doc in docs]


def sample_batch(documents: list[list[int]], cfg: TrainingConfig, generator):
    """Rows of documents drawn at random and packed to ``seq_len``.

    Drawing documents independently for every row keeps the model from learning
    the corpus' document order: it has to learn the facts themselves.
    """
    import torch

    rows = []
    for _ in range(cfg.batch_size):
        row: list[int] = []
        while len(row) < cfg.seq_len:
            row.extend(documents[int(torch.randint(len(documents), (1,), generator=generator))])
        rows.append(row[: cfg.seq_len])
    return torch.tensor(rows, dtype=torch.long)


def train(cfg: TrainingConfig, steps: int | None = None, progress: bool = True):
    """Train the tiny model; returns (model, tokenizer, per-step losses, init fingerprint)."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    world = build_world(cfg.seed, cfg.people)
    docs = training_documents(world)
    tokenizer = wrap_tokenizer(build_tokenizer(docs, cfg.vocab_size))
    model = make_model(cfg, len(tokenizer))
    init_fp = state_fingerprint(model)

    documents = tokenize_documents(tokenizer, docs)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total = cfg.steps if steps is None else steps

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + torch.cos(torch.tensor(done * torch.pi)).item()) * 0.95 + 0.05

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    model.train()
    started = time.perf_counter()
    for step in range(total):
        batch = sample_batch(documents, cfg, generator)
        out = model(input_ids=batch, labels=batch)  # the model shifts labels itself
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if progress and (step % 100 == 0 or step == total - 1):
            log.info("step %d/%d loss %.4f (%.0fs)", step + 1, total, losses[-1], time.perf_counter() - started)
    model.eval()
    return model, tokenizer, losses, init_fp


def write_eval_data(world, out_dir: Path) -> None:
    """The lm-eval data files for the demo tasks (JSON lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "tiny_world_mc.jsonl").open("w") as fh:
        for item in multiple_choice_items(world):
            fh.write(json.dumps(item) + "\n")
    with (out_dir / "tiny_world_ppl.jsonl").open("w") as fh:
        for doc in perplexity_documents(world):
            fh.write(json.dumps({"text": doc}) + "\n")
    with (out_dir / "calibration.jsonl").open("w") as fh:
        for doc in training_documents(world):
            fh.write(json.dumps({"text": doc}) + "\n")


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--data", type=Path, help="folder for the lm-eval data files")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = {k: v for k, v in (("steps", args.steps), ("num_layers", args.layers)) if v is not None}
    cfg = TrainingConfig(**overrides)
    model, tokenizer, losses, init_fp = train(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    write_llama_cpp_tokenizer_files(args.out)
    log_record = {"config": asdict(cfg), "init_fingerprint": init_fp, "losses": losses}
    (args.out / "training_log.json").write_text(json.dumps(log_record, indent=1) + "\n")
    if args.data:
        write_eval_data(build_world(cfg.seed, cfg.people), args.data)
    log.info("wrote %s (final loss %.4f)", args.out, losses[-1])


if __name__ == "__main__":
    main()
