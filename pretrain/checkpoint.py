"""Checkpoints: DeepSpeed engine files per step, verified by a manifest, ``latest`` moved only after a complete write.

Layout (DeepSpeed's own, so its tools - zero_to_fp32, ds_to_universal - work on it)::

    <dir>/step_00000100/   mp_rank_XX_model_states.pt, *optim_states.pt (DeepSpeed), config.yaml, layout.json,
                           manifest.json (size and crc32 of every other file of the directory)
    <dir>/latest           text file with the tag of the newest *complete* checkpoint

A save never writes into an existing step directory: rank 0 creates ``<dir>/.tmp_step_XXXXXXXX/`` and every rank
writes its DeepSpeed files there (``engine.save_checkpoint(tmp, tag)`` puts them in ``tmp/<tag>/`` for every
ZeRO stage and TP rank), lists them with size and crc32; rank 0 adds config.yaml / layout.json, merges the lists
into manifest.json, renames ``tmp/<tag>`` into place and only then atomically replaces ``latest``. A run killed
mid-save leaves ``latest`` and every complete step directory as they were. A failed write (a full disk, any
error) on any rank is agreed on by all ranks: the temporary directory is removed, ``latest`` is left alone and
the run stops with :class:`CheckpointSaveError` (the disk, its free space, the space needed, the fix).

Resume (:func:`resolve_resume`, before any process group) verifies the manifest (sizes always, crc32 unless
``checkpoint.verify=size``). ``checkpoint.resume=auto`` falls back to the newest verified checkpoint with a
warning naming what was skipped and why; an explicit path that fails verification is an error. An empty or
unreadable ``latest`` beside step directories is never a fresh start. Checkpoints written before manifests
existed still resume, with a warning that they are unverified.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Optional

import torch.distributed as dist

from vffn_megatron.config import KLoopConfig, MoEConfig, VersatileFFNConfig

from .config import ConfigError, RunConfig

LATEST = "latest"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp_step_"
MANIFEST_VERSION = 1
# model.* keys that choose how the same function is computed, not the weights: may change on resume
MODEL_RUNTIME_KEYS = {"attention_backend"}
_TAG_RE = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; raised on every rank with the same message (what, where, the fix)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> Optional[int]:
    m = _TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def _latest_text(ckpt_dir: str) -> tuple[bool, Optional[str], Optional[str]]:
    """(latest exists, its tag if it names a valid one, else why not)."""
    path = os.path.join(ckpt_dir, LATEST)
    if not os.path.lexists(path):
        return False, None, None
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
        text = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return True, None, f"{path} is unreadable ({type(e).__name__}: {e})"
    if not text:
        return True, None, f"{path} is empty"
    if step_of(text) is None:
        return True, None, f"{path} holds {text[:60]!r}, not a step_XXXXXXXX tag"
    return True, text, None


def read_latest(ckpt_dir: str) -> Optional[str]:
    """The tag ``latest`` names, or None when it is missing, empty or not a step tag (see :func:`resolve_resume`
    for what happens then: never a silent fresh start while step directories exist)."""
    return _latest_text(ckpt_dir)[1]


def step_dirs(ckpt_dir: str) -> list[int]:
    """Steps with a step_XXXXXXXX directory in ``ckpt_dir``, ascending."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return []
    return sorted(s for s in (step_of(n) for n in names)
                  if s is not None and os.path.isdir(os.path.join(ckpt_dir, tag_for(s))))


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_entry(path: str, checksum: bool = True, sync: bool = False) -> dict:
    """``{"size": bytes, "crc32": int}`` of one file (crc32 streamed; ``sync`` also fsyncs it to disk)."""
    size = os.path.getsize(path)
    if not checksum:
        return {"size": size}
    crc = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, "crc32": crc}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class Verdict:
    ok: bool
    problem: Optional[str] = None  # why it is unusable (names the first bad file)
    verified: bool = False  # False: an older checkpoint without a manifest (only basic checks were possible)
    total_bytes: int = 0


def _read_yaml(path: str):
    import yaml

    try:
        with open(path, "rb") as f:
            return yaml.safe_load(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}: {first}): the checkpoint is damaged") from e


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}: {e}): the checkpoint is damaged") from e


