"""The paper presets (configs/paper_354m.yaml, paper_720m.yaml, paper_1b2.yaml; arXiv 2512.14531): their parameter
counts as ``--check`` prints them, their shapes and recipe, and ``vffn.tau_decay: auto``.

The counts build the model on the meta device (pretrain/params.py): no memory, well under a second per model.
"""
import math
import re
import subprocess
import sys

import pytest

from helpers import REPO
from helpers.procs import launch_env
from helpers.workspace import make_tokenizer, run_overrides

# preset: the paper's figures. params is the count as the paper prints it, unit the value of its last digit.
PAPER = {
    "paper_354m": dict(params=354.71e6, unit=0.01e6, d=1024, tokens_per_step=1.5 * 2**20, tokens=40e9, lr=5e-4),
    "paper_720m": dict(params=720.81e6, unit=0.01e6, d=1536, tokens_per_step=2**20, tokens=70e9, lr=4e-4),
    "paper_1b2": dict(params=1.21e9, unit=0.01e9, d=2048, tokens_per_step=0.5 * 2**20, tokens=100e9, lr=3e-4),
}
VOCAB = 50304  # the paper's 50,280 padded to a multiple of 128


def preset(name: str) -> str:
    return str(REPO / "configs" / f"{name}.yaml")


def matches_paper(count: int, name: str) -> bool:
    """Within 0.1% of the paper's figure, or within its printed precision where that is coarser (1.21B: 3 digits,
    i.e. [1.205B, 1.215B))."""
    p = PAPER[name]
    return abs(count - p["params"]) <= max(1e-3 * p["params"], p["unit"] / 2)


