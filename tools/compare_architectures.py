"""Architecture comparison through the real trainer, in the paper's two protocols (arXiv 2512.14531).

    python tools/compare_architectures.py                       # --protocol continued (the paper's Table 1)
    python tools/compare_architectures.py --protocol scratch    # every model from scratch (the paper's Table 5)

* continued (default): one dense model is pretrained for --base-steps ("Base"), then every method is continued
  from that checkpoint (``checkpoint.init_from``: upcycled, fresh optimizer and LR schedule) for --steps more with
  the same data order: 1 loop (dense, continued), k-loop for each --kloops, MoE (the paper's: shared expert + 8
  experts of F/8, top-2; upcycled from the dense FFN) and VersatileFFN. Base itself is only evaluated. The seed
  varies what is random in the continued phase: the routers' initialisation and VersatileFFN's Gumbel noise. Dense
  and k-loop continuations have no random state (same weights, same data), so they run once and serve every seed.
* scratch: every method from its own random initialisation for --steps, once per seed.

Every run is ``python -m pretrain --config <config> model.arch=...`` (one process each, ``--jobs`` at a time, one
thread each). Writes <output-dir>/compare_<protocol>.md (its table, paired differences, pictures, command, wall
time), the <protocol>_*.png pictures, and <output-dir>/compare.md: both protocols' reports (whichever exist) after
the paper's own numbers. The analysis lives in tools/compare_report.py.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

PROTOCOLS = ("continued", "scratch")
BASE_ARCHS = ("dense", "kloop", "moe", "vffn")  # --archs names; kloop expands to one run per --kloops value
SEED_FREE = ("dense", "kloop")  # continued from the same weights with no random state: one run serves every seed
SAMPLE_TEXT = ("The old lighthouse keeper climbed the stairs every night, although nobody had seen a ship "
               "near the island for years.")


class CompareError(ValueError):
    pass


def child_env() -> dict:
    """Environment for a trainer / plot subprocess: one BLAS/OpenMP thread (two runs, or other work, on 2
    cores with default threading oversubscribe the CPU: a step becomes ~10x slower), and no process-group
    variables (this process's own single-process group set MASTER_PORT, which the child would collide with)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _int_list(p, flag: str, text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not out:
        p.error(f"{flag} is empty")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=PROTOCOLS, default="continued",
                   help="continued: dense base, then every method continued from it (default); scratch: from scratch")
    p.add_argument("--config", default=str(REPO / "configs" / "compare_tiny.yaml"), help="base run config")
    p.add_argument("--steps", type=int, default=800,
                   help="optimizer steps per compared run (continued: the extra steps after the base)")
    p.add_argument("--base-steps", type=int, default=None, help="continued: steps of the dense base (default --steps)")
    p.add_argument("--base-seed", type=int, default=None, help="continued: the base's seed (default: the config's)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the compared runs")
    p.add_argument("--kloops", default="2,4", help="k of the k-loop baselines (the paper: 2,4,6)")
    p.add_argument("--archs", default=",".join(BASE_ARCHS), help=f"comma-separated subset of {','.join(BASE_ARCHS)}")
    p.add_argument("--output-dir", default=str(REPO / "results"), help="where the reports and PNGs go")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "compare"), help="run directories (checkpoints, TB)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    p.add_argument("--eval-interval", type=int, default=None, help="validation every N steps (default steps/16)")
    p.add_argument("--sample-text", default=SAMPLE_TEXT, help="sentence for the per-token depth picture")
    p.add_argument("--reuse", action="store_true", help="skip runs whose final checkpoint already exists")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="extra trainer overrides for every run")
    a = p.parse_args(argv)
    a.arch_names = [x.strip() for x in a.archs.split(",") if x.strip()]
    bad = [x for x in a.arch_names if x not in BASE_ARCHS]
    if bad or not a.arch_names:
        p.error(f"--archs: unknown {bad}; choose from {', '.join(BASE_ARCHS)}")
    a.seed_list = _int_list(p, "--seeds", a.seeds)
    a.kloop_list = _int_list(p, "--kloops", a.kloops)
    if any(k < 2 for k in a.kloop_list):
        p.error("--kloops: every k must be >= 2 (k=1 is the dense model)")
    if a.steps < 2 or (a.base_steps is not None and a.base_steps < 2):
        p.error("--steps and --base-steps must be >= 2")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    a.base_steps = a.base_steps or a.steps
    return a


# ------------------------------------------------------------------------------------------ plan
def arch_keys(a) -> list[str]:
    """The compared models, in report order: dense, kloop<k>..., moe, vffn (as selected)."""
    keys = []
    for name in BASE_ARCHS:
        if name in a.arch_names:
            keys += [f"kloop{k}" for k in a.kloop_list] if name == "kloop" else [name]
    return keys


