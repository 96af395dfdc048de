"""Training a sentencepiece tokenizer and exporting it as Hugging Face tokenizer files.

Training settings are chosen so that the HF export can reproduce sentencepiece exactly: identity
normalisation (no NFKC table to emulate), no whitespace collapsing (also keeps code indentation), no
dummy "▁" prefix by default, and byte fallback (no <unk> on unseen characters). ``export_hf`` then builds the
same model with the ``tokenizers`` library; ``check_hf_matches`` verifies it token for token.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Every file a training writes: a new training removes those it did not write this time, so no file
# of an older tokenizer (e.g. a tokenizer.json beside a new --no-hf tokenizer.model) survives it.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.vocab") + HF_FILES
# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class TrainerOptions:
    vocab_size: int = 32000
    model_type: str = "bpe"  # or "unigram"
    character_coverage: float = 1.0
    byte_fallback: bool = True
    unk_piece: str = "<unk>"
    bos_piece: str | None = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str | None = "<pad>"
    user_defined_symbols: list[str] = field(default_factory=list)
    split_digits: bool = True
    # No "▁" before the first word (like GPT-2/tiktoken): a dummy prefix cannot be reproduced by HF
    # after user-defined symbols, and it buys little for pretraining on whole documents.
    add_dummy_prefix: bool = False
    input_sentence_size: int = 2_000_000
    max_sentence_length: int = 16384
    num_threads: int = os.cpu_count() or 1
    seed: int = 1234
    verbose: bool = False


def iter_sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """sentencepiece trains on "sentences": feed non-empty lines. Whole documents would exceed
    max_sentence_length and be dropped silently; over-long lines are cut (at a space if possible)
    for the same reason, in pieces of at most max_bytes // 4 characters (<= max_bytes in UTF-8)."""
    limit = max(max_bytes // 4, 1)
    for text in texts:
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            if len(line) <= limit or len(line.encode("utf-8")) <= max_bytes:
                yield line
                continue
            start = 0  # indices, not repeated slicing: a megabyte-long line stays linear
            while len(line) - start > limit:
                cut = line.rfind(" ", start + 1, start + limit)
                cut = cut if cut > start else start + limit
                yield line[start:cut]
                start = cut
            if line[start:].strip():
                yield line[start:]


def train_sentencepiece(texts: Iterable[str], output_dir: str | os.PathLike, opts: TrainerOptions,
                        before_commit=None) -> Path:
    """Train on ``texts`` (documents); write ``output_dir/tokenizer.model`` (+ ``.vocab``) atomically.

    ``before_commit(tmp_dir)`` may add files next to the fresh model (the HF export) or raise to
    discard everything; all files are then moved into ``output_dir``, ``tokenizer.model`` last, so a
    present tokenizer.model means a complete directory. Known tokenizer files of an older training
    that this one did not write (TOKENIZER_FILES) are removed first, the old tokenizer.model first of all."""
    import sentencepiece as spm

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if opts.model_type not in ("bpe", "unigram"):
        raise ValueError(f"--model-type must be bpe or unigram, not {opts.model_type!r}")
    specials = [opts.unk_piece, opts.bos_piece, opts.eos_piece, opts.pad_piece]
    names = [s for s in specials if s is not None]
    if len(set(names)) != len(names) or set(names) & set(opts.user_defined_symbols):
        raise ValueError(f"special pieces must be distinct: {names + opts.user_defined_symbols}")
    ids = {}
    next_id = 0
    for key, piece in zip(("unk", "bos", "eos", "pad"), specials):
        if piece is None:
            ids[key] = -1
        else:
            ids[key] = next_id
            next_id += 1
    spm.set_random_generator_seed(opts.seed)
    # Train under a temporary prefix and rename: an interrupted run never leaves a half-written model.
    tmp_prefix = tempfile.mkdtemp(prefix=".sp-train-", dir=out)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter_sentences(texts, opts.max_sentence_length),
            model_prefix=os.path.join(tmp_prefix, "tokenizer"),
            model_type=opts.model_type, vocab_size=opts.vocab_size,
            character_coverage=opts.character_coverage, byte_fallback=opts.byte_fallback,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=opts.add_dummy_prefix,
            split_digits=opts.split_digits, allow_whitespace_only_pieces=True,
            unk_id=ids["unk"], bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"],
            unk_piece=opts.unk_piece, bos_piece=opts.bos_piece or "<s>", eos_piece=opts.eos_piece,
            pad_piece=opts.pad_piece or "<pad>",
            user_defined_symbols=opts.user_defined_symbols or [],
            input_sentence_size=opts.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=opts.max_sentence_length, num_threads=opts.num_threads,
            hard_vocab_limit=True, minloglevel=0 if opts.verbose else 2,
        )
        if before_commit is not None:
            before_commit(Path(tmp_prefix))
        names = sorted(os.listdir(tmp_prefix), key=lambda n: n == "tokenizer.model")  # .model last
        # The old tokenizer.model goes first: until the new one lands the folder reads as incomplete.
        for name in TOKENIZER_FILES:
            if (name == "tokenizer.model" or name not in names) and (out / name).is_file():
                os.unlink(out / name)
        for name in names:
            os.replace(os.path.join(tmp_prefix, name), out / name)
    finally:
        for name in os.listdir(tmp_prefix):
            os.unlink(os.path.join(tmp_prefix, name))
        os.rmdir(tmp_prefix)
    return out / "tokenizer.model"


