"""Exit codes of ``python -m pretrain`` and the per-rank status file the launchers read (launch/exit_status.sh).

A module of its own because two places end a rank: ``pretrain.__main__`` (normally) and the peer watch
(pretrain/peers.py), which exits from its thread when a host is lost while the main thread may be stuck in a
collective.
"""
from __future__ import annotations

import os

EXIT_CONFIG, EXIT_NONFINITE, EXIT_SAVE, EXIT_PEER_LOST = 2, 3, 4, 5


def write(code: int) -> None:
    """This rank's outcome in ``$VFFN_EXIT_STATUS_DIR/rank_<RANK>.exit`` (nothing without the variable):
    torchrun reports 1 whenever it was signalled, so the launcher reads the workers' own codes there."""
    folder = os.environ.get("VFFN_EXIT_STATUS_DIR")
    if not folder:
        return
    try:
        path = os.path.join(folder, f"rank_{os.environ.get('RANK', '0')}.exit")
        with open(path + ".tmp", "w") as f:
            f.write(f"{code}\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # a status file is advisory: never turn a finished run into a failure
