"""Counting what preprocessing did, showing progress, and printing the final summary."""
from __future__ import annotations

import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .corpus import FILE_SKIPS, REASONS, Problem, SkippedFile, Source

EXAMPLES_PER_REASON = 3


@dataclass
class Stats:
    sources: list[Source]
    docs: int = 0
    tokens: int = 0
    nbytes: int = 0  # input bytes (decompressed text/JSON) read
    blank: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    start: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    skipped_files: list[SkippedFile] = field(default_factory=list)  # passed over by the directory search

    def add(self, n_docs: int, n_tokens: int, nbytes: int, blank: int, problems: list[Problem]) -> None:
        self.docs += n_docs
        self.tokens += n_tokens
        self.nbytes += nbytes
        self.blank += blank
        for p in problems:
            self.skipped[p.reason] += 1
            if len(self.examples[p.reason]) < EXAMPLES_PER_REASON:
                self.examples[p.reason].append(self.describe(p))

    def describe(self, p: Problem) -> str:
        where = self.sources[p.source].where(p.loc)
        return f"{where}: {p.reason}: {p.detail}" if p.detail else f"{where}: {p.reason}"

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rates(self) -> dict:
        s = max(self.seconds or self.elapsed(), 1e-9)
        return {"docs_per_s": self.docs / s, "tokens_per_s": self.tokens / s, "mb_per_s": self.nbytes / 1e6 / s}

    def as_dict(self) -> dict:
        return {
            "documents_written": self.docs, "tokens": self.tokens, "input_bytes": self.nbytes,
            "blank_lines_ignored": self.blank, "skipped": dict(self.skipped),
            "skipped_examples": {k: v for k, v in self.examples.items()},
            "skipped_files": [{"path": sk.path, "reason": sk.reason} for sk in self.skipped_files],
            "seconds": round(self.seconds or self.elapsed(), 3), **{k: round(v, 2) for k, v in self.rates().items()},
        }

    def report(self, outputs: list[str], out=None) -> None:
        r = self.rates()
        lines = [
            "preprocessing summary",
            f"  documents written  {self.docs:,}",
            f"  tokens             {self.tokens:,}",
            f"  input              {self.nbytes / 1e6:,.2f} MB in {len(self.sources)} file(s)",
            f"  time               {self.seconds:,.1f} s  ({r['docs_per_s']:,.0f} docs/s, "
            f"{r['tokens_per_s']:,.0f} tokens/s, {r['mb_per_s']:,.2f} MB/s)",
        ]
        total_skipped = sum(self.skipped.values())
        clean = not total_skipped and not self.skipped_files
        lines.append(f"  skipped            {total_skipped:,}" + (" (no bad input)" if clean else ""))
        for reason, n in self.skipped.most_common():
            lines.append(f"    {reason:<16} {n:,}  -- {REASONS.get(reason, '')}")
            lines += [f"      e.g. {ex}" for ex in self.examples[reason]]
        if self.skipped_files:
            lines.append(f"  skipped files      {len(self.skipped_files):,} (found in input folders, not read)")
            by_reason: dict = defaultdict(list)
            for sk in self.skipped_files:
                by_reason[sk.reason].append(sk.path)
            for reason, paths in by_reason.items():
                lines.append(f"    {reason:<16} {len(paths):,}  -- {FILE_SKIPS[reason]}")
                lines += [f"      e.g. {p}" for p in paths[:EXAMPLES_PER_REASON]]
        if self.blank:
            lines.append(f"  blank lines ignored {self.blank:,}")
        for path in outputs:
            lines.append(f"  wrote              {path} ({os.path.getsize(path) / 1e6:,.2f} MB)")
        print("\n".join(lines), file=out or sys.stdout, flush=True)


class Progress:
    """A tqdm bar on a terminal; a log line every ``interval`` seconds otherwise (CI logs, files)."""

    def __init__(self, total_bytes: int, stats: Stats, enabled: bool = True, interval: float = 30.0):
        self.stats, self.interval, self.last = stats, interval, time.monotonic()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            # No tqdm rate: it would be on-disk (compressed) bytes; the postfix has the real rates.
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preprocess", file=sys.stderr,
                            dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def _postfix(self) -> str:
        r = self.stats.rates()
        return (f"{self.stats.docs:,} docs, {r['docs_per_s']:,.0f} docs/s, {r['tokens_per_s']:,.0f} tok/s, "
                f"{r['mb_per_s']:.2f} MB/s, skipped {sum(self.stats.skipped.values()):,}")

    def update(self, disk_bytes: int) -> None:
        if self.bar is not None:
            self.bar.update(disk_bytes)
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            print(f"[preprocess {self.stats.elapsed():,.0f}s] {self._postfix()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
