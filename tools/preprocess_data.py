#!/usr/bin/env python
"""Tokenize a corpus into megatron-core indexed datasets ({output-prefix}_{key}_document.bin/.idx).

Flag names follow Megatron-LM's tools/preprocess_data.py so existing commands carry over.
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from vffn_data.corpus import TXT_MODES  # noqa: E402  (light import: no torch before argument parsing)

EPILOG = """\
inputs: files, directories (searched recursively) or globs, in the order given (files of a directory
  sorted by path): .jsonl / .json (JSON Lines, one object per line), .jsonl.gz / .json.gz, .txt /
  .txt.gz, .parquet (read with `datasets`, streaming), and datasets.save_to_disk directories
  (memory-mapped; --split picks the split of a DatasetDict).
bad input (malformed JSON, invalid UTF-8, missing key, non-string value, empty text, truncated or
  corrupt gzip): skipped and counted by reason, the first few reported as file:line, exit 0 with
  the summary. With --strict: stop at the first one, print file:line and the fix, exit 1, write nothing.
outputs are written under temporary names and renamed at the end: an interrupted run (Ctrl-C,
  crash) never leaves a .bin/.idx pair that looks complete, and an existing pair is replaced only
  by a finished one. Token dtype: uint16 for vocabularies below 65,500 ids, else int32.
exit status: 0 done, 1 bad data (--strict) or nothing valid, 2 usage or unusable input/tokenizer,
  130 interrupted.
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
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-model", required=True, metavar="PATH",
                   help="sentencepiece .model, HF tokenizer.json, or a directory with either (the .model is "
                        "preferred when both are present)")
    g.add_argument("--append-eod", action="store_true",
                   help="append the tokenizer's EOS id (end of document) to every document (megatron GPT needs it)")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, metavar="PREFIX",
                   help="writes PREFIX_{key}_document.bin and .idx (parent directories are created)")
    g.add_argument("--summary-json", metavar="FILE", help="also write the final summary as JSON to FILE")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1,
                   help="tokenizer worker processes (default: 1, in-process); throughput scales with cores")
    g.add_argument("--batch-mb", type=float, default=1.0,
                   help="input MB per work unit (default: 1); memory in use is about 4 x workers x this")
    g.add_argument("--log-interval", type=float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default: 30)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from vffn_data.corpus import InputError
    from vffn_data.preprocess import NoDocumentsError, PreprocessConfig, StrictModeError, preprocess
    from vffn_data.tokenizer import TokenizerError

    # SIGTERM (a scheduler stopping the job) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = PreprocessConfig(
        inputs=args.input, tokenizer_model=args.tokenizer_model, output_prefix=args.output_prefix,
        json_keys=args.json_keys, workers=args.workers, append_eod=args.append_eod, strict=args.strict,
        txt_mode=args.txt_mode, split=args.split, batch_bytes=max(1, int(args.batch_mb * (1 << 20))),
        progress=not args.no_progress, log_interval=args.log_interval, summary_json=args.summary_json)
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
