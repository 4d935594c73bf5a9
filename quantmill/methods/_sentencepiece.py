"""A SentencePiece ``tokenizer.model`` rebuilt from a Llama-style BPE ``tokenizer.json``, for llama.cpp.

llama.cpp's converter reads a SentencePiece model when the folder has one; without
it, a Llama-style BPE ``tokenizer.json`` (metaspace ``▁``, byte fallback) is
converted with every score equal, and llama.cpp then segments words differently
from transformers. llama.cpp's SentencePiece tokenizer merges the adjacent pair
whose result has the highest score first; scoring each merged token by minus the
rank of the first merge that makes it reproduces the BPE merges in order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _uses_metaspace(tokenizer: dict[str, Any]) -> bool:
    """Whether spaces become ``▁`` (a Metaspace pre-tokenizer or a normalizer replacing them)."""
    text = json.dumps([tokenizer.get("pre_tokenizer"), tokenizer.get("normalizer")])
    return '"Metaspace"' in text or '"content": "\\u2581"' in text


def is_llama_style_bpe(folder: Path) -> bool:
    """A BPE ``tokenizer.json`` with byte fallback and ``▁`` spaces, and no ``tokenizer.model`` beside it.

    These are the folders llama.cpp converts with placeholder scores; other
    tokenizers keep llama.cpp's own route.
    """
    if (folder / "tokenizer.model").exists() or not (folder / "tokenizer.json").is_file():
        return False
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback"))
        and decoder.get("type") == "Sequence"
        and _uses_metaspace(tokenizer)
    )


def _special_ids(folder: Path, vocab: dict[str, int]) -> dict[str, int]:
    """``bos``/``eos`` ids from ``tokenizer_config.json`` (-1 when absent, or when BOS is the EOS token)."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}

    def token_id(name: str) -> int:
        token = config.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        return vocab.get(token, -1) if isinstance(token, str) else -1

    bos, eos = token_id("bos_token"), token_id("eos_token")
    return {"bos": -1 if bos == eos else bos, "eos": eos}


def sentencepiece_model(folder: Path) -> bytes:
    """The serialized SentencePiece model of the BPE ``tokenizer.json`` in ``folder``.

    Raises:
        ValueError: when the vocabulary has holes or no unknown token (SentencePiece needs both).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tokenizer.get("added_tokens", [])}
    vocab.update({content: token["id"] for content, token in added.items()})
    pieces = sorted(vocab, key=lambda t: vocab[t])
    if [vocab[t] for t in pieces] != list(range(len(pieces))):
        raise ValueError("the vocabulary's ids are not contiguous")
    unk = model.get("unk_token") or "<unk>"
    if unk not in vocab:
        raise ValueError("the vocabulary has no unknown token")

    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    rank: dict[str, int] = {}
    for index, (left, right) in enumerate(merges):
        rank.setdefault(left + right, index)
    special = _special_ids(folder, vocab)
    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(pieces)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.eos_id = vocab[unk], special["eos"]
    proto.trainer_spec.bos_id, proto.trainer_spec.pad_id = special["bos"], -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token in pieces:
        piece = proto.pieces.add()
        piece.piece = token
        if token == unk:
            piece.type = sp.ModelProto.SentencePiece.UNKNOWN
        elif token in added:
            special_token = added[token].get("special", False)
            piece.type = (
                sp.ModelProto.SentencePiece.CONTROL if special_token else sp.ModelProto.SentencePiece.USER_DEFINED
            )
        elif _BYTE_TOKEN.fullmatch(token):
            piece.type = sp.ModelProto.SentencePiece.BYTE
        else:
            piece.score = -float(rank.get(token, 0))
    return proto.SerializeToString()


def write_sentencepiece_model(folder: Path, target: Path | None = None) -> Path:
    """Write the SentencePiece model of ``folder``'s ``tokenizer.json`` to ``target`` (default: beside it)."""
    target = target or folder / "tokenizer.model"
    target.write_bytes(sentencepiece_model(folder))
    return target
