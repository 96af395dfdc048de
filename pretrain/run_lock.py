"""Run safety at start-up: one run per output folder, and workers that die with their launcher.

**Output-folder lock.** A run holds an exclusive ``fcntl.flock`` on ``<output_dir>/.lock`` (and on
``<checkpoint.dir>/.lock`` when the checkpoints live outside output_dir) for its whole lifetime; the file
records the holder (PID, host, start time, command). Only global rank 0 takes it (on every node the other
ranks never touch it, so nothing blocks and a node-local output_dir on other nodes is not locked), before
anything is read from or written to the folder. Rank 0's verdict reaches every rank through one broadcast
right after the process group starts (``agree``), so a refused run exits 2 on every rank together instead of
leaving ranks waiting in a collective, and a launcher reports the workers' code. A lock whose holder died is
free again (the kernel drops a flock with its process) and is taken over with a notice. On a filesystem
without flock (``ENOLCK``/``EOPNOTSUPP``, some NFS mounts) the recorded holder decides: same host and its
PID gone (or reused by a younger process) means stale and taken over; a live holder, or one on another host
that cannot be checked, refuses the run with the file to delete if no run is using the folder.

**Parent watch.** A worker started by a launcher (torchrun, the deepspeed launcher: ``LOCAL_RANK`` set)
asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux) and runs a daemon
thread that kills it when ``os.getppid()`` changes (re-parented: the launcher is gone), polled every second.
A kill mid-save is safe: ``latest`` moves only after a complete write. A plain ``python -m pretrain`` (no
launcher) is not watched: it may outlive its shell (nohup).
"""
from __future__ import annotations

import ctypes
import datetime
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

LOCK_NAME = ".lock"
_PR_SET_PDEATHSIG = 1
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputDirLocked(RuntimeError):
    """Another (live) run holds the folder; the message names it and the fix."""


# ----------------------------------------------------------------------------------------- lock
def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone, no permission or no psutil: unknown
        return None


def _pid_alive(pid: int, started: Optional[float]) -> bool:
    """Is ``pid`` (recorded with its process start time) still that process on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now_start = _process_start(pid)
    if started is not None and now_start is not None and abs(now_start - started) > 2.0:
        return False  # the PID was reused by a younger process
    return True


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        owner = json.loads(raw.decode() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "a run that did not record itself"
    return (f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"
            + (f" ({owner['command']})" if owner.get("command") else ""))


@dataclass
class RunLock:
    """Held locks (file descriptors); released by the kernel when the process exits, or by ``release``."""
    fds: dict  # folder -> fd
    created: set = None  # folders this run created (removed again by abort_start when left empty)

    def release(self) -> None:
        for fd in self.fds.values():
            try:
                os.ftruncate(fd, 0)  # a clean exit leaves no holder behind (the file stays: see _lock_one)
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def _lock_one(folder: str, notices: list, created: set) -> int:
    if not os.path.isdir(folder):
        created.add(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    # never unlinked: a second run could lock a deleted inode while a third creates a new file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flock_ok = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            raise OutputDirLocked(
                f"{folder} is in use by another run: {_describe(owner)}. Two runs in one folder interleave "
                f"metrics and overwrite each other's checkpoints. Wait for that run to finish or stop it"
                + (f" (kill {owner['pid']} on {owner['host']})" if owner.get("pid") else "")
                + f", or give this run another output_dir=... (lock file: {path})") from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            flock_ok = False
        owner = _read_owner(fd)
        host = socket.gethostname()
        if owner.get("pid") and not (owner.get("pid") == os.getpid() and owner.get("host") == host):
            same_host = owner.get("host") == host
            alive = same_host and _pid_alive(int(owner["pid"]), owner.get("start_time"))
            if alive or (not same_host and not flock_ok):
                why = ("is still running" if alive else
                       "runs on another host and this filesystem has no flock to tell whether it is alive")
                raise OutputDirLocked(
                    f"{folder} is in use by another run: {_describe(owner)}, which {why}. Wait for it to finish "
                    f"or stop it, or give this run another output_dir=...; if no run is using the folder, delete "
                    f"{path}")
            notices.append(f"took over the lock of {folder} from a run that is no longer running "
                           f"({_describe(owner)})")
        me = {"pid": os.getpid(), "host": host, "start_time": _process_start(os.getpid()) or time.time(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:200], "flock": flock_ok}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise


def lock_dirs(cfg) -> list[str]:
    """output_dir, and the checkpoint folder when it is not inside output_dir."""
    out = os.path.realpath(cfg.output_dir)
    dirs = [out]
    ck = os.path.realpath(cfg.checkpoint_dir)
    if os.path.commonpath([out, ck]) != out:
        dirs.append(ck)
    return dirs


def acquire(folders: list[str]) -> tuple[RunLock, list[str]]:
    """Lock every folder (all or none); returns the lock and notices (stale locks taken over)."""
    lock, notices = RunLock({}, set()), []
    try:
        for folder in folders:
            lock.fds[folder] = _lock_one(folder, notices, lock.created)
    except BaseException:
        lock.release()
        raise
    return lock, notices


_HELD: Optional[RunLock] = None  # kept for the process's lifetime


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def lock_run(cfg) -> Optional[str]:
    """Global rank 0 locks the run's folders; returns None, or the refusal message. Other ranks: None."""
    global _HELD
    if global_rank() != 0:
        return None
    held = _HELD.fds if _HELD is not None else {}
    try:
        lock, notices = acquire([d for d in lock_dirs(cfg) if d not in held])  # in-process reruns: the new ones
        if _HELD is None:
            _HELD = lock
        else:
            _HELD.fds.update(lock.fds)
            _HELD.created |= lock.created
    except OutputDirLocked as e:
        return str(e)
    except OSError as e:
        return f"cannot create the lock file in {cfg.output_dir}: {e}; check that the folder is writable"
    for n in notices:
        print(f"WARNING: {n}", flush=True)
    return None


def agree(refusal: Optional[str], timeout_minutes: int) -> Optional[str]:
    """Rank 0's verdict on every rank: starts the process group (when launched with several ranks) and
    broadcasts it. Every rank calls it at the same point, so none waits on a rank that left."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return refusal
    import torch.distributed as dist

    from vffn_megatron.runtime import init_distributed

    init_distributed(timeout_minutes=timeout_minutes)
    box = [refusal]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def abort_start() -> None:
    """A refused or misconfigured run: remove the folders the lock created (when they hold only the lock
    file: nothing was started or written), and tear down the process group ``agree`` started, if any."""
    global _HELD
    if _HELD is not None:
        for folder in _HELD.created or ():
            try:
                if os.listdir(folder) == [LOCK_NAME]:
                    os.unlink(os.path.join(folder, LOCK_NAME))
                    os.rmdir(folder)
            except OSError:
                pass
        _HELD.release()
        _HELD = None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from vffn_megatron.runtime import destroy

        destroy()


# ----------------------------------------------------------------------------------------- parent watch
def watch_parent(poll_s: float = 1.0) -> bool:
    """Die with the launcher (see module docstring). Returns whether the watch was installed."""
    if "LOCAL_RANK" not in os.environ or os.environ.get("VFFN_NO_PARENT_WATCH"):
        return False
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still covers it
    if os.getppid() != parent:  # died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def run():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"launcher (PID {parent}) is gone: stopping this worker (PID {os.getpid()})",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup: a partial save never becomes `latest`

    threading.Thread(target=run, name="vffn-parent-watch", daemon=True).start()
    return True
