"""Text to token ids as big_vision feeds its two-tower models (pp/ops_text.py `tokenize`, and the
`lower|tok` ops of SigLIP 2's configs):

  - ASCII lower-casing (tf.strings.lower without an encoding changes only A-Z);
    (SentencePiece models here; SigLIP 2's tokenizer.json in transformers folders: JsonTokenizer)
  - the SentencePiece ids of the text, then the EOS id; no BOS;
  - "sticky" EOS: a text of max_len tokens or more keeps its first max_len - 1 ids and the EOS;
    a shorter one is padded to max_len with `pad` (SigLIP 1 models: 1; SigLIP 2: the tokenizer's
    own pad id).
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import numpy as np

from fastvit_jax.errors import FastViTError

MAX_TOKENIZER_BYTES = 64 << 20  # the largest SentencePiece model we ship a name for is ~4.3 MB
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def sticky_eos(ids: list[int], max_len: int, pad: int) -> list[int]:
    """ids ending in the EOS, cut or padded to max_len keeping the EOS last when cut."""
    if len(ids) >= max_len:
        return ids[: max_len - 1] + ids[-1:]
    return ids + [pad] * (max_len - len(ids))


def transformers_canonical(text: str) -> str:
    """transformers' SiglipTokenizer.canonicalize_text: lower-case, ASCII punctuation removed,
    whitespace runs made one space, stripped."""
    text = text.lower().translate(_NO_PUNCTUATION)
    return " ".join(text.split())


RULES = {"big_vision": ascii_lower, "transformers": transformers_canonical, "gemma": ascii_lower}


def read_tokenizer_file(path: Path, what: str) -> bytes:
    """The bytes of a tokenizer file, refused in one line when missing or larger than any tokenizer."""
    if not path.is_file():
        raise FastViTError(f"tokenizer not found: {path}")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise FastViTError(f"{path}: {path.stat().st_size} bytes is too large for {what} "
                           f"(at most {MAX_TOKENIZER_BYTES >> 20} MiB)")
    return path.read_bytes()


class TextIds:
    """What both tokenizers share: ids(text) ends in the EOS; tokenize pads or cuts to max_len."""

    def ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def tokenize(self, texts: list[str], max_len: int, pad: int) -> np.ndarray:
        """(len(texts), max_len) int32 ids with big_vision's rules (module docstring)."""
        return np.asarray([sticky_eos(self.ids(t), max_len, pad) for t in texts], np.int32).reshape(-1, max_len)


class Tokenizer(TextIds):
    """A SentencePiece model file, read once. rule: how a text is prepared before SentencePiece --
    "big_vision" (ASCII lower-casing) or "transformers" (SiglipTokenizer's canonicalisation); both
    then append the EOS and pad (or cut, keeping the EOS) to the tower's length."""

    def __init__(self, path: str | Path, rule: str = "big_vision"):
        import sentencepiece

        self.rule, self.prepare = rule, RULES[rule]
        self.path = Path(path)
        data = read_tokenizer_file(self.path, "a SentencePiece model")
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError, TypeError) as e:
            raise FastViTError(f"{self.path}: not a SentencePiece model ({str(e).splitlines()[0][:120]})") from None
        if self.sp.eos_id() < 0:
            raise FastViTError(f"{self.path}: the SentencePiece model has no EOS piece, which big_vision's "
                               f"text towers end every text with")

    @property
    def vocab_size(self) -> int:
        return int(self.sp.GetPieceSize())

    @property
    def eos_id(self) -> int:
        return int(self.sp.eos_id())

    @property
    def pad_id(self) -> int:
        """The model's own pad id (-1 when it defines none)."""
        return int(self.sp.pad_id())

    def ids(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(self.prepare(text))) + [self.eos_id]


def _special(config: dict, name: str, default: str) -> str:
    """A special token's text in tokenizer_config.json (a string, or {"content": ...})."""
    value = config.get(name, default)
    return value.get("content", default) if isinstance(value, dict) else str(value)


class JsonTokenizer(TextIds):
    """A `tokenizers` tokenizer.json, as SigLIP 2's transformers folders ship the Gemma tokenizer.
    Texts become ids by big_vision's SigLIP 2 rules (`lower|tok(model='gemma', bos='no', eos='sticky')`,
    which the weights were trained with): ASCII lower-casing, the file's pieces without its own special
    tokens, the EOS appended, padded with the tokenizer's pad id. The EOS and pad tokens are the ones
    tokenizer_config.json names (Gemma's <eos> and <pad> by default)."""

    rule = "gemma"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        data = read_tokenizer_file(self.path, "a tokenizer")
        try:
            import tokenizers
        except ImportError:
            raise FastViTError(f"{self.path}: reading a tokenizer.json needs the tokenizers package: "
                               f"pip install 'fastvit-jax[hub]' (or pip install tokenizers)") from None
        config_file = self.path.with_name("tokenizer_config.json")
        try:
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            self.tok = tokenizers.Tokenizer.from_str(data.decode())
        except Exception as e:  # json's errors, and tokenizers raises plain Exception
            raise FastViTError(f"{self.path}: not a tokenizers tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        ids = {}
        for name, default in (("eos_token", "<eos>"), ("pad_token", "<pad>")):
            text = _special(config if isinstance(config, dict) else {}, name, default)
            ids[name] = self.tok.token_to_id(text)
            if ids[name] is None:
                raise FastViTError(f"{self.path}: no {name} {text!r} in the vocabulary (named by {config_file.name} "
                                   f"or Gemma's default)")
        self._eos, self._pad = ids["eos_token"], ids["pad_token"]
        self.sha256 = hashlib.sha256(data + json.dumps([self._eos, self._pad]).encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    def ids(self, text: str) -> list[int]:
        return list(self.tok.encode(ascii_lower(text), add_special_tokens=False).ids) + [self._eos]


def open_tokenizer(path: str | Path, rule: str = "big_vision"):
    """The tokenizer in a file: a tokenizers tokenizer.json (SigLIP 2's transformers folders), else a
    SentencePiece model read with `rule`."""
    return JsonTokenizer(path) if str(path).endswith(".json") else Tokenizer(path, rule=rule)
