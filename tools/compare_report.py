"""The analysis half of tools/compare_architectures.py: TensorBoard scalars of the runs -> tables, paired
differences, pictures, and the markdown reports (compare_<protocol>.md and the combined compare.md)."""
from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from compare_architectures import REPO, arch_overrides, child_env

# The paper's own figures (arXiv 2512.14531 v2, 354M model, 40B tokens), for orientation only: another scale.
PAPER_NOTE = """## The paper's numbers (for orientation: 354M parameters, 40B tokens — not this scale)

| protocol (paper table) | model | loss | avg. accuracy |
|---|---|---|---|
| continued pretraining (Table 1) | 1 loop (dense, same extra tokens) | 2.654 | 50.09% |
| continued pretraining (Table 1) | VersatileFFN | 2.617 | 52.33% |
| from scratch (Table 5) | VersatileFFN | 2.654 | |
| from scratch (Table 5) | MoE | 2.639 | |
| from scratch (Table 5) | 4-loop | 2.641 | |

The paper's MoE: 0.35B -> 0.54B parameters (+53%), FFN inference FLOPs 0.38 -> 0.47 GFLOPs/token (1.25x). Its
FLOPs column is inference FFN FLOPs: the dense FFN's x mean loops + the width path's share. In the paper,
VersatileFFN is best in the continued protocol and not in the from-scratch one.
"""


class ReportError(ValueError):
    pass


def label(key: str, protocol: str) -> str:
    if key == "base":
        return "Base (dense checkpoint, no extra training)"
    if key == "dense":
        return "1 loop (dense, continued)" if protocol == "continued" else "1 loop (dense)"
    if key.startswith("kloop"):
        return f"{key[5:]}-loop"
    return {"moe": "MoE", "vffn": "VersatileFFN"}[key]


