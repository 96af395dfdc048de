"""Launched test processes with clean teardown, and the torchrun runner of the distributed tests."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from vffn_megatron.device import configure_environment, torchrun_command

from helpers import REPO


def torchrun(script: str, nproc: int, *args: str, timeout: float = 600, env: dict | None = None):
    """Run ``script args`` on ``nproc`` ranks; raise with the output on failure; kill the group on timeout."""
    cmd = torchrun_command(nproc, [script, *args])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun {script} timed out after {timeout}s:\n{out[-5000:]}")
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} failed ({proc.returncode}):\n{out[-8000:]}")
    return out


def launch_env(**extra) -> dict:
    """Environment of a launched test process: one thread, unbuffered, this checkout, the device's accelerator."""
    env = configure_environment({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                 "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


class Proc:
    """A launched process group; output goes to a log file; always killed (whole group) on exit."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None):
        self.log_path = log
        self._log = open(log, "w")
        self.p = subprocess.Popen(cmd, cwd=REPO, env=env or launch_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if text in self.output():
                return
            if self.p.poll() is not None:
                raise AssertionError(f"process exited ({self.p.returncode}) before printing {text!r}:\n"
                                     f"{self.output()[-6000:]}")
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"timed out waiting for {text!r}:\n{self.output()[-6000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out after {timeout}s:\n{self.output()[-6000:]}")

    def tree(self) -> list:
        """The launcher and all its descendants (torchrun starts workers in their own sessions, so
        killing the process group alone would orphan them)."""
        import psutil

        try:
            root = psutil.Process(self.p.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int, tree: bool = False) -> None:
        """``sig`` to the launcher only (it forwards to the workers), or to every process of the tree."""
        if not tree:
            self.p.send_signal(sig)
            return
        import psutil

        for proc in self.tree():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def kill(self) -> None:
        if self.p.poll() is None or self.tree()[1:]:
            self.signal(signal.SIGKILL, tree=True)
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()
        if not self._log.closed:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def run_ok(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> str:
    with Proc(cmd, log, env) as p:
        rc = p.wait(timeout)
        out = p.output()
    assert rc == 0, f"{' '.join(cmd[:8])} ... failed ({rc}):\n{out[-8000:]}"
    return out


def run_workspace_script(script: str, root: Path, nproc: int = 2, timeout: float = 420) -> tuple[dict, str]:
    """``tests/scripts/<script> WORKSPACE_JSON OUT_JSON RUN_ROOT`` on ``nproc`` ranks over a fresh
    make_workspace under ``root``; returns (the JSON it wrote to OUT_JSON, its output)."""
    import json

    from helpers.workspace import make_workspace

    (root / "ws.json").write_text(json.dumps(make_workspace(root / "ws")))
    out = root / "out.json"
    cmd = torchrun_command(nproc, [str(REPO / "tests" / "scripts" / script), str(root / "ws.json"), str(out),
                                   str(root / "runs")])
    log = run_ok(cmd, root / "log.txt", timeout=timeout, env=launch_env())
    return json.loads(out.read_text()), log
