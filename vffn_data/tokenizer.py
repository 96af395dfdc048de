"""Loading tokenizers for preprocessing and training: a sentencepiece ``.model`` or an HF ``tokenizer.json``.

Both are wrapped in one small interface (``vocab_size``, ``eod``, ``bos``, ``pad``, ``encode``, ``decode``,
``unique_identifiers``) that is also what megatron-core's ``GPTDataset`` asks of ``config.tokenizer``.
No torch/transformers import here: preprocessing workers load this module.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Names tried, in order, when an HF tokenizer's config does not say which token is which.
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


class TokenizerError(ValueError):
    """The tokenizer path or files are unusable; the message says what to fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """Common interface. ``encode`` adds no BOS/EOS: document separation is the caller's job (EOD)."""

    kind = "base"
    path: Path
    vocab_size: int
    eod: int
    bos: int | None
    pad: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    # megatron's tokenizer naming, so this object can be passed where megatron expects its own.
    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids) -> str:
        return self.decode(ids)

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def unique_identifiers(self) -> dict:
        # Hash of the file, not just its path: retraining a tokenizer in place must invalidate
        # megatron's cached sample indices, while moving the file must not.
        if not hasattr(self, "_uid"):
            self._uid = {
                "class": type(self).__name__, "tokenizer_path": str(self.path),
                "sha256": _sha256(self.path), "vocab_size": self.vocab_size, "eod": self.eod,
            }
        return self._uid

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, vocab_size={self.vocab_size}, eod={self.eod})"


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(path).resolve()
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.path}: not a valid sentencepiece model ({e})") from e
        self.vocab_size = self.sp.get_piece_size()
        if self.sp.eos_id() < 0:
            raise TokenizerError(
                f"{self.path}: the sentencepiece model has no EOS piece, which is needed as end-of-document "
                "token; retrain it with an eos id (tools/train_tokenizer.py sets one by default)")
        self.eod = self.sp.eos_id()
        self.bos = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.pad = self.sp.pad_id() if self.sp.pad_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread: parallelism comes from the preprocessing worker processes.
        return self.sp.encode(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as a dict
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """A ``tokenizers`` tokenizer.json, special tokens taken from tokenizer_config.json /
    special_tokens_map.json next to it (falling back to well-known names)."""

    kind = "huggingface"

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer as _HFTok

        self.path = Path(path).resolve()
        try:
            self.tok = _HFTok.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise TokenizerError(f"{self.path}: not a valid tokenizer.json ({e})") from e
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        declared = self._declared_specials(self.path.parent)
        if declared.get("split_special_tokens"):
            self.tok.encode_special_tokens = True  # what AutoTokenizer does for this config
        self.eod = self._resolve("eos_token", declared, _EOS_NAMES)
        if self.eod is None:
            raise TokenizerError(
                f"{self.path}: cannot tell which token ends a document: no eos_token in tokenizer_config.json "
                f"or special_tokens_map.json and none of {list(_EOS_NAMES)} in the vocabulary; add "
                '"eos_token": "<your EOS>" to tokenizer_config.json next to it')
        self.bos = self._resolve("bos_token", declared, _BOS_NAMES)
        self.pad = self._resolve("pad_token", declared, _PAD_NAMES)

    @staticmethod
    def _declared_specials(directory: Path) -> dict:
        out: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # config wins
            f = directory / name
            if f.is_file():
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise TokenizerError(f"{f}: invalid JSON ({e})") from e
                for key in ("eos_token", "bos_token", "pad_token"):
                    if _token_name(data.get(key)):
                        out[key] = _token_name(data[key])
                if name == "tokenizer_config.json":
                    out["split_special_tokens"] = bool(data.get("split_special_tokens", False))
        return out

    def _resolve(self, key, declared, fallbacks) -> int | None:
        if key in declared:
            tid = self.tok.token_to_id(declared[key])
            if tid is None:
                raise TokenizerError(f"{self.path}: {key} {declared[key]!r} is not in the vocabulary")
            return tid
        for name in fallbacks:
            tid = self.tok.token_to_id(name)
            if tid is not None:
                return tid
        return None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])


def resolve_tokenizer_file(path: str | os.PathLike) -> Path:
    """The file a tokenizer path names: a ``.model``, a ``tokenizer.json``, or a directory holding
    either (the sentencepiece model preferred: it is the original the HF files were derived from)."""
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.model",):
            if (p / name).is_file():
                return p / name
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return models[0]
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
        raise TokenizerError(
            f"{p}: no tokenizer found: expected tokenizer.model (sentencepiece) or tokenizer.json (Hugging Face) "
            "in this directory; train one with tools/train_tokenizer.py --output-dir DIR")
    if not p.exists():
        raise TokenizerError(f"{p}: no such tokenizer file or directory")
    return p


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a sentencepiece ``.model``, an HF ``tokenizer.json``, or a directory containing either."""
    f = resolve_tokenizer_file(path)
    if f.suffix == ".json":
        return HFTokenizer(f)
    return SentencePieceTokenizer(f)