def verify_step(step_dir: str, mode: str = "full") -> Verdict:
    """Check a step directory against its manifest: every listed file present with its size, and (mode full)
    its crc32. Without a manifest (older checkpoints) only basic checks run: config.yaml / layout.json parse,
    the model-states files exist and no file is empty."""
    if not os.path.isdir(step_dir):
        return Verdict(False, f"{step_dir} does not exist")
    mpath = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(mpath):
        return _basic_checks(step_dir)
    try:
        manifest = _read_json(mpath)
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        return Verdict(False, f"{mpath} is damaged ({e})")
    total = 0
    for rel in sorted(files):
        want = files[rel]
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return Verdict(False, f"{path} is missing (listed in {MANIFEST})")
        try:
            got = file_entry(path, checksum=mode == "full" and "crc32" in want)
        except OSError as e:
            return Verdict(False, f"{path} is unreadable ({e})")
        if got["size"] != want.get("size"):
            return Verdict(False, f"{path} has {got['size']} bytes, {MANIFEST} says {want.get('size')} (truncated "
                                  f"or overwritten)")
        if "crc32" in got and got["crc32"] != want["crc32"]:
            return Verdict(False, f"{path} fails its checksum (crc32 {got['crc32']:08x}, {MANIFEST} says "
                                  f"{want['crc32']:08x}): the file is corrupt")
        total += got["size"]
    return Verdict(True, verified=True, total_bytes=total)


def _basic_checks(step_dir: str) -> Verdict:
    names = sorted(os.listdir(step_dir))
    if not any(n.endswith("model_states.pt") for n in names):
        return Verdict(False, f"{step_dir} holds no *model_states.pt file (an interrupted save?)")
    total = 0
    for n in names:
        p = os.path.join(step_dir, n)
        if os.path.isfile(p):
            size = os.path.getsize(p)
            if size == 0:
                return Verdict(False, f"{p} is empty (0 bytes: an interrupted save)")
            total += size
    try:
        for n, read in (("config.yaml", _read_yaml), ("layout.json", _read_json)):
            if n in names:
                read(os.path.join(step_dir, n))
    except ConfigError as e:
        return Verdict(False, str(e))
    return Verdict(True, verified=False, total_bytes=total)


@dataclass
class ResumePoint:
    load_dir: str
    tag: str
    warnings: list = field(default_factory=list)  # what resolve_resume skipped or could not verify
    universal: bool = False  # a universal conversion for another layout (pretrain/elastic.py), not a step directory

    @property
    def path(self) -> str:
        return os.path.join(self.load_dir, self.tag)


def _warn(msg: str) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one copy per node
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)


_UNVERIFIED = "has no manifest (written before checkpoints were verified): resuming from it unverified"


def resolve_resume(cfg: RunConfig) -> Optional[ResumePoint]:
    """Where to resume from (file checks only, before any process group): None = fresh start.

    Verifies the checkpoint (:func:`verify_step`); auto falls back to the newest good one, an explicit path
    does not. Raises ConfigError with the fix."""
    mode = cfg.checkpoint.resume
    verify = getattr(cfg.checkpoint, "verify", "full")
    if mode == "none":
        return None
    if mode == "auto":
        return _resolve_auto(cfg.checkpoint_dir, verify)
    path = os.path.abspath(mode)
    if os.path.isdir(path) and (os.path.lexists(os.path.join(path, LATEST)) or
                                (step_of(os.path.basename(path)) is None and step_dirs(path))):
        exists, tag, why = _latest_text(path)
        if tag is None:
            raise ConfigError(f"checkpoint.resume: {why or os.path.join(path, LATEST) + ' is missing'}; name a "
                              f"step directory instead (available: {_available(path)}), or use "
                              f"checkpoint.resume=auto to take the newest verified one")
        point = ResumePoint(path, tag)
    elif os.path.isdir(path):
        point = ResumePoint(os.path.dirname(path), os.path.basename(path))
    else:
        raise ConfigError(f"checkpoint.resume: {mode} is neither a checkpoint directory (with a '{LATEST}' file) "
                          f"nor a step directory; use auto, none or an existing path")
    if not os.path.isdir(point.path):
        raise ConfigError(f"checkpoint {point.path} (named by {os.path.join(point.load_dir, LATEST)}) does not exist")
    v = verify_step(point.path, verify)
    if not v.ok:
        raise ConfigError(f"checkpoint.resume: {point.path} cannot be resumed: {v.problem}. Name an older step "
                          f"directory (available in {point.load_dir}: {_available(point.load_dir)}), or use "
                          f"checkpoint.resume=auto to fall back to the newest verified one")
    if not v.verified:
        point.warnings.append(f"checkpoint {point.path} {_UNVERIFIED}")
        _warn(point.warnings[-1])
    return point


def _available(ckpt_dir: str) -> str:
    steps = step_dirs(ckpt_dir)
    return ", ".join(tag_for(s) for s in steps) if steps else "none"


