"""Helpers for tools/bench_preprocess.py: sized inputs from the bundled corpus, and the peak memory
of a whole process tree (the preprocessing parent plus its worker processes)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .bundled import iter_documents


def build_repeated_corpus(path: Path, megabytes: float) -> int:
    """JSON Lines of the bundled corpus repeated until ``megabytes`` (1e6 bytes); returns docs written.
    Repetitions get a distinct id so nothing could deduplicate them."""
    docs = [d["text"] for d in iter_documents()]
    target, size, n = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            for text in docs:
                line = json.dumps({"id": n, "text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                n += 1
                if size >= target:
                    break
    return n


def run_measured(cmd: list[str], interval: float = 0.02) -> dict:
    """Run ``cmd``; poll the memory of it and all its descendants. Returns rc, wall seconds, and the
    peaks of the summed PSS and the summed RSS. PSS (proportional set size) splits shared pages among
    the processes sharing them, so a just-forked child (spawn forks, then execs) or shared libraries
    are not counted twice; summed RSS is an upper bound that does double count them."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peak_pss = peak_rss = peak_procs = 0
    while proc.poll() is None:
        pss = rss = procs = 0
        try:
            tree = [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
            procs += 1
        if pss > peak_pss:
            peak_pss, peak_procs = pss, procs
        peak_rss = max(peak_rss, rss)
        time.sleep(interval)
    out, err = proc.communicate()
    return {"rc": proc.returncode, "wall_s": time.monotonic() - start, "peak_pss": peak_pss, "peak_rss": peak_rss,
            "processes_at_peak": peak_procs, "stdout": out, "stderr": err}