def _load_proto(model_path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    return proto


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """sentencepiece BPE stores no merges: it merges the adjacent pair whose concatenation has the
    best score. The HF BPE equivalent lists, for every mergeable piece in score order, each split
    of it into two vocabulary pieces."""
    mergeable = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type in (_NORMAL, _USER_DEFINED)}
    merges = []
    for piece, (score, pid) in mergeable.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((-score, pid, mergeable[left][1], left, right))
    merges.sort()
    return [(m[3], m[4]) for m in merges]


def sp_to_hf(model_path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` that encodes like the sentencepiece model at ``model_path``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram

    proto = _load_proto(Path(model_path))
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    if ns.remove_extra_whitespaces:
        # Collapsing runs of spaces interacts with the dummy prefix in ways no HF normalizer chain
        # reproduces exactly; models trained by train_sentencepiece never set it.
        raise ValueError(f"{model_path}: models with remove_extra_whitespaces=true cannot be exported exactly; "
                         "retrain with tools/train_tokenizer.py")
    byte_fallback = ts.byte_fallback
    unk_piece = proto.pieces[ts.unk_id].piece
    if ts.model_type == 2:  # BPE
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = BPE(vocab=vocab, merges=_bpe_merges(proto), unk_token=unk_piece, fuse_unk=True,
                    byte_fallback=byte_fallback, dropout=None)
    elif ts.model_type == 1:  # unigram
        model = Unigram(vocab=[(p.piece, p.score) for p in proto.pieces], unk_id=ts.unk_id, byte_fallback=byte_fallback)
    else:
        raise ValueError(f"{model_path}: sentencepiece model type {ts.model_type} (word/char) is not supported")
    tok = Tokenizer(model)
    steps = []
    if ns.precompiled_charsmap:
        steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
    if ns.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if ns.escape_whitespaces:
        steps.append(normalizers.Replace(Regex(" "), "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " ")]
    if byte_fallback:
        dec += [decoders.ByteFallback(), decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    # Control pieces (<s>, </s>, <pad>) and <unk> are special (and kept as plain text in input, see
    # split_special_tokens). User-defined symbols are matched verbatim by sentencepiece, which is what
    # HF added tokens do. Known difference, only for models with a dummy prefix (not ours by default):
    # HF normalises each segment between added tokens alone, so it adds a "▁" after such a symbol.
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (_CONTROL, _UNKNOWN)])
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == _USER_DEFINED]
    if user:
        tok.add_tokens(user)
    return tok


def special_pieces(model_path: str | os.PathLike) -> dict[str, str | None]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else None  # noqa: E731
    return {"bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()),
            "unk_token": piece(sp.unk_id()), "pad_token": piece(sp.pad_id())}


def export_hf(model_path: str | os.PathLike, out_dir: str | os.PathLike, model_max_length: int | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for ``AutoTokenizer``.

    The HF tokenizer adds no BOS/EOS by default, like the pretraining data (documents separated by
    EOD only), so ``AutoTokenizer(...)(text).input_ids`` equals the sentencepiece encoding."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = sp_to_hf(model_path)
    specials = {k: v for k, v in special_pieces(model_path).items() if v is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # sentencepiece reads "</s>" in raw text as plain characters; without this, HF would turn it
        # into the EOS id and the two would disagree (and text could inject control tokens).
        "split_special_tokens": True,
        "model_max_length": model_max_length or 1_000_000_000_000_000_019_884_624_838_656,
        "vffn_source": {"sentencepiece_model": Path(model_path).name},
    }
    written = []
    for name, write in (
        ("tokenizer.json", lambda p: tok.save(str(p))),
        ("tokenizer_config.json", lambda p: p.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")),
        ("special_tokens_map.json", lambda p: p.write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")),
    ):
        tmp = out / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, out / name)
        written.append(out / name)
    return written


def check_hf_matches(model_path, tokenizer_json, texts: Iterable[str], limit: int = 5) -> list[str]:
    """Encode ``texts`` with both; return up to ``limit`` descriptions of mismatches (empty: identical)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    hf = Tokenizer.from_file(str(tokenizer_json))
    hf.encode_special_tokens = True  # what split_special_tokens in tokenizer_config.json asks of AutoTokenizer
    problems = []
    for n, text in enumerate(texts):
        a = sp.encode(text)
        b = hf.encode(text, add_special_tokens=False).ids
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(f"text #{n}: first difference at token {k}: sentencepiece {sp.id_to_piece(a[k:k + 4]) if k < len(a) else []} "
                            f"vs tokenizer.json {[hf.id_to_token(i) for i in b[k:k + 4]]}")
            if len(problems) >= limit:
                break
    return problems