def _resolve_auto(ckpt_dir: str, verify: str) -> Optional[ResumePoint]:
    exists, latest, why = _latest_text(ckpt_dir)
    steps = step_dirs(ckpt_dir)
    if not exists and not steps:
        return None  # a fresh run
    skipped = []
    if latest is not None:
        if not os.path.isdir(os.path.join(ckpt_dir, latest)):
            skipped.append(f"{latest} (named by {LATEST}) does not exist")
        # latest first, then the older ones; newer directories belong to another (abandoned) timeline
        cands = [latest] + [tag_for(s) for s in reversed(steps) if s < step_of(latest)]
    else:
        if why is None:
            why = f"{os.path.join(ckpt_dir, LATEST)} is missing"
        skipped.append(why)
        cands = [tag_for(s) for s in reversed(steps)]
    for tag in cands:
        d = os.path.join(ckpt_dir, tag)
        if not os.path.isdir(d):
            continue
        v = verify_step(d, verify)
        if not v.ok:
            skipped.append(f"{tag}: {v.problem}")
            continue
        point = ResumePoint(ckpt_dir, tag)
        if skipped:
            point.warnings.append(f"resuming from {d} (the newest verified checkpoint); skipped: " + "; ".join(skipped))
        if not v.verified:
            point.warnings.append(f"checkpoint {d} {_UNVERIFIED}")
        for w in point.warnings:
            _warn(w)
        return point
    raise ConfigError(f"checkpoint.resume=auto: no usable checkpoint in {ckpt_dir}: " + "; ".join(skipped or ["none"])
                      + ". Restore the files from a backup, name a checkpoint elsewhere with checkpoint.resume=<path>, "
                      "or start over with checkpoint.resume=none (in a new output_dir to keep these files)")


def saved_layout(point: ResumePoint) -> Optional[dict]:
    """The layout.json of a step directory (None for checkpoints older than it)."""
    path = os.path.join(point.path, "layout.json")
    if not os.path.isfile(path):
        return None
    saved = _read_json(path)
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object)")
    return saved


def check_layout(point: ResumePoint, cfg: RunConfig, world_size: int) -> Optional[str]:
    """Before starting: None for the checkpoint's own TP / DP / ZeRO layout (the exact, ordinary load); for another
    layout the change that the run converts (pretrain/elastic.py); a ConfigError for one it cannot."""
    from .elastic import layout_change

    saved = saved_layout(point)
    return None if saved is None else layout_change(saved, layout(cfg, world_size), point.path)


def check_same_model(point: ResumePoint, cfg: RunConfig) -> None:
    """Resuming into a different architecture would fail deep inside DeepSpeed: compare the saved config."""
    path = os.path.join(point.path, "config.yaml")
    if not os.path.isfile(path):
        return
    saved = _read_yaml(path) or {}
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is damaged (not a YAML mapping)")
    now = cfg.to_dict()
    diff = []
    # the model section, and the FFN block's own section of the arch in use: the other sections are unused (their
    # defaults may change between versions without changing the model)
    arch = now["model"].get("arch")
    block = {"vffn": ("vffn", VersatileFFNConfig), "kloop": ("kloop", KLoopConfig), "moe": ("moe", MoEConfig)}.get(arch)
    for section, cls in (("model", None), block) if block else (("model", None),):
        a, b = saved.get(section) or {}, now.get(section) or {}
        if not isinstance(a, dict):
            raise ConfigError(f"{path} is damaged (section {section} is not a mapping)")
        if (a == {}) != (b == {}):
            diff.append(f"{section}: {'null' if not a else 'set'} -> {'null' if not b else 'set'}")
            continue
        # tau / aux coeff / recompute may change; the rest shapes the weights or the function
        keys = sorted((set(a) | set(b)) - MODEL_RUNTIME_KEYS) if cls is None else cls.ARCH_FIELDS
        diff += [f"{section}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"checkpoint {point.path} holds a different model ({'; '.join(diff)}). Use another "
                          f"output_dir / checkpoint.dir, or checkpoint.resume=none to start from scratch")


def layout(cfg: RunConfig, world_size: int) -> dict:
    return {"tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
            "data_parallel_size": cfg.data_parallel_size(world_size), "zero_stage": cfg.parallel.zero_stage}


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # without the file name repeated
        return f"{type(e).__name__}: [Errno {e.errno}] {e.strerror}"
    return f"{type(e).__name__}: {e}"


