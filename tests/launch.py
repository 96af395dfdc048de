"""Run a script under torchrun with N local processes (gloo on CPU), for the distributed tests."""
import os
import signal
import subprocess

from vffn_megatron.device import torchrun_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(script: str, nproc: int, *args: str, timeout: float = 600, env: dict | None = None):
    """Run ``script args`` on ``nproc`` ranks; raise with the output on failure; kill the group on timeout."""
    cmd = torchrun_command(nproc, [script, *args])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
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
