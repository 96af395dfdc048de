"""Test helpers (no tests here). tests/conftest.py puts tests/ on sys.path, so tests write
``from helpers.workspace import make_workspace``; the torchrun scripts in tests/scripts/ put tests/ there themselves.

* ``procs``: launched processes (Proc, run_ok, launch_env) and the torchrun runner of the distributed tests;
* ``workspace``: tiny tokenizer / datasets / workspace, run overrides, tiny.yaml configs, losses of a run;
* ``data``: session-cached real data for the data-tool tests (bundled corpus, trained tokenizers, tools/*.py);
* ``block``: one VersatileFFN block and the float64 reference on the same input;
* ``hf``: tiny models and one batch for the HF interop tests and their torchrun script.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