class _GuardedWrites:
    """While DeepSpeed saves, record every file this rank writes and the first write error instead of raising it:
    DeepSpeed's own collectives inside save_checkpoint then still run on every rank (no hang), and the ranks agree
    on the failure afterwards."""

    def __init__(self, engine):
        self.engine, self.paths, self.error = engine, [], None
        self._saved = {}

    def __enter__(self):
        ce = getattr(self.engine, "checkpoint_engine", None)
        if ce is not None:
            orig = ce.save

            def save(state_dict, path, *a, **k):
                if self.error is None:
                    try:
                        orig(state_dict, path, *a, **k)
                    except Exception as e:  # ENOSPC surfaces as OSError or torch's RuntimeError
                        self.error = f"writing {path}: {_describe(e)}"
                self.paths.append(path)

            self._saved[(ce, "save")] = ce.__dict__.get("save")
            ce.save = save
        if hasattr(self.engine, "_copy_recovery_script"):
            orig_copy = self.engine._copy_recovery_script

            def copy(save_path):
                try:
                    orig_copy(save_path)
                except Exception as e:  # the zero_to_fp32.py copy: advisory, never a failed save
                    print(f"WARNING: could not copy DeepSpeed's recovery scripts to {save_path}: {e}", flush=True)

            self._saved[(self.engine, "_copy_recovery_script")] = self.engine.__dict__.get("_copy_recovery_script")
            self.engine._copy_recovery_script = copy
        return self

    def __exit__(self, *exc):
        for (obj, name), prev in self._saved.items():
            if prev is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, prev)
        return False


