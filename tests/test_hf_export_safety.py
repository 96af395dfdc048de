"""tools/export_hf.py cannot destroy what it did not write, and its verification catches any changed tensor
(issue 15, cases 1 and 10). The checkpoint is a ZeRO-0 trainer checkpoint written directly (step directory with
config.yaml + mp_rank_00_model_states.pt + latest): no launcher needed."""
import dataclasses
import json
import os
import shutil

import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
from helpers.data import load_tool  # noqa: E402
from helpers.hf import build, gpt_config, vffn_config  # noqa: E402

STEP = "step_00000006"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, megatron_tp1):
    """A run directory R: R/checkpoints/step_00000006 (+ latest), R/metrics.jsonl, R/tensorboard/events."""
    root = tmp_path_factory.mktemp("run") / "R"
    step = root / "checkpoints" / STEP
    step.mkdir(parents=True)
    mg = build("vffn", tp=1)
    torch.save({"module": mg.state_dict()}, step / "mp_rank_00_model_states.pt")
    cfg = {"model": {**dataclasses.asdict(gpt_config()), "arch": "vffn"}, "vffn": dataclasses.asdict(vffn_config()),
           "parallel": {"zero_stage": 0, "tensor_model_parallel_size": 1}, "precision": "fp32"}
    (step / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "checkpoints" / "latest").write_text(STEP)
    (root / "metrics.jsonl").write_text('{"step": 1, "loss": 6.5}\n')
    (root / "tensorboard").mkdir()
    (root / "tensorboard" / "events.out").write_text("tb")
    return root


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _export(run_dir, out, *extra):
    return load_tool("export_hf").main(["--checkpoint", str(run_dir / "checkpoints"), "--output", str(out),
                                        "--no-tokenizer", *extra])


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    """Clean exports written with --verify (config + every tensor + logits at 1e-4), fp32 (sharded) and bf16."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for dtype in ("fp32", "bf16"):
        out[dtype] = root / dtype
        assert _export(run_dir, out[dtype], "--dtype", dtype, "--max-shard-size", "100KB", "--verify") == 0
    return out


# ----------------------------------------------------------------------------------------- case 1: --overwrite
def test_overwrite_never_deletes_the_run_or_the_checkpoint(run_dir, capsys):
    before = _snapshot(run_dir)
    for target, what in ((run_dir, "contains the checkpoint"), (run_dir / "checkpoints", "is the checkpoint"),
                         (run_dir / "checkpoints" / STEP, "is the checkpoint")):
        assert _export(run_dir, target, "--overwrite") == 2
        err = capsys.readouterr().err
        assert what in err and "would destroy it" in err and f"--output {run_dir / 'hf'}" in err, err
    assert _snapshot(run_dir) == before
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_overwrite_refuses_folders_that_are_not_pure_exports(run_dir, exports, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert _export(run_dir, other, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not a Hugging Face export written by tools/export_hf.py" in err and "thesis.tex" in err, err
    assert (other / "thesis.tex").read_text() == "years of work"

    # an earlier export with a user's file added to it: refused, naming the file
    hf = tmp_path / "hf"
    shutil.copytree(exports["fp32"], hf)
    (hf / "README.md").write_text("my model card")
    (hf / "eval").mkdir()
    assert _export(run_dir, hf, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "also holds entries the export did not write: README.md, eval" in err, err
    assert (hf / "README.md").exists()
    # a pure export is replaced (in place of the old one, complete, the marker naming its files)
    (hf / "README.md").unlink()
    (hf / "eval").rmdir()
    assert _export(run_dir, hf, "--overwrite", "--dtype", "bf16") == 0
    marker = json.loads((hf / "vffn_export.json").read_text())
    assert marker["dtype"] == "bf16" and set(marker["files"]) | {"vffn_export.json"} == set(os.listdir(hf))
    assert marker["checkpoint"] == str((run_dir / "checkpoints" / STEP).resolve())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_failed_export_leaves_the_old_one(run_dir, exports, tmp_path):
    from vffn_hf.convert import megatron_to_hf
    from vffn_hf.export import save_hf_folder
    from vffn_hf.trainer_ckpt import load_checkpoint

    hf = tmp_path / "hf"
    shutil.copytree(exports["fp32"], hf)
    before = _snapshot(hf)
    ck = load_checkpoint(run_dir / "checkpoints")

    def fail(tmp):
        assert (tmp / "model.safetensors").is_file() and (tmp / "vffn_export.json").is_file()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_hf_folder(hf, megatron_to_hf(ck.state_dict, ck.model, ck.vffn), ck.model, ck.vffn, overwrite=True,
                       before_swap=fail)
    assert _snapshot(hf) == before
    assert os.listdir(tmp_path) == ["hf"], os.listdir(tmp_path)


# ----------------------------------------------------------------------------------------- case 10: verification
def test_failed_verify_exits_1_and_keeps_the_old_export(run_dir, exports, tmp_path, monkeypatch, capsys):
    """A logit check that fails (here: forced) fails the bf16 export too, and nothing is replaced."""
    import vffn_hf.parity as parity

    hf = tmp_path / "hf"
    shutil.copytree(exports["fp32"], hf)
    before = _snapshot(hf)
    monkeypatch.setattr(parity, "verify_export", lambda *a, **k: {"max_abs_logit_diff": 0.3, "greedy_equal": False,
                                                                   "greedy_tokens": 16})
    assert _export(run_dir, hf, "--overwrite", "--dtype", "bf16", "--verify") == 1
    captured = capsys.readouterr()
    assert "greedy 16 tokens DIFFER" in captured.out
    assert "the new export" in captured.err and "an earlier export there is unchanged" in captured.err, captured.err
    assert _snapshot(hf) == before
    assert os.listdir(tmp_path) == ["hf"], os.listdir(tmp_path)


def test_clean_exports_verify(run_dir, exports, capsys):
    tool = load_tool("export_hf")
    for dtype, folder in exports.items():
        assert tool.main(["--verify-only", str(folder), "--checkpoint", str(run_dir / "checkpoints"),
                          "--checkpoint-verify", "size" if dtype == "bf16" else "full"]) == 0, dtype
        out = capsys.readouterr().out
        assert f"tensors identical to the checkpoint ({dtype})" in out and "greedy 16 tokens equal" in out, out
    assert tool.main(["--verify-only", str(run_dir), "--checkpoint", str(run_dir / "checkpoints")]) == 2
    assert "no config.json" in capsys.readouterr().err


def _first_element(t):
    t.view(-1)[0] += 1e-3


def _row(t):
    t[37] = torch.randn_like(t[37])


def _times(f):
    return lambda t: t.mul_(f)


TAMPER = {  # HF tensor name -> in-place change
    "model.layers.0.mlp.router.weight": _first_element,
    "model.embed_tokens.weight": _row,  # a row the 128-token logit spot check never sampled
    "model.layers.1.mlp.depth_router.weight": _times(1.5),
    "model.layers.0.input_layernorm.weight": _first_element,
    "model.norm.weight": _times(1.01),
    "model.layers.1.mlp.down_proj.weight": _times(-1.0),
}


CASES = [(name, "fp32") for name in TAMPER] + [("model.layers.0.mlp.router.weight", "bf16"),
                                               ("model.norm.weight", "bf16")]


@pytest.mark.parametrize("name,dtype", CASES)
def test_verify_only_names_a_tampered_tensor(run_dir, exports, tmp_path, capsys, name, dtype):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    shutil.copytree(exports[dtype], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(str(shard))
    if dtype == "bf16" and name.endswith("router.weight"):
        tensors[name].view(-1)[0] *= 1.01  # +1e-3 can round away in bf16; a 1% change cannot
    else:
        TAMPER[name](tensors[name])
    save_file(tensors, str(shard), metadata={"format": "pt"})
    rc = load_tool("export_hf").main(["--verify-only", str(folder), "--checkpoint", str(run_dir / "checkpoints")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"tensor {name} differs from the checkpoint" in err and "does not reproduce the checkpoint" in err, err


def test_verify_catches_dtype_config_and_missing_tensor(run_dir, exports, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tool = load_tool("export_hf")
    ckpt = str(run_dir / "checkpoints")
    folder = tmp_path / "hf"
    shutil.copytree(exports["fp32"], folder)
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}))
    assert tool.main(["--verify-only", str(folder), "--checkpoint", ckpt]) == 1
    assert "config.json: rope_parameters" in capsys.readouterr().err
    cfg_file.write_text(json.dumps({**cfg, "dtype": "bfloat16"}))  # fp32 weights declared bf16
    assert tool.main(["--verify-only", str(folder), "--checkpoint", ckpt]) == 1
    assert "is torch.float32" in capsys.readouterr().err
    cfg_file.write_text(json.dumps(cfg))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.router.weight"
    shard = folder / index["weight_map"].pop(name)
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert tool.main(["--verify-only", str(folder), "--checkpoint", ckpt]) == 1
    assert f"tensor {name} of the checkpoint is missing from the export" in capsys.readouterr().err
