"""Per-token VersatileFFN routing pictures for a trainer checkpoint: chosen depth (loops) and sub-experts.

    python tools/plot_routing.py --checkpoint runs/compare/vffn_s1 [--step N] --text "Some sentence." \
        --output results/routing_sample.png [--json routing.json]

The checkpoint is read with vffn_hf.trainer_ckpt (any TP size / ZeRO stage, merged to one full state dict)
into the trainer's own model (pretrain.train.build_model) in one CPU process, in eval mode: the depth is the
router's argmax, as at inference. Rows: one per layer; each token is a cell coloured by its loop count (1..D),
annotated with its top-k sub-experts (tokens at full depth D use no width path: "-").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class RoutingError(ValueError):
    """Bad input (checkpoint, text): the message says what to fix."""


def load_model(checkpoint: str, step: int | None = None):
    """(model in eval mode, run config, tokenizer) of a VersatileFFN trainer checkpoint."""
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    import torch

    from pretrain.config import ConfigError, from_dict
    from vffn_data.tokenizer import load_tokenizer
    from vffn_hf.trainer_ckpt import CheckpointError, load_checkpoint, resolve_step_dir, read_run_config

    try:
        step_dir = resolve_step_dir(checkpoint, step)
        raw = read_run_config(step_dir)
    except CheckpointError as e:
        raise RoutingError(str(e)) from None
    if raw["model"].get("arch", "vffn") != "vffn":
        raise RoutingError(f"{step_dir} is a model.arch={raw['model'].get('arch')!r} checkpoint: routing pictures "
                           f"need a VersatileFFN (arch: vffn) model")
    ckpt = load_checkpoint(step_dir)
    raw, sd = ckpt.config, ckpt.state_dict
    try:
        cfg = from_dict(raw)
    except ConfigError as e:
        raise RoutingError(f"{step_dir}/config.yaml: {e}") from None
    tok_path = raw["data"]["tokenizer"]
    if not Path(tok_path).exists():
        raise RoutingError(f"the run's tokenizer {tok_path} does not exist (run from the directory the training "
                           f"ran in, usually the repository root)")
    tokenizer = load_tokenizer(tok_path)

    from pretrain.train import build_model
    from vffn_megatron import init_megatron

    cfg.parallel.tensor_model_parallel_size = 1  # the merged state dict is the full (TP=1) model
    cfg.precision = "fp32"
    init_megatron(1, seed=cfg.seed)
    model = build_model(cfg, sd["embedding.word_embeddings.weight"].shape[0])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RoutingError(f"{step_dir}: state dict does not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    model.eval()
    torch.set_grad_enabled(False)
    return model, cfg, tokenizer, step_dir


def route(model, cfg, tokenizer, text: str) -> dict:
    """{'tokens': [str], 'loops': [[layer][token]], 'experts': [[layer][token] -> list of ids or []]}."""
    import torch

    from vffn_megatron import vffn_modules

    ids = tokenizer.encode(text)
    if not ids:
        raise RoutingError("the text encodes to no tokens")
    ids = ids[: cfg.model.seq_length]
    mods = sorted(vffn_modules(model), key=lambda m: m.layer_number or 0)
    captured = {}

    def hook(layer):  # the router sees only the tokens that use the width path (loops < D), in token order
        def fn(_mod, _inp, out):
            captured[layer] = torch.topk(out.float(), mods[0].top_k, dim=-1).indices
        return fn

    handles = [m.router.register_forward_hook(hook(m.layer_number)) for m in mods]
    for m in mods:
        m.record_routing = True
    tokens = torch.tensor([ids])
    pos = torch.arange(len(ids)).unsqueeze(0)
    model(tokens, pos, None)
    for h in handles:
        h.remove()
    loops, experts = [], []
    for m in mods:
        L = m.last_loops[0].tolist()
        wide = iter(captured[m.layer_number].tolist()) if m.layer_number in captured else iter(())
        experts.append([next(wide) if l < m.max_depth else [] for l in L])
        loops.append(L)
        m.pop_stats()
    return {"tokens": [tokenizer.decode([i]) for i in ids], "loops": loops, "experts": experts,
            "max_depth": mods[0].max_depth, "num_experts": mods[0].num_experts}


def draw(r: dict, output: str, title: str = "", per_row: int = 16) -> None:
    """One panel per layer, tokens wrapped in rows of ``per_row``; colour = loops, text = token + sub-experts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    D, n_layers, n_tok = r["max_depth"], len(r["loops"]), len(r["tokens"])
    rows = (n_tok + per_row - 1) // per_row
    cmap = ListedColormap(plt.get_cmap("viridis")(list(i / max(D - 1, 1) for i in range(D))))
    norm = BoundaryNorm([x + 0.5 for x in range(D + 1)], D)
    fig, axes = plt.subplots(n_layers, 1, figsize=(1.0 * per_row + 1.5, 1.1 * rows * n_layers + 1.2), squeeze=False)
    for li, ax in enumerate(axes[:, 0]):
        for t in range(n_tok):
            rr, cc = divmod(t, per_row)
            L = r["loops"][li][t]
            ax.add_patch(plt.Rectangle((cc, -rr - 1), 0.96, 0.9, color=cmap(norm(L))))
            piece = r["tokens"][t].replace("\n", "\\n") or "␣"
            ex = r["experts"][li][t]
            label = f"{piece[:9]}\n" + ("e" + ",".join(map(str, ex)) if ex else "-")
            ax.text(cc + 0.48, -rr - 0.55, label, ha="center", va="center", fontsize=8,
                    color="white" if L < D else "black")
        ax.set_xlim(0, per_row)
        ax.set_ylim(-rows, 0.05)
        ax.axis("off")
        mean = sum(r["loops"][li]) / n_tok
        ax.set_title(f"layer {li + 1}: loops per token (mean {mean:.2f} of max {D}); "
                     f"e = top-{len(next((e for e in r['experts'][li] if e), [0, 0]))} sub-experts of the width path",
                     fontsize=9, loc="left")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    cbar = fig.colorbar(sm, ax=axes[:, 0].tolist(), ticks=list(range(1, D + 1)), fraction=0.02, pad=0.01)
    cbar.set_label("chosen depth (FFN loops)")
    if title:
        fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run output_dir, its checkpoints/ dir, or a step_XXXXXXXX dir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--text", required=True, help="text to route (truncated to model.seq_length tokens)")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--json", default=None, help="also write the per-token routing as JSON")
    p.add_argument("--per-row", type=int, default=16, help="tokens per row in the picture")
    args = p.parse_args(argv)
    if not args.output.lower().endswith(".png"):
        print("error: --output must be a .png file", file=sys.stderr)
        return 2
    if args.per_row < 1:
        print("error: --per-row must be >= 1", file=sys.stderr)
        return 2
    try:
        model, cfg, tok, step_dir = load_model(args.checkpoint, args.step)
        r = route(model, cfg, tok, args.text)
    except RoutingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from vffn_megatron.runtime import destroy

        destroy()
    title = textwrap.shorten(f"{step_dir}: per-token depth", 120)
    draw(r, args.output, title, args.per_row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