class Checkpointer:
    """Save / load / prune for one run. Every method is a collective: call it on all ranks."""

    def __init__(self, cfg: RunConfig, world_size: int):
        self.cfg, self.dir, self.world_size = cfg, cfg.checkpoint_dir, world_size
        self.rank = dist.get_rank()
        self.last_saved: Optional[int] = None  # step of the newest checkpoint of this run (or resumed from)

    def should_save(self, step: int, last_step: bool = False, forced: bool = False) -> bool:
        """Whether step ``step`` is saved: every checkpoint.interval steps, at the last step (save_at_end), or
        ``forced`` (a stop signal); never twice for one step. The same answer on every rank."""
        if self.last_saved == step:
            return False
        c = self.cfg.checkpoint
        return bool(forced or (c.interval and step % c.interval == 0) or (last_step and c.save_at_end))

    def maybe_save(self, engine, step: int, client_state, last_step: bool = False,
                   forced: bool = False) -> Optional[str]:
        """Save if :meth:`should_save` says so; ``client_state()`` builds the saved state. Returns the path."""
        if not self.should_save(step, last_step, forced):
            return None
        return self.save(engine, step, client_state())

    def save(self, engine, step: int, client_state: dict) -> str:
        """Write ``<dir>/<tag>`` through a temporary directory (see the module docstring); raises
        CheckpointSaveError on every rank when any rank failed."""
        tag = tag_for(step)
        path = os.path.join(self.dir, tag)
        # 1. rank 0 chooses the temporary directory
        tmp, err = None, None
        if self.rank == 0:
            try:
                os.makedirs(self.dir, exist_ok=True)
                self._remove_stale_tmp()
                tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.dir)
            except OSError as e:
                err = f"creating a temporary directory in {self.dir}: {_describe(e)}"
        box = [(tmp, err)]
        dist.broadcast_object_list(box, src=0)
        tmp, err = box[0]
        # 2. every rank writes its DeepSpeed files there and lists them
        entries = {}
        if err is None:
            with _GuardedWrites(engine) as g:
                try:
                    engine.save_checkpoint(tmp, tag=tag, client_state=client_state, save_latest=False)
                except Exception as e:
                    g.error = g.error or _describe(e)
            err = g.error
            if err is None:
                try:
                    base = os.path.join(tmp, tag)
                    for p in g.paths:
                        entries[os.path.relpath(p, base)] = file_entry(p, sync=True)
                except OSError as e:
                    err = f"reading back {p}: {_describe(e)}"
        # 3. all ranks learn every rank's outcome; rank 0 completes (or cleans up) the save
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (entries, None if err is None else f"rank {self.rank}: {err}"))
        failures = [e for _, e in gathered if e]
        result = None
        if self.rank == 0:
            if not failures:
                try:
                    self._commit(tmp, tag, step, gathered)
                except Exception as e:
                    failures = [f"rank 0: completing {path}: {type(e).__name__}: {e}"]
            if failures:
                result = self._failure_message(tag, tmp, failures)
        box = [result]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise CheckpointSaveError(box[0])
        self.last_saved = step
        return path

    def _commit(self, tmp: str, tag: str, step: int, gathered: list) -> None:
        """Rank 0: config.yaml, layout.json, manifest.json into tmp/<tag>, rename into place, move latest, prune."""
        staged = os.path.join(tmp, tag)
        with open(os.path.join(staged, "config.yaml"), "w") as f:
            f.write(self.cfg.to_yaml())
        _write_atomic(os.path.join(staged, "layout.json"), json.dumps(layout(self.cfg, self.world_size)))
        files = {}
        for rank_entries, _ in gathered:
            files.update(rank_entries)
        for name in ("config.yaml", "layout.json"):
            files[name] = file_entry(os.path.join(staged, name), sync=True)
        _write_atomic(os.path.join(staged, MANIFEST), json.dumps(
            {"version": MANIFEST_VERSION, "tag": tag, "step": step, "world_size": self.world_size,
             "files": dict(sorted(files.items()))}, indent=1))
        _fsync_dir(staged)
        final = os.path.join(self.dir, tag)
        old = None
        if os.path.lexists(final):  # e.g. resumed from an older step: keep the old one until the new one is in place
            old = os.path.join(tmp, f"replaced_{tag}")
            os.rename(final, old)
        try:
            os.rename(staged, final)
        except OSError:
            if old is not None:
                os.rename(old, final)
            raise
        for script in os.listdir(tmp):  # DeepSpeed's zero_to_fp32.py / zero_to_torch.py, beside the step dirs
            if script.endswith(".py"):
                os.replace(os.path.join(tmp, script), os.path.join(self.dir, script))
        _fsync_dir(self.dir)
        _write_atomic(os.path.join(self.dir, LATEST), tag)
        _fsync_dir(self.dir)
        shutil.rmtree(tmp, ignore_errors=True)
        self._prune(step)

    def _failure_message(self, tag: str, tmp: Optional[str], failures: list) -> str:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        latest = read_latest(self.dir)
        needed = verify_step(os.path.join(self.dir, latest), "size").total_bytes if latest else 0
        try:
            free_bytes = shutil.disk_usage(self.dir).free
            free = _human(free_bytes) + (" (less than one checkpoint: the disk is full)" if free_bytes < needed else "")
        except OSError:
            free = "unknown"
        need = f"a checkpoint of this run takes about {_human(needed)} (the size of {latest})" if needed else \
            "no earlier checkpoint to size one by"
        keep = self.cfg.checkpoint.keep_last
        return (f"saving checkpoint {tag} in {self.dir} failed: {failures[0]}"
                + (f" (and {len(failures) - 1} more rank(s))" if len(failures) > 1 else "")
                + f". The partial save was removed; {os.path.join(self.dir, LATEST)} still names "
                f"{latest or 'no checkpoint'}. Free space on that disk: {free}; {need}"
                + (f" and checkpoint.keep_last={keep} keeps {keep} of them" if keep else "")
                + ". Free space there, or set checkpoint.dir to a disk with room, then rerun the same command: it "
                  "resumes from the last complete checkpoint")

    def _remove_stale_tmp(self) -> None:
        """Temporary directories of saves killed midway (their step directory was never renamed into place)."""
        for name in os.listdir(self.dir):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

    def _prune(self, latest_step: int) -> None:
        keep = self.cfg.checkpoint.keep_last
        if keep <= 0:
            return
        steps = [s for s in step_dirs(self.dir) if s <= latest_step]
        for s in steps[:-keep]:
            shutil.rmtree(os.path.join(self.dir, tag_for(s)), ignore_errors=True)

    def load(self, engine, point: ResumePoint) -> dict:
        try:
            path, client_state = engine.load_checkpoint(point.load_dir, tag=point.tag, load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        except Exception as e:
            raise RuntimeError(
                f"DeepSpeed could not load the checkpoint {point.path}: {type(e).__name__}: {e}. Its files passed "
                f"checkpoint.verify={self.cfg.checkpoint.verify}; if it is damaged, resume from an older step "
                f"(checkpoint.resume=<step directory>)") from e
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {point.path}")
        client_state = client_state or {}
        # our "skipped_steps" overwrites DeepSpeed's key of that name when saved, and DeepSpeed's load takes it back
        # out of the client state into engine.skipped_steps
        client_state.setdefault("skipped_steps", getattr(engine, "skipped_steps", 0))
        self.last_saved = int(client_state.get("step", 0))
        return client_state


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM pre-emption, torchrun shutdown) and SIGINT (Ctrl-C; torchrun forwards it) only
    set a flag; the training loop agrees on it across ranks after a step, saves a checkpoint and exits cleanly.
    A second Ctrl-C interrupts at once (KeyboardInterrupt), without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # the impatient second Ctrl-C
        self.received = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