def arch_overrides(key: str) -> list[str]:
    if key.startswith("kloop"):
        return ["model.arch=kloop", f"kloop.loops={int(key[5:])}"]
    return [f"model.arch={key}"]


def plan(a, cfg) -> list[dict]:
    """Every run of the protocol: dicts with name, arch key, seed, steps, phase and trainer overrides."""
    work = Path(a.work_dir) / a.protocol
    runs = []
    if a.protocol == "continued":
        base_seed = cfg.seed if a.base_seed is None else a.base_seed
        runs.append({"name": "base", "arch": "dense", "seed": base_seed, "steps": a.base_steps, "phase": "base",
                     "overrides": arch_overrides("dense"), "dir": work / "base"})
    init = [f"checkpoint.init_from={work / 'base' / 'checkpoints'}", "schedule.eval_at_start=true"]
    for i, seed in enumerate(a.seed_list):
        for key in arch_keys(a):
            seed_free = a.protocol == "continued" and key.rstrip("0123456789") in SEED_FREE
            if seed_free and i > 0:
                continue
            name = f"{key}_s{seed}"
            runs.append({"name": name, "arch": key, "seed": seed, "steps": a.steps, "phase": a.protocol,
                         "seed_free": seed_free, "dir": work / name,
                         "overrides": arch_overrides(key) + (init if a.protocol == "continued" else [])})
    return runs


def eval_interval(a, steps: int) -> int:
    return a.eval_interval or max(1, steps // 16)


def trainer_cmd(a, r: dict) -> list[str]:
    return [sys.executable, "-m", "pretrain", "--config", a.config, *r["overrides"], f"seed={r['seed']}",
            f"run_name={r['name']}", f"output_dir={r['dir']}", f"schedule.train_steps={r['steps']}",
            f"schedule.eval_interval={eval_interval(a, r['steps'])}", "checkpoint.resume=none",
            f"data.cache_dir={os.path.join(a.work_dir, 'data_cache')}", "logging.progress=none", *a.overrides]


def _final_checkpoint(r: dict) -> Path:
    return r["dir"] / "checkpoints" / f"step_{r['steps']:08d}"


def run_all(a, runs: list[dict]) -> None:
    """Run the trainer for every planned run, ``--jobs`` at a time (the base first: the others start from it);
    record each run's wall time."""
    env = child_env()
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < a.jobs:
            if pending[0]["phase"] != "base" and any(r["phase"] == "base" for r, *_ in active):
                break  # continued runs wait for the base checkpoint
            r = pending.pop(0)
            out = r["dir"]
            if a.reuse and _final_checkpoint(r).is_dir():
                r["reused"] = True
                wall = out / "wall_seconds.txt"
                r["wall"] = float(wall.read_text()) if wall.is_file() else math.nan
                continue
            out.mkdir(parents=True, exist_ok=True)
            for old in (out / "tensorboard").glob("events.*") if (out / "tensorboard").is_dir() else []:
                old.unlink()  # a fresh run: old event files would mix into the curves
            log = open(out / "train.log", "w")
            cmd = trainer_cmd(a, r)
            print(f"[compare] start {r['name']}: {shlex.join(cmd[1:])}", flush=True)
            active.append((r, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                           time.time(), log))
        time.sleep(1)
        for item in list(active):
            r, proc, t0, log = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log.close()
            r["wall"] = time.time() - t0
            (r["dir"] / "wall_seconds.txt").write_text(f"{r['wall']:.1f}\n")
            if proc.returncode != 0:
                for _, p2, _, _ in active:
                    p2.terminate()
                tail = (r["dir"] / "train.log").read_text()[-3000:]
                raise CompareError(f"run {r['name']} failed (exit {proc.returncode}); log tail:\n{tail}")
            print(f"[compare] done {r['name']} in {r['wall']:.0f} s", flush=True)


def main(argv=None) -> int:
    t0 = time.time()
    a = parse_args(argv)
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR (the trainer runs inherit it), before DeepSpeed is imported
    from pretrain.config import ConfigError, load_config

    try:
        cfg = load_config(a.config, list(a.overrides))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    a.config = os.path.abspath(a.config)
    a.work_dir = os.path.abspath(a.work_dir)
    runs = plan(a, cfg)
    cmd = "python tools/compare_architectures.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    import compare_report

    try:
        run_all(a, runs)
        md = compare_report.write_reports(a, runs, t0, cmd)
    except (CompareError, compare_report.ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