def test_check_prints_the_count_before_the_data_error():
    """The CLI on the biggest preset: the count comes first, then the missing tokenizer fails the check (exit 2)."""
    proc = subprocess.run([sys.executable, "-m", "pretrain", "--config", preset("paper_1b2"), "--check"], cwd=REPO,
                          env=launch_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.tokenizer: data/tok50k does not exist" in proc.stderr
    m = re.search(r"model\.arch vffn, vocab 50304: parameters: \S+ total \(([\d,]+)\) = embedding \S+ \(([\d,]+)\) "
                  r"\+ non-embedding \S+ \(([\d,]+)\)", proc.stdout)
    assert m, proc.stdout
    total, emb, non_emb = (int(g.replace(",", "")) for g in m.groups())
    assert matches_paper(total, "paper_1b2"), total
    assert emb == 2 * VOCAB * 2048 and emb + non_emb == total  # untied input embedding + output layer


@pytest.mark.parametrize("name", list(PAPER))
def test_preset_counts_match_the_paper(name, megatron_tp1):
    from pretrain.config import load_config
    from pretrain.params import count_parameters

    cfg = load_config(preset(name))
    vffn = count_parameters(cfg, VOCAB)
    dense = count_parameters(load_config(preset(name), ["model.arch=dense"]), VOCAB)
    assert matches_paper(vffn.total, name), (name, vffn)
    p, d, v = PAPER[name], cfg.model.hidden_size, cfg.vffn
    # the paper's figure is the model without the routers (the dense count at the paper's printed precision)
    assert round(dense.total / p["unit"]) == round(p["params"] / p["unit"]), (name, dense)
    assert vffn.total - dense.total == cfg.model.num_layers * d * (v.num_experts + v.max_depth)  # Wr, Wq
    assert vffn.embedding == dense.embedding == 2 * VOCAB * d


def test_meta_count_equals_the_built_model(megatron_tp1, tmp_path):
    """count_parameters (meta device) == the parameters of the real model, every architecture, at TP=2 in the
    config too (it counts the whole model)."""
    from pretrain.config import ARCHS, load_config
    from pretrain.params import count_parameters
    from pretrain.train import build_model

    ws = {"tokenizer": str(make_tokenizer(tmp_path / "tok", 200)), "datasets": [str(tmp_path / "a")]}
    for arch in ARCHS:
        cfg = load_config(str(REPO / "configs" / "tiny.yaml"), run_overrides(ws, tmp_path / "out")
                          + [f"model.arch={arch}"])
        real = build_model(cfg, 256)
        want_total = sum(p.numel() for p in real.parameters())
        want_emb = sum(p.numel() for n, p in real.named_parameters() if "word_embeddings" in n or "output_layer" in n)
        meta_model = build_model(cfg, 256, meta=True)
        assert all(p.is_meta for p in meta_model.parameters())
        assert {n: p.shape for n, p in meta_model.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}
        tp2 = load_config(str(REPO / "configs" / "tiny.yaml"), run_overrides(ws, tmp_path / "out")
                          + [f"model.arch={arch}", "parallel.tensor_model_parallel_size=2"]) if arch != "moe" else cfg
        for c in (cfg, tp2):
            count = count_parameters(c, 256)
            assert (count.total, count.embedding) == (want_total, want_emb), (arch, count)
        # active per token: MoE uses top_k of its num_experts routed experts, the others everything
        expert = next((m for n, m in real.named_modules() if n.endswith("experts.local_experts.0")), None)
        per_expert = sum(p.numel() for p in expert.parameters()) if expert is not None else 0
        layers, moe = cfg.model.num_layers, cfg.moe
        want_active = want_total - (layers * (moe.num_experts - moe.top_k) * per_expert if arch == "moe" else 0)
        assert count_parameters(cfg, 256).active == want_active and (arch != "moe" or per_expert > 0), arch


@pytest.mark.parametrize("name", list(PAPER))
def test_preset_shapes_and_recipe(name):
    from pretrain.config import load_config, validate

    cfg = load_config(preset(name))
    validate(cfg, world_size=8)
    p, m, v, o, s = PAPER[name], cfg.model, cfg.vffn, cfg.optimizer, cfg.schedule
    assert (m.arch, m.num_layers, m.hidden_size, m.ffn_hidden_size, m.seq_length) == ("vffn", 15, p["d"], 4 * p["d"], 4096)
    assert m.hidden_size // m.num_attention_heads == 128 and m.vocab_size == VOCAB and m.untie_embeddings_and_output_weights
    assert (v.num_experts, v.top_k, v.max_depth, v.aux_loss_coeff) == (8, 2, 4, 1e-5) and cfg.precision == "bf16"
    assert (o.lr, o.weight_decay, o.grad_clip) == (p["lr"], 0.1, 1.0) and math.isclose(o.min_lr, 0.1 * o.lr)
    assert s.decay_style == "cosine" and s.decay_steps is None and s.warmup_steps == round(0.05 * s.train_steps)
    tokens_per_step = s.global_batch_size * m.seq_length
    assert tokens_per_step == p["tokens_per_step"]
    assert s.train_steps == math.ceil(p["tokens"] / tokens_per_step)  # the paper's token budget, not less
    for dp in (8, 16, 64):  # whole micro-batches at common data-parallel sizes
        assert s.global_batch_size % (s.micro_batch_size * dp) == 0, (name, dp)
    assert v.tau(s.train_steps - 1) == v.tau_end < v.tau(s.train_steps - 2)  # tau_decay: auto


def test_tau_decay_auto(tmp_path):
    from pretrain.config import load_config

    ws = {"tokenizer": str(tmp_path / "tok"), "datasets": [str(tmp_path / "a")]}
    base = run_overrides(ws, tmp_path / "out")
    for steps, start, end in ((50, 5.0, 0.1), (2, 1.0, 0.5), (25432, 5.0, 0.1), (1_000_003, 2.0, 0.3)):
        cfg = load_config(str(REPO / "configs" / "tiny.yaml"), base + [
            "vffn.tau_decay=auto", f"schedule.train_steps={steps}", f"vffn.tau_start={start}", f"vffn.tau_end={end}"])
        v = cfg.vffn
        assert v.tau(0) == start and v.tau(steps - 1) == end and v.tau(steps - 2) > end, (steps, v)
        # unclamped, a few ulps of the decay below tau_end (an ulp moves decay**(steps-1) by ~steps x 1e-16)
        assert math.isclose(start * v.tau_decay ** (steps - 1), end, rel_tol=1e-15 * steps)
        saved = tmp_path / "config.yaml"  # the run's saved config has the number, and reloads to the same run
        saved.write_text(cfg.to_yaml())
        assert f"tau_decay: {v.tau_decay!r}" in saved.read_text() and load_config(str(saved)) == cfg
    # resolved after the overrides: the preset's auto follows a changed train_steps
    short = load_config(preset("paper_354m"), ["schedule.train_steps=100", "schedule.warmup_steps=5"]).vffn
    assert short.tau(99) == short.tau_end < short.tau(98)


@pytest.mark.parametrize("overrides, expected", [
    (["schedule.train_steps=1"], "vffn.tau_decay: auto needs schedule.train_steps >= 2 (got 1)"),
    (["vffn.tau_start=0.1"], "vffn.tau_decay: auto needs vffn.tau_start > vffn.tau_end > 0 (got tau_start 0.1, "
                             "tau_end 0.1)"),
    (["vffn.tau_end=0"], "vffn.tau_decay: auto needs vffn.tau_start > vffn.tau_end > 0"),
    (["vffn.tau_decay=fast"], "vffn.tau_decay must be a number in (0, 1] or auto"),
])
def test_tau_decay_auto_errors(tmp_path, overrides, expected):
    from pretrain.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(preset("paper_354m"), ["vffn.tau_decay=auto", *overrides])
    assert expected in str(e.value)