def scalars(run_dir: Path) -> dict:
    """tag -> [(step, value)] from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def count_params(a, keys: list[str]) -> dict:
    """arch key -> {'total', 'embedding', 'active', 'cfg', 'vocab'} of the models (counted as `--check` does)."""
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    from pretrain.checks import preflight
    from pretrain.config import load_config
    from pretrain.params import count_parameters

    out = {}
    for key in keys:
        cfg = load_config(a.config, arch_overrides(key) + list(a.overrides))
        _, vocab = preflight(cfg)
        c = count_parameters(cfg, vocab)
        out[key] = {"total": c.total, "embedding": c.embedding, "active": c.active, "cfg": cfg, "vocab": vocab}
    return out


def _last(tb: dict, tag: str, step=None):
    pts = tb.get(tag, [])
    if step is not None:
        pts = [p for p in pts if p[0] == step]
    return pts[-1][1] if pts else math.nan


def _mean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.mean(xs) if xs else math.nan


def spread(xs: list[float], digits: int = 4) -> str:
    """mean, and over several seeds ± standard deviation and [min, max]."""
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return (f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f} "
            f"[{min(xs):.{digits}f}, {max(xs):.{digits}f}]")


def ffn_flops(p: dict, key: str, tb_list: list[dict]) -> tuple[float, float]:
    """(inference FFN FLOPs per token over all layers, training FLOPs per token of the model) — the one FLOP
    model (vffn_megatron/flops.py); VersatileFFN from its measured depth statistics (eval: argmax routing = the
    inference choice; training: the sampled depth the compacted backward pays for)."""
    from vffn_megatron.flops import ffn_macs_per_token, num_flops_per_token

    cfg = p["cfg"]
    m = cfg.model
    block = cfg.vffn_or_none or cfg.kloop_or_none or cfg.moe_or_none
    if key == "vffn":
        loops = _mean([_last(tb, "valid/vffn/mean_loops") for tb in tb_list])
        wide = _mean([_last(tb, "valid/vffn/wide_share") for tb in tb_list])
        sampled = _mean([_mean([v for _, v in tb.get("vffn/mean_loops", [])]) for tb in tb_list])
        if math.isnan(loops) or math.isnan(wide) or math.isnan(sampled):
            raise ReportError("the VersatileFFN runs logged no eval / training depth statistics "
                              "(valid/vffn/mean_loops, vffn/mean_loops)")
        inf = ffn_macs_per_token(m.hidden_size, m.ffn_hidden_size, block, mean_loops=loops, wide_share=wide)
        train = num_flops_per_token(m, p["vocab"], block, mean_sampled_loops=sampled)
    else:
        inf = ffn_macs_per_token(m.hidden_size, m.ffn_hidden_size, block)
        train = num_flops_per_token(m, p["vocab"], block)
    return 2 * m.num_layers * inf, train


# ------------------------------------------------------------------------------------------ pictures
COLORS = {"base": "black", "dense": "tab:gray", "moe": "tab:green", "vffn": "tab:blue"}
KLOOP_COLORS = ["tab:orange", "tab:red", "tab:brown", "tab:pink"]


def _color(key: str, keys: list[str]) -> str:
    if key.startswith("kloop"):
        return KLOOP_COLORS[[k for k in keys if k.startswith("kloop")].index(key) % len(KLOOP_COLORS)]
    return COLORS[key]


def plot_valid(a, runs: list[dict], keys: list[str], out: Path, name: str) -> None:
    import matplotlib.pyplot as plt

    cont = a.protocol == "continued"
    base = next((r for r in runs if r["phase"] == "base"), None)
    shift = base["steps"] if base else 0
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = ("-", "--", ":", "-.")
    for zoom, ax in enumerate(axes):
        if base and not zoom:
            v = base["tb"].get("valid/loss", [])
            ax.plot([s for s, _ in v], [x for _, x in v], color="black", marker=".", label=label("base", a.protocol))
        for r in runs:
            if r["phase"] == "base":
                continue
            v = r["tb"].get("valid/loss", [])
            first = r["steps"] // (4 if cont else 2) if zoom else -1
            v = [(s + (0 if zoom else shift), x) for s, x in v if s >= first]
            if v:
                ls = styles[a.seed_list.index(r["seed"]) % 4]
                ax.plot([s for s, _ in v], [x for _, x in v], color=_color(r["arch"], keys), marker=".", linestyle=ls,
                        label=f"{label(r['arch'], a.protocol)} (" + ("every seed" if r.get("seed_free")
                                                                    else f"seed {r['seed']}") + ")")
        cfg = runs[-1]["cfg"]
        unit = f"{cfg.schedule.global_batch_size} sequences x {cfg.model.seq_length} tokens each"
        ax.set_xlabel(f"{'continued-phase ' if zoom and cont else ''}optimizer step ({unit})")
        ax.set_ylabel("validation loss (nats/token)")
        if cont:
            ax.set_title("Continued phase from its first quarter (zoomed)" if zoom
                         else "Validation loss: dense base, then each method continued from it")
            if not zoom:
                ax.axvline(shift, color="k", linestyle=":", linewidth=1)
        else:
            ax.set_title("Validation loss, second half (zoomed)" if zoom else "Validation loss (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_routing_over_training(tb: dict, seed: int, out: Path, prefix: str) -> list[str]:
    import matplotlib.pyplot as plt

    layers = sorted({t.split("/")[1] for t in tb if t.startswith("vffn/layer_")})
    if not layers:
        return []
    names = []
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        ds = sorted(int(t.rsplit("_", 1)[1]) for t in tb if t.startswith(f"vffn/{layer}/depth_share_"))
        steps = [s for s, _ in tb[f"vffn/{layer}/depth_share_{ds[0]}"]]
        ys = [[v for _, v in tb[f"vffn/{layer}/depth_share_{d}"]] for d in ds]
        ax.stackplot(steps, ys, labels=[f"{d} loop{'s' if d > 1 else ''}" for d in ds],
                     colors=plt.get_cmap("viridis")([i / max(len(ds) - 1, 1) for i in range(len(ds))]))
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("share of training tokens")
        ax.set_title(f"{layer.replace('_', ' ')}: chosen depth (seed {seed})")
        ax.legend(loc="lower left", fontsize=7)
    names.append(f"{prefix}_depth_share.png")
    fig.savefig(out / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        es = sorted(int(t.rsplit("_", 1)[1]) for t in tb if t.startswith(f"vffn/{layer}/expert_load_"))
        for e in es:
            pts = tb[f"vffn/{layer}/expert_load_{e}"]
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=f"sub-expert {e}")
        ax.axhline(1 / len(es), color="k", linestyle=":", label="uniform")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("share of top-k routing slots")
        ax.set_title(f"{layer.replace('_', ' ')}: width-path sub-expert load")
        ax.legend(fontsize=6)
    names.append(f"{prefix}_expert_load.png")
    fig.savefig(out / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return names


CAPTIONS = {
    "continued_valid_loss": "Validation loss vs step (line style = seed: solid, dashed, dotted, dash-dot): the dense "
                            "base's curve, then every continued run from its step-0 evaluation (the upcycled model "
                            "before any update); right: the continued phase, zoomed.",
    "scratch_valid_loss": "Validation loss vs step, all runs (line style = seed: solid, dashed, dotted, dash-dot); "
                          "right: the second half of training, zoomed.",
    "depth_share": "Per layer, the share of training tokens at each depth (Gumbel-sampled during training).",
    "expert_load": "Per layer, the share of top-k routing slots per width-path sub-expert.",
    "routing_sample": "A sample sentence, each token coloured by its chosen depth at inference (argmax router), "
                      "with its top-k sub-experts (tools/plot_routing.py).",
}


# ------------------------------------------------------------------------------------------ report
def analyse(a, runs: list[dict], t0: float, cmd: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        r["tb"] = scalars(r["dir"])
        if not r["tb"].get("valid/loss"):
            raise ReportError(f"run {r['name']} logged no validation loss ({r['dir']}/tensorboard)")
    keys = [k for k in dict.fromkeys(r["arch"] for r in runs if r["phase"] != "base")]
    params = count_params(a, list(dict.fromkeys(["dense", *keys])))
    for r in runs:
        r["cfg"] = params[r["arch"]]["cfg"]
    cont = a.protocol == "continued"
    base = next((r for r in runs if r["phase"] == "base"), None)
    prefix = a.protocol

    # ---- per-seed final losses; seed-free runs stand for every seed
    def finals(key: str) -> dict[int, float]:
        rs = [r for r in runs if r["arch"] == key and r["phase"] != "base"]
        if rs and rs[0].get("seed_free"):
            return {s: _last(rs[0]["tb"], "valid/loss") for s in a.seed_list}
        return {r["seed"]: _last(r["tb"], "valid/loss") for r in rs}

    ref = finals("dense") if "dense" in keys else {}
    dense_inf = ffn_flops(params["dense"], "dense", [])[0]
    rows, diffs = [], {}
    head = ("| model | seeds | params total | non-embedding | active non-emb. / token | train MFLOP / token | "
            "inference FFN MFLOP / token (x dense) | " + ("step-0 valid loss | " if cont else "")
            + "final valid loss | Δ vs 1 loop (paired by seed) | tokens/s | wall s / run |")
    sep = "|" + "---|" * (head.count("|") - 1)
    if base:
        p = params["dense"]
        bl = _last(base["tb"], "valid/loss")
        train = ffn_flops(p, "dense", [])[1]
        d = sorted({bl - ref[s] for s in a.seed_list}) if ref else []  # one value: 1 loop is seed-free
        rows.append(f"| {label('base', a.protocol)} | {base['seed']} | {p['total']:,} | {p['total'] - p['embedding']:,} "
                    f"| {p['active'] - p['embedding']:,} | {train / 1e6:.2f} ({base['steps']} steps) | "
                    f"{dense_inf / 1e6:.3f} (1.00) | — | {bl:.4f} | {spread(d) if d else '—'} | "
                    f"{_mean([v for _, v in base['tb'].get('train/tokens_per_sec', [])]):,.0f} | {base['wall']:.0f} |")
    for key in keys:
        rs = [r for r in runs if r["arch"] == key and r["phase"] != "base"]
        p = params[key]
        inf, train = ffn_flops(p, key, [r["tb"] for r in rs])
        fin = finals(key)
        loss = list(fin.values())
        if key != "dense" and ref:
            diffs[key] = [fin[s] - ref[s] for s in fin if s in ref]
        step0 = ""
        if cont:
            step0 = spread([_last(r["tb"], "valid/loss", 0) for r in rs]) + " | "
        tps = []
        for r in rs:  # tokens/s over the second half of training (start-up excluded)
            pts = r["tb"].get("train/tokens_per_sec", [])
            tps.append(_mean([v for s, v in pts if s > r["steps"] // 2] or [v for _, v in pts]))
        seeds = "every (seed-free)" if rs[0].get("seed_free") else ", ".join(str(r["seed"]) for r in rs)
        extra = ""
        if key == "vffn":
            loops = _mean([_last(r["tb"], "valid/vffn/mean_loops") for r in rs])
            wide = _mean([_last(r["tb"], "valid/vffn/wide_share") for r in rs])
            extra = f" (inference: {loops:.2f} loops, width path {wide:.0%} of tokens)"
        rows.append(f"| {label(key, a.protocol)}{extra} | {seeds} | {p['total']:,} | {p['total'] - p['embedding']:,} | "
                    f"{p['active'] - p['embedding']:,} | {train / 1e6:.2f} | {inf / 1e6:.3f} ({inf / dense_inf:.2f}) | "
                    f"{step0}{spread(loss)} | {spread(diffs[key]) if key in diffs else '—'} | {_mean(tps):,.0f} | "
                    f"{_mean([r['wall'] for r in rs]):.0f} |")

    # ---- pictures
    pictures = [f"{prefix}_valid_loss.png"]
    plot_valid(a, runs, keys, out, pictures[0])
    vruns = [r for r in runs if r["arch"] == "vffn"]
    if vruns:
        pictures += plot_routing_over_training(vruns[0]["tb"], vruns[0]["seed"], out, prefix)
        res = subprocess.run([sys.executable, str(REPO / "tools" / "plot_routing.py"), "--checkpoint",
                              str(vruns[0]["dir"]), "--text", a.sample_text,
                              "--output", str(out / f"{prefix}_routing_sample.png")],
                             cwd=REPO, env=child_env(), capture_output=True, text=True)
        if res.returncode != 0:
            raise ReportError(f"plot_routing failed:\n{res.stderr[-3000:]}")
        pictures.append(f"{prefix}_routing_sample.png")

    # ---- text
    cfg0 = params["dense"]["cfg"]
    m, s, v = cfg0.model, cfg0.schedule, cfg0.vffn
    moe = params["moe"]["cfg"].moe if "moe" in params else None
    tokens = a.steps * s.global_batch_size * m.seq_length
    title = {"continued": "Continued pretraining from one dense checkpoint (the paper's Table 1 protocol)",
             "scratch": "Every model from scratch (the paper's Table 5 protocol)"}[a.protocol]
    lines = [f"## {title}", "",
             f"Model: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads, FFN "
             f"{m.ffn_hidden_size} (SwiGLU), seq {m.seq_length}, vocab {params['dense']['vocab']} (untied); "
             f"VersatileFFN N={v.num_experts} sub-experts, top-{v.top_k}, D={v.max_depth}, aux {v.aux_loss_coeff:g}; "
             f"k-loop k = {', '.join(str(k) for k in a.kloop_list)}"
             + (f"; MoE {'a shared expert of the FFN size + ' if moe.shared_expert else ''}{moe.num_experts} routed "
                f"experts of hidden {moe.expert_ffn_hidden_size or m.ffn_hidden_size // moe.num_experts}, "
                f"top-{moe.top_k}, aux {moe.aux_loss_coeff:g}" if moe else "") + ".",
             ]
    if cont:
        lines.append(
            f"Protocol: a dense model is trained for {base['steps']} steps (seed {base['seed']}) = Base; every method "
            f"is then initialised from Base's checkpoint (`checkpoint.init_from`: dense weights copied, the FFN "
            f"shared by the loops / as MoE's shared expert and, sliced, its routed experts; routers fresh from the "
            f"seed) and trained {a.steps} more steps = {tokens:,} tokens with a fresh optimizer and LR schedule (lr "
            f"{cfg0.optimizer.lr:g}, warmup {s.warmup_steps}, cosine to {cfg0.optimizer.min_lr:g}), the same data "
            f"order for every run (data.seed {cfg0.data.seed}). The seeds vary only what is random in this phase: "
            f"the routers' initialisation and VersatileFFN's Gumbel noise; 1 loop and k-loop have none (bit-identical "
            f"for every seed), so they ran once.")
    else:
        lines.append(
            f"Protocol: every model trained from its own initialisation (model seed = run seed) for {a.steps} steps = "
            f"{tokens:,} tokens, the same data order (data.seed {cfg0.data.seed}) and LR schedule (lr "
            f"{cfg0.optimizer.lr:g}, warmup {s.warmup_steps}, cosine to {cfg0.optimizer.min_lr:g}).")
    lines += [f"Validation: the same {s.eval_iters} x {s.global_batch_size} held-out sequences for every run. fp32, "
              f"1 CPU thread per run, {a.jobs} run(s) at a time.", "", head, sep, *rows, "",
              "Losses: mean ± standard deviation [min, max] over seeds. Δ vs 1 loop: per seed, the run's final "
              "validation loss minus the 1-loop run's (negative = better than dense at equal tokens), then mean ± sd "
              "[min, max] over seeds.",
              "Params: embedding = input embedding + output layer; active = parameters one token's forward uses "
              "(MoE: the shared expert and top-k of the routed experts; VersatileFFN and k-loop reuse the one FFN).",
              "Inference FFN FLOPs (the paper's FLOPs column), summed over layers: dense 2·3·h·F per layer; k-loop k "
              "times that; MoE the shared expert + top-k routed experts + router; VersatileFFN the dense FFN's x the "
              "measured mean loops at inference (argmax depth, final validation) + the width path's fc2 for the "
              "measured share of tokens that use it + the routers. Train FLOPs: vffn_megatron/flops.py "
              "(VersatileFFN with the measured mean sampled depth of training: the compacted backward).",
              "", "### Reading the numbers", ""]
    lines += reading(a, keys, diffs, base, ref)
    lines += ["", "### Pictures", ""]
    for pic in pictures:
        lines += [f"![{pic}]({pic})", "", CAPTIONS.get(pic[:-4], CAPTIONS.get(pic[len(prefix) + 1:-4])), ""]
    lines += ["### Reproduce", "", "```", cmd, "```", "",
              f"Measured wall time of the whole command: {(time.time() - t0) / 60:.1f} min ({a.jobs} run(s) at a "
              f"time, 1 thread each, on a 2-core CPU)"
              + (f"; {sum(1 for r in runs if r.get('reused'))} run(s) were reused from an earlier invocation "
                 f"(--reuse)" if any(r.get("reused") for r in runs) else "")
              + f"; the runs' own wall times sum to {sum(r['wall'] for r in runs if not math.isnan(r['wall'])) / 60:.1f} "
              f"min.", ""]
    return "\n".join(lines)


# Student's t, two-sided 95%, by degrees of freedom (seeds - 1): few seeds need a large ratio.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def reading(a, keys, diffs: dict, base, ref) -> list[str]:
    """One line per method: the paired difference to 1 loop and whether it stands out of the seed noise."""
    lines = []
    n = len(a.seed_list)
    for key in keys:
        d = diffs.get(key)
        if not d:
            continue
        mean = statistics.mean(d)
        if len(d) == 1:
            lines.append(f"- {label(key, a.protocol)} − 1 loop: {mean:+.4f} nats (one seed: no noise estimate).")
            continue
        sd = statistics.stdev(d)
        if sd == 0 and all(x == d[0] for x in d):
            lines.append(f"- {label(key, a.protocol)} − 1 loop: {mean:+.4f} nats, deterministic: neither run has "
                         f"random state in this phase (same weights, same data), so this is the exact difference for "
                         f"this base and data order, with no seed noise of its own; compare it with the seeded "
                         f"methods' spread.")
            continue
        same_sign = all(x < 0 for x in d) or all(x > 0 for x in d)
        t = abs(mean) / (sd / math.sqrt(len(d))) if sd > 0 else math.inf
        crit = T95.get(len(d) - 1, 2.0)
        better = "better" if mean < 0 else "worse"
        if same_sign and t > crit:
            verdict = (f"{better} than 1 loop in every seed; paired t = {t:.1f} > {crit} (95%, {len(d) - 1} d.o.f.): "
                       f"distinguishable from the seed noise")
        elif same_sign:
            verdict = (f"{better} than 1 loop in every seed, but paired t = {t:.1f} <= {crit} (95%, {len(d) - 1} "
                       f"d.o.f.): suggestive, not established")
        else:
            verdict = "the sign changes between seeds: not distinguishable from the seed noise at this scale"
        lines.append(f"- {label(key, a.protocol)} − 1 loop: {mean:+.4f} ± {sd:.4f} nats over {len(d)} seeds "
                     f"[{min(d):+.4f}, {max(d):+.4f}] — {verdict}.")
    if base and ref:
        lines.append(f"- Base − 1 loop: {statistics.mean(_base_diff(base, ref, a)):+.4f} nats: what the extra "
                     f"{a.steps} steps of dense training bought.")
    if a.protocol == "continued":
        lines.append(f"- The seed spread here is only the routers' initialisation and the Gumbel noise ({n} seeds); "
                     "data-order and base-model variation are not sampled (one base, one data order), so a "
                     "difference that stands out here can still be specific to this base model and corpus.")
    return lines


def _base_diff(base, ref, a):
    bl = _last(base["tb"], "valid/loss")
    return [bl - ref[s] for s in a.seed_list]


def combined(out: Path) -> str:
    """compare.md: the paper's numbers, then each protocol's report that exists."""
    parts = ["# Architecture comparison: dense vs k-loop vs MoE vs VersatileFFN", "",
             "Generated by tools/compare_architectures.py (`--protocol continued`, the default, and `--protocol "
             "scratch`); each section below is also written alone as compare_<protocol>.md.", "", PAPER_NOTE]
    for proto in ("continued", "scratch"):
        f = out / f"compare_{proto}.md"
        if f.is_file():
            parts += [f.read_text(), ""]
    return "\n".join(parts)


def write_reports(a, runs: list[dict], t0: float, cmd: str) -> str:
    out = Path(a.output_dir)
    md = analyse(a, runs, t0, cmd)
    (out / f"compare_{a.protocol}.md").write_text(md)
    (out / "compare.md").write_text(combined(out))
    return md
