"""Measure how long a two-host run takes to notice a lost host (the README's figures; root, ``ip netns``).

    python tests/scripts/two_host_detection.py kill|link [section.key=value ...]

Two namespaces (tests/helpers/netns.py), one launch/torchrun.sh each, the tiny config (fp32, 1 process per
host) with the given overrides (e.g. parallel.heartbeat_timeout_seconds=5; none: the defaults). After the
step-6 checkpoint, ``kill`` SIGKILLs host 1's processes, ``link`` sets its veth down; prints the seconds until
each surviving host's launcher exited, its exit code and the error line it printed.
"""
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package

from helpers import REPO  # noqa: E402
from helpers.netns import launch, skip_reason, two_hosts  # noqa: E402
from helpers.workspace import make_workspace, run_overrides  # noqa: E402


def main(mode: str, overrides: list[str]) -> int:
    if mode not in ("kill", "link") or (reason := skip_reason()):
        print(__doc__ if mode not in ("kill", "link") else f"cannot run: {reason}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="vffn-detect-"))
    ws = make_workspace(root / "ws")
    args = ["--config", str(REPO / "configs" / "tiny.yaml"),
            *run_overrides(ws, root / "run", schedule__train_steps=100000, checkpoint__interval=3), *overrides]
    with two_hosts() as hosts:
        procs = launch(hosts, args, root, "run")
        try:
            procs[0].wait_for("checkpoints/step_00000006", 600)
            t0 = time.monotonic()
            if mode == "kill":
                procs[1].kill()
            else:
                hosts[1].set_link(False)
            for i, p in enumerate(procs[:1] if mode == "kill" else procs):
                rc = p.wait(4000)
                line = re.search(r"^error: .*$", p.output(), re.MULTILINE)
                print(f"host {i}: exited {rc} after {time.monotonic() - t0:.1f} s: {line.group(0) if line else '-'}")
        finally:
            for p in procs:
                p.kill()
    print(f"logs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]))
