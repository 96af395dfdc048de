"""Logit and greedy-decoding comparisons between a megatron GPTModel and an HF causal LM (tests, export --verify),
and the export verification (:func:`verify_folder`: config, every tensor exactly, then logits)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits [b, s, vocab] of a TP=1 (or TP-gathered) megatron GPTModel; positions 0..s-1."""
    was_training = model.training
    model.eval()
    try:
        pos = torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
        return model(tokens, pos, None).float()
    finally:
        model.train(was_training)


@torch.no_grad()
def megatron_greedy(model, prompt: torch.Tensor, new_tokens: int, logits_fn=megatron_logits) -> torch.Tensor:
    """Greedy continuation by full re-forward each step (no KV cache: the simplest correct reference)."""
    seq = prompt
    for _ in range(new_tokens):
        nxt = logits_fn(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@torch.no_grad()
def hf_greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``generate()`` greedy with the KV cache, exactly ``new_tokens`` tokens. EOS is neither a stop nor
    suppressed (``min_new_tokens`` would mask its logit), so the result compares with a plain argmax loop."""
    import copy

    saved = model.generation_config
    cfg = copy.deepcopy(saved)
    cfg.eos_token_id = None  # generate() fills unset values from model.generation_config: swap it for the call
    cfg.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    model.generation_config = cfg
    try:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             do_sample=False, use_cache=True)
    finally:
        model.generation_config = saved
    if out.shape[1] != prompt.shape[1] + new_tokens:
        raise RuntimeError(f"generate() returned {out.shape[1] - prompt.shape[1]} new tokens, not {new_tokens}")
    return out


def build_megatron(model, vffn=None):
    """A TP=1 megatron GPTModel (``GPTConfig``, ``VersatileFFNConfig`` or None) in this process (single-process
    group), eval mode."""
    from vffn_megatron import build_gpt_model, init_megatron

    init_megatron(1)
    return build_gpt_model(model, vffn, tensor_parallel_size=1).eval()


@torch.no_grad()
def verify_export(megatron_sd: dict, model, vffn, hf_dir, tokens: torch.Tensor | None = None,
                  new_tokens: int = 16) -> dict:
    """Megatron (TP=1, eval, fp32) vs the exported folder loaded with transformers (fp32): max abs logit diff and
    whether greedy decoding agrees. Needs megatron-core (imports it) but no launcher."""
    from transformers import AutoModelForCausalLM

    from .convert import load_into_megatron

    mg = build_megatron(model, vffn)
    load_into_megatron(mg, megatron_sd)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
    if tokens is None:
        tokens = torch.randint(0, model.vocab_size, (2, min(model.seq_length, 64)),
                               generator=torch.Generator().manual_seed(0))
    diff = (hf(tokens).logits.float() - megatron_logits(mg, tokens)).abs().max().item()
    prompt = tokens[:, :8]
    same = torch.equal(megatron_greedy(mg, prompt, new_tokens), hf_greedy(hf, prompt, new_tokens))
    return {"max_abs_logit_diff": diff, "greedy_equal": same, "greedy_tokens": new_tokens}


# ----------------------------------------------------------------------------------------- export verification
class VerificationError(ValueError):
    """An exported folder does not reproduce its checkpoint; the message names the first difference."""


def _folder_dtype(raw: dict, where) -> str:
    from .export import DTYPES

    name = raw.get("dtype") or raw.get("torch_dtype")
    by_torch = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    if name not in by_torch or by_torch[name] not in DTYPES:
        raise VerificationError(f"{where}/config.json: dtype {name!r} is not one an export writes "
                                f"({', '.join(by_torch)})")
    return by_torch[name]


def _weight_files(folder) -> dict:
    """{tensor name: safetensors file name} of the folder (one file or a sharded index)."""
    from safetensors import safe_open

    p = Path(folder)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = {}
        for file in sorted(set(weight_map.values())):
            if not (p / file).is_file():
                raise VerificationError(f"{p}: {file}, named by model.safetensors.index.json, is missing")
            with safe_open(str(p / file), framework="pt") as f:
                for k in f.keys():
                    names[k] = file
        wrong = sorted(k for k in set(weight_map) | set(names) if weight_map.get(k) != names.get(k))
        if wrong:
            raise VerificationError(f"{p}: model.safetensors.index.json does not match the shards for {wrong[:4]}")
        return names
    if not (p / "model.safetensors").is_file():
        raise VerificationError(f"{p}: no model.safetensors or model.safetensors.index.json (not an export?)")
    with safe_open(str(p / "model.safetensors"), framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def compare_config(hf_dir, model, vffn) -> None:
    """config.json describes the checkpoint's architecture (every field the conversion derives)."""
    from .convert import hf_config_fields

    raw = json.loads((Path(hf_dir) / "config.json").read_text())
    for key, want in hf_config_fields(model, vffn).items():
        have = raw.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            have = {k: have.get(k) for k in want}
        if have != want:
            raise VerificationError(f"config.json: {key} is {have!r}, the checkpoint's architecture has {want!r}")
    if (vffn is None) != (raw.get("model_type") == "llama"):
        raise VerificationError(f"config.json: model_type {raw.get('model_type')!r} does not match the checkpoint "
                                f"({'dense' if vffn is None else 'VersatileFFN'})")


def compare_export_tensors(hf_dir, megatron_sd: dict, model, vffn) -> dict:
    """Tensor-by-tensor, exact: every tensor of the folder's safetensors against the checkpoint's state dict
    converted through the mapping table (:func:`vffn_hf.convert.megatron_to_hf`) and cast to the folder's dtype
    (a bf16 export is compared with the rounded values). Raises :class:`VerificationError` naming the first
    (in name order) tensor that is missing, extra, of another dtype / shape or differs in any element.
    Reads one tensor at a time."""
    from safetensors import safe_open

    from .convert import megatron_to_hf
    from .export import export_weights

    p = Path(hf_dir)
    dtype = _folder_dtype(json.loads((p / "config.json").read_text()), p)
    expected = export_weights(megatron_to_hf(megatron_sd, model, vffn), model, dtype)
    files = _weight_files(p)
    missing, extra = sorted(set(expected) - set(files)), sorted(set(files) - set(expected))
    if missing:
        raise VerificationError(f"tensor {missing[0]} of the checkpoint is missing from the export"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise VerificationError(f"tensor {extra[0]} ({files[extra[0]]}) is not in the checkpoint"
                                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    bad = []
    by_file: dict = {}
    for name in sorted(files):
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with safe_open(str(p / file), framework="pt") as f:
            for name in names:
                have, want = f.get_tensor(name), expected[name]
                if have.dtype != want.dtype or have.shape != want.shape:
                    bad.append((name, f"is {have.dtype} {tuple(have.shape)}, expected {want.dtype} "
                                      f"{tuple(want.shape)} (file {file})"))
                elif not torch.equal(have, want):
                    delta = (have.float() - want.float()).abs()
                    delta[have.isnan() & want.isnan()] = 0
                    ne = (have != want) & ~(have.isnan() & want.isnan())
                    first = tuple(int(i) for i in ne.nonzero()[0])
                    bad.append((name, f"differs from the checkpoint in {int(ne.sum())} of {have.numel()} elements "
                                      f"(max abs diff {delta.nan_to_num(float('inf')).max().item():.3g}, first at "
                                      f"index {first}: {have[first].item():.6g} vs {want[first].item():.6g}; "
                                      f"file {file})"))
    if bad:
        bad.sort()
        more = f"; {len(bad) - 1} more differ: {', '.join(n for n, _ in bad[1:5])}" if len(bad) > 1 else ""
        raise VerificationError(f"tensor {bad[0][0]} {bad[0][1]}{more}")
    return {"tensors": len(files), "dtype": dtype}


def verify_folder(hf_dir, megatron_sd: dict, model, vffn, logits: bool = True, tol: float = 1e-4,
                  log=print) -> dict:
    """The full export verification: config fields, every tensor exactly (:func:`compare_export_tensors`), then
    the logit / greedy check against megatron run on the same (dtype-rounded) weights, so the tolerance ``tol``
    holds for bf16 exports too. Raises :class:`VerificationError` on the first failure."""
    compare_config(hf_dir, model, vffn)
    res = compare_export_tensors(hf_dir, megatron_sd, model, vffn)
    log(f"verify: {res['tensors']} tensors identical to the checkpoint ({res['dtype']}); config.json matches")
    if not logits:
        return res
    from .export import DTYPES

    rounded = {k: v.to(DTYPES[res["dtype"]]).float() if v.is_floating_point() else v for k, v in megatron_sd.items()}
    res.update(verify_export(rounded, model, vffn, hf_dir))
    ok = res["greedy_equal"] and res["max_abs_logit_diff"] <= tol
    log(f"verify: max abs logit diff {res['max_abs_logit_diff']:.3e} (megatron TP=1 on the {res['dtype']} weights "
        f"vs transformers, tolerance {tol:g}), greedy {res['greedy_tokens']} tokens "
        f"{'equal' if res['greedy_equal'] else 'DIFFER'}")
    if not ok:
        raise VerificationError(f"the exported model's logits / greedy decoding differ from megatron's "
                                f"(max abs diff {res['max_abs_logit_diff']:.3e} > {tol:g} or greedy differs)")
    return res
