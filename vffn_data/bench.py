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
    """Run ``cmd``; poll the summed RSS of it and all its descendants. Returns rc, wall seconds, the
    peak and the number of processes at the peak.

    Why RSS and how: PSS would split library pages with *other* programs on the machine using the same
    torch libraries, so it drifts with whatever else runs. Summed RSS counts each process's shared
    libraries in full (an upper bound), and a child caught between fork and exec (spawn starts workers
    that way) still maps all of its parent's pages; such children, recognisable by the parent's
    command line, are skipped because those pages are the parent's, not new memory."""
    import psutil

    import resource

    def cpu() -> float:  # CPU seconds of finished descendants: the run and the workers it joined
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0 = cpu()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peak = peak_procs = 0
    while proc.poll() is None:
        total = procs = 0
        try:
            tree = [parent] + parent.children(recursive=True)
            parent_cmd = parent.cmdline()
        except psutil.NoSuchProcess:
            break
        for i, p in enumerate(tree):
            try:
                if i and p.cmdline() == parent_cmd:
                    continue
                total += p.memory_info().rss
                procs += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        if total > peak:
            peak, peak_procs = total, procs
        time.sleep(interval)
    out, err = proc.communicate()
    return {"rc": proc.returncode, "wall_s": time.monotonic() - start, "cpu_s": cpu() - cpu0, "peak_rss": peak,
            "processes_at_peak": peak_procs, "stdout": out, "stderr": err}
