"""Small-scale comparison of FFN blocks through the real trainer: dense, k-loop (k=2, k=D), MoE, VersatileFFN.

    python tools/compare_architectures.py --steps 400 --seeds 1,2 --output-dir results

Every run is ``python -m pretrain --config <config> model.arch=...`` (one process, run sequentially or
``--jobs`` at a time) with the same data order (data.seed fixed), token budget and schedule; the model seed
varies. dense and vffn get every seed in --seeds, the other archs the first one (--all-seeds: every arch).
Writes <output-dir>/compare.md (table + command + wall time) and PNGs read back from the runs' TensorBoard
scalars; the sample-sentence picture comes from tools/plot_routing.py on the first vffn run's checkpoint.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ARCHS = ("dense", "kloop2", "kloopD", "moe", "vffn")
MULTI_SEED = ("dense", "vffn")  # the seed-to-seed spread is measured on these
SAMPLE_TEXT = ("The old lighthouse keeper climbed the stairs every night, although nobody had seen a ship "
               "near the island for years.")
LABELS = {"dense": "dense", "kloop2": "k-loop (k=2)", "kloopD": "k-loop (k=D)", "moe": "MoE", "vffn": "VersatileFFN"}


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "compare_tiny.yaml"), help="base run config")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (same token budget for all)")
    p.add_argument("--seeds", default="1,2", help="comma-separated model seeds (dense and vffn get all)")
    p.add_argument("--all-seeds", action="store_true", help="run every arch with every seed")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    p.add_argument("--output-dir", default=str(REPO / "results"), help="where compare.md and the PNGs go")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "compare"), help="run directories (checkpoints, TB)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (1 thread each)")
    p.add_argument("--eval-interval", type=int, default=None, help="validation every N steps (default steps/16)")
    p.add_argument("--sample-text", default=SAMPLE_TEXT, help="sentence for the per-token depth picture")
    p.add_argument("--reuse", action="store_true", help="skip runs whose final checkpoint already exists")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="extra trainer overrides for every run")
    a = p.parse_args(argv)
    archs = [x.strip() for x in a.archs.split(",") if x.strip()]
    bad = [x for x in archs if x not in ARCHS]
    if bad or not archs:
        p.error(f"--archs: unknown {bad}; choose from {', '.join(ARCHS)}")
    try:
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {a.seeds!r}")
    if not seeds:
        p.error("--seeds is empty")
    if a.steps < 2:
        p.error("--steps must be >= 2")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    a.arch_list, a.seed_list = archs, seeds
    return a


def run_name(arch: str, seed: int) -> str:
    return f"{arch}_s{seed}"


def plan(a, cfg) -> list[dict]:
    D = cfg.vffn.max_depth
    runs = []
    for seed_i, seed in enumerate(a.seed_list):
        for arch in a.arch_list:
            if seed_i > 0 and arch not in MULTI_SEED and not a.all_seeds:
                continue
            over = {"dense": ["model.arch=dense"], "vffn": ["model.arch=vffn"], "moe": ["model.arch=moe"],
                    "kloop2": ["model.arch=kloop", "kloop.loops=2"],
                    "kloopD": ["model.arch=kloop", f"kloop.loops={D}"]}[arch]
            runs.append({"arch": arch, "seed": seed, "name": run_name(arch, seed), "overrides": over})
    return runs


def trainer_cmd(a, r: dict, eval_interval: int) -> list[str]:
    out = os.path.join(a.work_dir, r["name"])
    return [sys.executable, "-m", "pretrain", "--config", a.config, *r["overrides"], f"seed={r['seed']}",
            f"run_name={r['name']}", f"output_dir={out}", f"schedule.train_steps={a.steps}",
            f"schedule.eval_interval={eval_interval}", "checkpoint.resume=none",
            f"data.cache_dir={os.path.join(a.work_dir, 'data_cache')}", "logging.progress=none", *a.overrides]


def run_all(a, runs: list[dict], eval_interval: int) -> None:
    """Run the trainer for every planned run, ``--jobs`` at a time; record each run's wall time."""
    env = child_env()
    pending, active = list(runs), []
    os.makedirs(a.work_dir, exist_ok=True)
    while pending or active:
        while pending and len(active) < a.jobs:
            r = pending.pop(0)
            out = Path(a.work_dir) / r["name"]
            if a.reuse and (out / "checkpoints" / f"step_{a.steps:08d}").is_dir():
                r["reused"] = True
                r["wall"] = float((out / "wall_seconds.txt").read_text()) if (out / "wall_seconds.txt").is_file() else math.nan
                continue
            out.mkdir(parents=True, exist_ok=True)
            for old in (out / "tensorboard").glob("events.*") if (out / "tensorboard").is_dir() else []:
                old.unlink()  # a fresh run: old event files would mix into the curves
            log = open(out / "train.log", "w")
            cmd = trainer_cmd(a, r, eval_interval)
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
            (Path(a.work_dir) / r["name"] / "wall_seconds.txt").write_text(f"{r['wall']:.1f}\n")
            if proc.returncode != 0:
                for _, p2, _, _ in active:
                    p2.terminate()
                tail = (Path(a.work_dir) / r["name"] / "train.log").read_text()[-3000:]
                raise CompareError(f"run {r['name']} failed (exit {proc.returncode}); log tail:\n{tail}")
            print(f"[compare] done {r['name']} in {r['wall']:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ analysis
def scalars(run_dir: Path) -> dict:
    """tag -> [(step, value)] from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def count_params(a, archs_cfg: dict) -> dict:
    """arch -> {'total', 'embedding', 'active'} parameter counts of the built models (one CPU process)."""
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    from pretrain.checks import preflight
    from pretrain.config import load_config
    from pretrain.train import build_model
    from vffn_megatron import init_megatron
    from vffn_megatron.runtime import destroy

    out = {}
    init_megatron(1, seed=0)
    try:
        for arch, over in archs_cfg.items():
            cfg = load_config(a.config, over + list(a.overrides))
            _, vocab = preflight(cfg)
            model = build_model(cfg, vocab)
            total = emb = experts = 0
            for n, p in model.named_parameters():
                total += p.numel()
                if "word_embeddings" in n or "output_layer" in n:
                    emb += p.numel()
                if ".experts." in n:
                    experts += p.numel()
            active = total
            if arch == "moe":  # a token runs through top_k of the num_experts experts
                active = total - experts + experts * cfg.moe.top_k // cfg.moe.num_experts
            out[arch] = {"total": total, "embedding": emb, "active": active, "cfg": cfg, "vocab": vocab}
            del model
    finally:
        destroy()
    return out


def train_flops_per_token(cfg, vocab: int) -> float:
    """The run's training FLOPs per token (the FLOP model: vffn_megatron/flops.py) for its model.arch."""
    from vffn_megatron.flops import num_flops_per_token

    return num_flops_per_token(cfg.model, vocab, cfg.vffn_or_none or cfg.kloop_or_none or cfg.moe_or_none)


def mean_spread(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {(max(xs) - min(xs)) / 2:.4f}"


def analyse(a, runs: list[dict], t0: float, cmd: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vffn_megatron.flops import TRAIN_FLOPS_FORMULA

    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        r["tb"] = scalars(Path(a.work_dir) / r["name"])
    archs = [x for x in ARCHS if any(r["arch"] == x for r in runs)]
    params = count_params(a, {x: next(r for r in runs if r["arch"] == x)["overrides"] for x in archs})

    # ---- validation curves: whole run, and the second half zoomed (where the differences are small)
    cfg0 = params[archs[0]]["cfg"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = dict(zip(ARCHS, ["tab:gray", "tab:orange", "tab:red", "tab:green", "tab:blue"]))
    for zoom, ax in enumerate(axes):
        for r in runs:
            v = [(st, x) for st, x in r["tb"].get("valid/loss", []) if not zoom or st >= a.steps // 2]
            if v:
                ax.plot([st for st, _ in v], [x for _, x in v], color=colors[r["arch"]], marker=".",
                        linestyle=("-", "--", ":", "-.")[a.seed_list.index(r["seed"]) % 4],
                        label=f"{LABELS[r['arch']]} (seed {r['seed']})")
        ax.set_xlabel(f"optimizer step ({cfg0.schedule.global_batch_size} sequences x {cfg0.model.seq_length} "
                      f"tokens each)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("Validation loss, second half (zoomed)" if zoom else "Validation loss (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(out / "valid_loss.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    vruns = [r for r in runs if r["arch"] == "vffn"]
    pictures = ["valid_loss.png"]
    if vruns:
        tb = vruns[0]["tb"]
        layers = sorted({t.split("/")[1] for t in tb if t.startswith("vffn/layer_")})
        # ---- depth shares over training, one panel per layer (stacked areas)
        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            ds = sorted(int(t.rsplit("_", 1)[1]) for t in tb if t.startswith(f"vffn/{layer}/depth_share_"))
            steps = [s for s, _ in tb[f"vffn/{layer}/depth_share_{ds[0]}"]]
            ys = [[v for _, v in tb[f"vffn/{layer}/depth_share_{d}"]] for d in ds]
            ax.stackplot(steps, ys, labels=[f"{d} loop{'s' if d > 1 else ''}" for d in ds],
                         colors=plt.get_cmap("viridis")([i / max(len(ds) - 1, 1) for i in range(len(ds))]))
            ax.set_ylim(0, 1)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("share of training tokens")
            ax.set_title(f"{layer.replace('_', ' ')}: chosen depth (seed {vruns[0]['seed']})")
            ax.legend(loc="lower left", fontsize=8)
        fig.savefig(out / "depth_share.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        # ---- sub-expert load over training
        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            es = sorted(int(t.rsplit("_", 1)[1]) for t in tb if t.startswith(f"vffn/{layer}/expert_load_"))
            for e in es:
                pts = tb[f"vffn/{layer}/expert_load_{e}"]
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=f"sub-expert {e}")
            ax.axhline(1 / len(es), color="k", linestyle=":", label="uniform")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("share of top-k routing slots")
            ax.set_title(f"{layer.replace('_', ' ')}: width-path sub-expert load")
            ax.legend(fontsize=8)
        fig.savefig(out / "expert_load.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        pictures += ["depth_share.png", "expert_load.png"]
        # ---- sample sentence coloured by depth (the trained model, eval routing)
        env = child_env()
        res = subprocess.run([sys.executable, str(REPO / "tools" / "plot_routing.py"), "--checkpoint",
                              str(Path(a.work_dir) / vruns[0]["name"]), "--text", a.sample_text,
                              "--output", str(out / "routing_sample.png")],
                             cwd=REPO, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise CompareError(f"plot_routing failed:\n{res.stderr[-3000:]}")
        pictures.append("routing_sample.png")

    # ---- table
    rows = []
    finals = {}
    for x in archs:
        rs = [r for r in runs if r["arch"] == x]
        fin = [r["tb"]["valid/loss"][-1][1] for r in rs if r["tb"].get("valid/loss")]
        finals[x] = fin
        tps = []
        for r in rs:  # tokens/s over the second half of training (start-up excluded)
            pts = r["tb"].get("train/tokens_per_sec", [])
            half = [v for s, v in pts if s > a.steps // 2] or [v for _, v in pts]
            tps.append(statistics.mean(half) if half else math.nan)
        p = params[x]
        ppl = [math.exp(f) for f in fin]
        flops = train_flops_per_token(p["cfg"], p["vocab"])
        loops = ""
        if x == "vffn":
            ml = [r["tb"]["vffn/mean_loops"][-1][1] for r in rs if r["tb"].get("vffn/mean_loops")]
            loops = f" (mean loops at end: {statistics.mean(ml):.2f})" if ml else ""
        rows.append(f"| {LABELS[x]}{loops} | {', '.join(str(r['seed']) for r in rs)} | {p['total']:,} | "
                    f"{p['total'] - p['embedding']:,} | {p['active'] - p['embedding']:,} | {flops / 1e6:.2f} | "
                    f"{mean_spread(fin)} | {mean_spread(ppl).replace('.0000', '')} | "
                    f"{statistics.mean(tps):,.0f} | {statistics.mean(r['wall'] for r in rs):.0f} |")
    s = cfg0.schedule
    tokens = a.steps * s.global_batch_size * cfg0.model.seq_length
    spread = {x: (max(v) - min(v)) for x, v in finals.items() if len(v) > 1}
    lines = [
        "# Small-scale comparison: dense vs k-loop vs MoE vs VersatileFFN",
        "",
        f"Model: {cfg0.model.num_layers} layers, hidden {cfg0.model.hidden_size}, {cfg0.model.num_attention_heads} "
        f"heads, FFN {cfg0.model.ffn_hidden_size} (SwiGLU), seq {cfg0.model.seq_length}, vocab "
        f"{params[archs[0]]['vocab']}; VersatileFFN N={cfg0.vffn.num_experts} sub-experts, top-{cfg0.vffn.top_k}, "
        f"D={cfg0.vffn.max_depth}; k-loop k=2 and k=D={cfg0.vffn.max_depth}; MoE {cfg0.moe.num_experts} experts of "
        f"the dense FFN's size, top-{cfg0.moe.top_k} (more parameters than the others: the reference point).",
        f"Budget: {a.steps} steps x {s.global_batch_size} sequences x {cfg0.model.seq_length} tokens = {tokens:,} "
        f"training tokens per run, same data order (data.seed {cfg0.data.seed}), same LR schedule "
        f"(lr {cfg0.optimizer.lr:g}, cosine to {cfg0.optimizer.min_lr:g}, warmup {s.warmup_steps}); validation: "
        f"{s.eval_iters} x {s.global_batch_size} sequences of the held-out split. fp32, 1 CPU process per run.",
        "",
        "| model | seeds | params total | non-embedding params | non-embedding active / token | train GFLOP... "
        .replace("train GFLOP...", "train MFLOP / token") + "| final valid loss | valid perplexity | tokens/s | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Final valid loss / perplexity: mean ± half the range over seeds where there is more than one seed.",
        "Params: embedding = input embedding + output layer (untied); active = parameters a token's forward uses "
        "(MoE: top-k of the experts; VersatileFFN and k-loop reuse the one FFN, so active = total).",
        TRAIN_FLOPS_FORMULA,
        "tokens/s: the trainer's logged train/tokens_per_sec, mean over the second half of training; "
        f"{a.jobs} run(s) at a time on a shared 2-core machine with other work running, so these are rough.",
        "",
        "## Reading the numbers",
        "",
    ]
    if spread:
        lines.append("Seed-to-seed spread of the final validation loss (max - min): "
                     + ", ".join(f"{LABELS[x]} {v:.4f}" for x, v in spread.items()) + ".")
    if "vffn" in finals and finals["vffn"]:
        vm = statistics.mean(finals["vffn"])
        ref = max(spread.values()) if spread else None
        for x in archs:
            if x == "vffn" or not finals[x]:
                continue
            diff = statistics.mean(finals[x]) - vm
            verdict = ""
            if ref is not None:
                verdict = (" — within the seed-to-seed spread, i.e. not a measurable difference at this scale"
                           if abs(diff) <= ref else
                           (" — larger than the seed spread: VersatileFFN is better" if diff > 0
                            else " — larger than the seed spread: VersatileFFN is worse"))
            lines.append(f"- {LABELS[x]} minus VersatileFFN: {diff:+.4f} nats{verdict}.")
    lines += ["", "## Pictures", ""]
    captions = {"valid_loss.png": "Validation loss vs step, all runs (line style = seed: solid, dashed, dotted, dash-dot); "
                                  "right: the second half of training, zoomed.",
                "depth_share.png": "Per layer, the share of training tokens at each depth (Gumbel-sampled "
                                   "during training, from the TensorBoard scalars).",
                "expert_load.png": "Per layer, the share of top-k routing slots per width-path sub-expert.",
                "routing_sample.png": "A sample sentence, each token coloured by its chosen depth at inference "
                                      "(argmax router), with its top-k sub-experts (tools/plot_routing.py)."}
    for pic in pictures:
        lines += [f"![{pic}]({pic})", "", captions[pic], ""]
    lines += ["## Reproduce", "", "```", cmd, "```", "",
              f"Seeds: {', '.join(map(str, a.seed_list))} ("
              + ("every model" if a.all_seeds else f"dense and VersatileFFN; other models seed {a.seed_list[0]}")
              + "). Measured wall time of the whole "
              f"command: {(time.time() - t0) / 60:.1f} min ({a.jobs} run(s) at a time, 2-core CPU shared with other work)"
              + (f"; {sum(1 for r in runs if r.get('reused'))} run(s) were reused from an earlier invocation "
                 f"(--reuse), their own training wall times sum to "
                 f"{sum(r['wall'] for r in runs if r.get('reused')) / 60:.1f} min" if any(r.get("reused") for r in runs)
                 else "") + ".", ""]
    md = "\n".join(lines)
    (out / "compare.md").write_text(md)
    return md


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
    eval_interval = a.eval_interval or max(1, a.steps // 16)
    runs = plan(a, cfg)
    cmd = "python tools/compare_architectures.py " + shlex.join(
        (argv if argv is not None else sys.argv[1:]))
    try:
        run_all(a, runs, eval_interval)
        md = analyse(a, runs, t0, cmd)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
