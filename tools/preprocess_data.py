#!/usr/bin/env python
"""Tokenize a corpus into megatron-core indexed datasets ({output-prefix}_{key}_document.bin/.idx).

Flag names follow Megatron-LM's tools/preprocess_data.py: its flags are accepted where they can be
honoured, the others are refused by name with the reason and the fix (see "Megatron-LM flags" below).
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from vffn_data.corpus import TXT_MODES  # noqa: E402  (light import: no torch before argument parsing)

EPILOG = """\
inputs: files, directories (searched recursively, symlinked folders followed once) or globs, in the
  order given (files of a directory sorted by path): .jsonl / .json (JSON Lines, one object per
  line), .txt, each optionally compressed .gz / .xz / .bz2 (.zst with the optional zstandard
  package, else the file is skipped and counted), .parquet (read with `datasets`, streaming), and
  datasets.save_to_disk directories (memory-mapped; --split picks the split of a DatasetDict).
  Files a directory search does not read (dotfiles, hidden folders, other types, broken links) are
  listed in the summary as skipped files.
bad input (malformed or too deeply nested JSON, invalid UTF-8, missing key, non-string value, empty
  text, a document over --max-doc-mb, truncated or corrupt gzip/xz/bz2/zst, unreadable Parquet):
  skipped and counted by reason, the first few reported as file:line, exit 0 with the summary. With --strict: stop at the first one, print file:line and the fix, exit 1, write nothing.
outputs are written under temporary names and renamed at the end: an interrupted run (Ctrl-C,
  crash) never leaves a .bin/.idx pair that looks complete, and an existing pair is replaced only
  by a finished one. Token dtype: uint16 for vocabularies below 65,500 ids, else int32.
Megatron-LM flags: --tokenizer-type, --partitions, --keep-newlines, --keep-sequential-samples and
  --dataset-impl mmap are accepted (see their help). Refused with the reason, exit 2: --split-sentences
  and --lang (NLTK sentence splitting), --vocab-file / --merge-file / --vocab-size / --vocab-extra-ids
  (GPT-2 BPE, WordPiece, NullTokenizer, T5 sentinels: convert the tokenizer to a tokenizer.json),
  tiktoken and multimodal tokenizer options, --find-optimal-num-workers and its options,
  --legacy-tokenizer. Every tokenizer type encodes the same way: the tokenizer's pieces, no BOS/EOS
  added, --append-eod appends its EOS (Megatron's GPTSentencePieceTokenizer does exactly this; its
  SentencePieceTokenizer, Llama2Tokenizer and HuggingFaceTokenizer add other special ids: a note says
  which). Megatron's --log-interval counts documents; here it is seconds.
exit status: 0 done, 1 bad data (--strict) or nothing valid, 2 usage or unusable input/tokenizer
  (including a refused Megatron flag), 130 interrupted.
