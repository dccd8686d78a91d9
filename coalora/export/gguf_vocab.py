"""A Hugging Face byte-level BPE tokenizer as GGUF ``tokenizer.ggml.*`` metadata (llama.cpp's ``gpt2`` model).

llama.cpp re-tokenizes text itself, so the GGUF carries the whole tokenizer:

* ``tokens``: the token string of every id ``0 .. vocab - 1`` (the embedding's rows); ids the
  tokenizer does not define are padded as ``[PAD<id>]`` of type UNUSED;
* ``token_type``: CONTROL for special added tokens, USER_DEFINED for other added tokens, NORMAL else;
* ``merges``: the BPE merges as ``"left right"`` strings, in rank order;
* ``pre``: llama.cpp's pre-tokenizer, read from the tokenizer's own pre-tokenizer: a plain
  ``ByteLevel`` with the GPT-2 regex is ``gpt-2``; ``Digits(individual)`` then ``ByteLevel`` is
  ``smollm`` (single digits, then GPT-2's regex); anything else is refused, since a wrong
  pre-tokenizer silently changes how llama.cpp splits text;
* the bos / eos / unk / pad ids and whether the tokenizer adds BOS (it does when encoding a word
  with special tokens starts with the BOS id), and the chat template when there is one.

The tokenizer is read from its serialized ``tokenizers`` JSON (``backend_tokenizer.to_str()``), so any
``PreTrainedTokenizerFast`` works, including one built in memory.
"""

from __future__ import annotations

import json
from typing import Any

from coalora.errors import CoaloraError


def _pre_tokenizer(pre: dict[str, Any] | None) -> str:
    """llama.cpp's pre-tokenizer name for a ``tokenizers`` pre-tokenizer JSON object."""
    def byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre and byte_level(pre):
        return "gpt-2"
    steps = (pre or {}).get("pretokenizers") or []
    if (pre or {}).get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Digits" \
            and steps[0].get("individual_digits") and byte_level(steps[1]):
        return "smollm"
    raise CoaloraError(f"the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} has no known llama.cpp equivalent; "
                       "GGUF export supports GPT-2-style byte-level BPE tokenizers (ByteLevel, optionally after "
                       "Digits(individual_digits=True))")


def _merges(model: dict[str, Any]) -> list[str]:
    """BPE merges as ``"left right"`` strings (``tokenizers`` stores them as strings or as pairs)."""
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def vocab_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The tokenizer's GGUF fields: ``tokens``, ``token_type``, ``merges``, ``pre``, special ids,
    ``add_bos`` and ``chat_template`` (None when absent), for an embedding of ``vocab_size`` rows."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CoaloraError(f"GGUF export needs a Hugging Face fast tokenizer (byte-level BPE), got "
                           f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise CoaloraError(f"GGUF export supports byte-level BPE tokenizers, got a {model.get('type')} model")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    tokens: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    types = dict.fromkeys(tokens, int(gguf.TokenType.NORMAL))
    for a in spec.get("added_tokens", []):
        tokens[int(a["id"])] = a["content"]
        types[int(a["id"])] = int(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    if max(tokens) >= vocab_size:
        raise CoaloraError(f"the tokenizer has token id {max(tokens)} but the model's embedding has only "
                           f"{vocab_size} rows; export the model with its own tokenizer")
    ids = tokenizer.encode("a", add_special_tokens=True)
    bos = getattr(tokenizer, "bos_token_id", None)
    return {
        "tokens": [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)],
        "token_type": [types.get(i, int(gguf.TokenType.UNUSED)) for i in range(vocab_size)],
        "merges": _merges(model),
        "pre": pre,
        "bos": bos,
        "eos": getattr(tokenizer, "eos_token_id", None),
        "unk": getattr(tokenizer, "unk_token_id", None),
        "pad": getattr(tokenizer, "pad_token_id", None),
        "add_bos": bool(ids) and bos is not None and ids[0] == bos,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


def add_vocab(writer: Any, meta: dict[str, Any]) -> None:
    """Write :func:`vocab_metadata`'s fields into a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["token_type"])
    writer.add_token_merges(meta["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if meta[key] is not None:
            add(int(meta[key]))
    writer.add_add_bos_token(bool(meta["add_bos"]))
    writer.add_add_space_prefix(False)
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])
