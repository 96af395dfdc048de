"""The CUDA path, end to end, on one GPU (marker ``gpu``; skipped without CUDA, run by tools/gpu_check.sh).

* the VersatileFFN block's forward and every gradient on CUDA (fp32) vs the float64 CPU reference;
* SDPA vs megatron's local attention on CUDA in bf16 (GPTModel logits and gradients);
* a 1-GPU training run (NCCL, ZeRO-1, bf16): SIGTERM saves, the resumed run continues the uninterrupted one;
* the HF export of that checkpoint loads and generates on CPU through transformers.
Figures go to $VFFN_GPU_REPORT (JSON lines) when set, for the check's summary.
"""
import json
import os
import re
import signal
import sys

import pytest
import torch

from helpers import REPO
from helpers.procs import Proc, launch_env, run_ok
from helpers.workspace import make_workspace, read_losses, run_overrides
from vffn_megatron.device import torchrun_command, use_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not use_cuda(), reason="needs a CUDA GPU")]
TIMEOUT = 300


def report(name: str, **figures) -> None:
    path = os.environ.get("VFFN_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"check": name, **figures}) + "\n")


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def test_vffn_block_cuda_matches_cpu_reference(megatron_tp1):
    from helpers.block import BATCH, SEQ, build_block, rel_err, run_both
    from vffn_megatron import VersatileFFNConfig

    vffn = VersatileFFNConfig(num_experts=8, top_k=2, max_depth=4, aux_loss_coeff=0.0)
    block = build_block(vffn, megatron_tp1)
    block.set_step(300)
    noise = -torch.empty(SEQ * BATCH, 4).exponential_(generator=torch.Generator().manual_seed(5)).log()
    assert next(block.parameters()).is_cuda
    out, ref, grads, ref_grads = run_both(block, vffn, train=True, noise=noise, device="cuda")
    worst = max(rel_err(grads[n], ref_grads[n]) for n in grads)
    report("vffn_block_cuda_vs_cpu_fp64", output_rel_err=rel_err(out, ref), worst_grad_rel_err=worst)
    assert rel_err(out, ref) < 1e-4 and worst < 1e-4


def test_sdpa_matches_local_on_cuda_bf16(megatron_tp1):
    from vffn_megatron import GPTConfig, VersatileFFNConfig, build_gpt_model

    cfg = GPTConfig(num_layers=2, hidden_size=256, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=704,
                    seq_length=512, vocab_size=1024)
    models = {b: build_gpt_model(cfg, VersatileFFNConfig(num_experts=4, top_k=2, max_depth=2), bf16=True,
                                 attention_backend=b).eval() for b in ("sdpa", "local")}
    models["local"].load_state_dict(models["sdpa"].state_dict())
    tokens = torch.randint(0, 1024, (2, 513), device="cuda")
    pos = torch.arange(512, device="cuda")[None].expand(2, -1)
    out = {}
    for b, m in models.items():
        logits = m(tokens[:, :-1], pos, None)
        logits.float().pow(2).mean().backward()
        out[b] = (logits.detach().float(), {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None})
    logit_err = _rel(out["sdpa"][0], out["local"][0])
    grad_err = max(_rel(out["sdpa"][1][n], g) for n, g in out["local"][1].items())
    report("sdpa_vs_local_cuda_bf16", logits_rel_err=logit_err, worst_grad_rel_err=grad_err)
    assert logit_err < 2e-2 and grad_err < 5e-2  # bf16 rounding, two different kernels


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """Uninterrupted reference and a SIGTERM-stopped + resumed run of the same config, one GPU each."""
    root = tmp_path_factory.mktemp("gpu_run")
    ws = make_workspace(root / "ws")

    def args(out):
        over = run_overrides(ws, out, precision="bf16", parallel__zero_stage=1, schedule__train_steps=40,
                             schedule__micro_batch_size=4, schedule__global_batch_size=8, checkpoint__interval=10,
                             checkpoint__save_at_end=True)
        return torchrun_command(1, ["-m", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"), *over])

    ref, out = root / "reference", root / "resumed"
    run_ok(args(ref), root / "reference.log", TIMEOUT)
    with Proc(args(out), root / "first.log") as p:
        p.wait_for("step 15/", timeout=TIMEOUT)
        p.signal(signal.SIGTERM)
        p.wait(TIMEOUT)
        first = p.output()
    saved = re.search(r"stop signal received: saving at step (\d+)", first)
    assert saved, first[-4000:]
    second = run_ok(args(out), root / "second.log", TIMEOUT)
    return {"ref": ref, "out": out, "saved": int(saved.group(1)), "second": second}


def test_one_gpu_bf16_run_sigterm_and_resume(gpu_run):
    a, b = read_losses(gpu_run["out"]), read_losses(gpu_run["ref"])
    assert "resumed from" in gpu_run["second"] and sorted(a) == sorted(b) == list(range(1, 41))
    after = range(gpu_run["saved"] + 1, 41)
    worst = max(abs(a[s] - b[s]) for s in after)
    report("gpu_sigterm_resume", saved_at=gpu_run["saved"], worst_loss_diff_after_resume=worst,
           final_loss=a[40])
    # same data, same state; GPU kernels (atomics in index_add / scatter backward) are not bit-deterministic
    assert worst < 2e-2
    assert a[40] < a[1] - 0.5, "the model should be learning"


def test_hf_export_generates_on_cpu(gpu_run, tmp_path):
    hf = tmp_path / "hf"
    env = launch_env()
    run_ok([sys.executable, str(REPO / "tools" / "export_hf.py"), "--checkpoint", str(gpu_run["out"] / "checkpoints"),
            "--output", str(hf), "--no-tokenizer"], tmp_path / "export.log", TIMEOUT, env)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf), trust_remote_code=True)
    assert next(model.parameters()).device.type == "cpu"
    prompt = torch.tensor([[5, 9, 13, 17]])
    out = model.generate(prompt, max_new_tokens=8, do_sample=False)
    report("hf_export_cpu_generate", generated=out[0].tolist())
    assert out.shape == (1, 12)