example:
  python tools/preprocess_data.py --input data/corpus/shakespeare.jsonl.gz \\
      --tokenizer-model runs/quickstart/tokenizer --output-prefix runs/quickstart/data/corpus \\
      --append-eod --workers 2
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="one or more files, directories or globs (see below)")
    g.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY",
                   help="fields to tokenize, one output pair per key (default: text). A record with any "
                        "key missing/invalid is skipped for all keys, so the outputs stay aligned")
    g.add_argument("--txt-mode", choices=TXT_MODES, default="document",
                   help="how .txt files split into documents: the whole file (default), blank-line "
                        "separated paragraphs, or lines")
    g.add_argument("--split", default="train", help="split to read from a saved DatasetDict (default: train)")
    g.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    g.add_argument("--max-doc-mb", type=float, default=64.0, metavar="MB",
                   help="a document (JSON line, text line/paragraph/file, Parquet value) larger than this is "
                        "skipped and counted, never read whole (MiB; default: 64; memory for reading is about twice it)")
    g.add_argument("--keep-newlines", action="store_true",
                   help="accepted for Megatron-LM commands; always the case here: a document's text reaches the "
                        "tokenizer as it is, newlines inside it included (Megatron changes the text only with "
                        "--split-sentences, which is not supported)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-model", required=True, metavar="PATH",
                   help="sentencepiece .model, HF tokenizer.json, or a directory with either (the .model is "
                        "preferred when both are present)")
    g.add_argument("--tokenizer-type", metavar="TYPE",
                   help="Megatron-LM's tokenizer type, checked against --tokenizer-model: SentencePieceTokenizer, "
                        "GPTSentencePieceTokenizer or Llama2Tokenizer (a sentencepiece .model, or a directory "
                        "with one), HuggingFaceTokenizer (a tokenizer.json, or a directory with one: it is used "
                        "even when a .model sits next to it). Optional: without it the file's kind decides. "
                        "Other Megatron types are refused with the way to convert")
    g.add_argument("--append-eod", action="store_true",
                   help="append the tokenizer's EOS id (end of document) to every document (megatron GPT needs it)")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, metavar="PREFIX",
                   help="writes PREFIX_{key}_document.bin and .idx (parent directories are created)")
    g.add_argument("--summary-json", metavar="FILE", help="also write the final summary as JSON to FILE")
    g.add_argument("--dataset-impl", metavar="mmap",
                   help="accepted for old Megatron-LM commands: mmap, the only format of megatron-core (written here)")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1,
                   help="tokenizer worker processes (default: 1, in-process); throughput scales with cores")
    g.add_argument("--partitions", type=int, default=1, metavar="N",
                   help="accepted for Megatron-LM commands: whatever N, one merged dataset is written (as "
                        "Megatron's merged output) in input order, and no partition files; parallelism comes "
                        "from --workers")
    g.add_argument("--keep-sequential-samples", action="store_true",
                   help="accepted for Megatron-LM commands; always the case here: documents keep input order")
    g.add_argument("--batch-mb", type=float, default=1.0,
                   help="input MB per work unit (default: 1); memory in use is about 4 x workers x this")
    g.add_argument("--log-interval", type=float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default: 30)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from vffn_data import megatron_compat

    argv = list(sys.argv[1:] if argv is None else argv)
    refused = megatron_compat.refused_flag(argv)
    if refused:  # before argparse, which would only say "unrecognized arguments"
        print(f"error: {refused[0]} (Megatron-LM flag) refused: {refused[1]}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    from vffn_data.corpus import InputError
    from vffn_data.tokenizer import TokenizerError

    if not args.max_doc_mb > 0:
        print(f"error: --max-doc-mb {args.max_doc_mb}: must be > 0", file=sys.stderr)
        return 2
    if args.partitions < 1:
        print(f"error: --partitions {args.partitions}: must be >= 1", file=sys.stderr)
        return 2
    try:
        megatron_compat.check_dataset_impl(args.dataset_impl)
        tokenizer_model = megatron_compat.tokenizer_path_for_type(args.tokenizer_type, args.tokenizer_model)
    except TokenizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tokenizer_type in megatron_compat.ENCODING_NOTES:
        print(f"note: --tokenizer-type {args.tokenizer_type}: {megatron_compat.ENCODING_NOTES[args.tokenizer_type]}",
              file=sys.stderr)
    from vffn_data.preprocess import NoDocumentsError, PreprocessConfig, StrictModeError, preprocess

    # SIGTERM (a scheduler stopping the job) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = PreprocessConfig(
        inputs=args.input, tokenizer_model=tokenizer_model, output_prefix=args.output_prefix,
        json_keys=args.json_keys, workers=args.workers, append_eod=args.append_eod, strict=args.strict,
        txt_mode=args.txt_mode, split=args.split, batch_bytes=max(1, int(args.batch_mb * (1 << 20))),
        progress=not args.no_progress, log_interval=args.log_interval, summary_json=args.summary_json,
        max_doc_bytes=max(1, int(args.max_doc_mb * (1 << 20))))
    try:
        stats, outputs = preprocess(cfg)
    except (InputError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StrictModeError, NoDocumentsError) as e:
        print(f"error: {e}\nno output written.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: temporary files removed, no output written.", file=sys.stderr)
        return 130
    except OSError as e:  # e.g. an output directory that is not writable, a full disk
        print(f"error: {e}\nno output written.", file=sys.stderr)
        return 1
    stats.report(outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
