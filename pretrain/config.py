"""Typed run configuration: YAML file (+ optional ``base:`` preset) + dotted command-line overrides.

Everything here is pure Python and runs before any process group exists, so a bad config fails in
seconds with a message naming the key. Checks that need files (data, tokenizer) live in
:mod:`pretrain.checks`; checks that need the world size take it as an argument.

YAML shape (see configs/tiny.yaml)::

    base: tiny.yaml            # optional: a preset this file overrides (path relative to this file)
    run_name: ...
    output_dir: runs/x         # checkpoints/, tensorboard/, config.yaml, metrics.jsonl
    model: {arch: vffn | dense | kloop | moe, num_layers: ..., ...}   # GPTConfig fields + arch
    vffn: {num_experts: ..., tau_decay: auto, ...}      # VersatileFFNConfig; used by arch: vffn only
    kloop: {loops: 2}                                   # KLoopConfig; used by arch: kloop only
    moe: {num_experts: 8, top_k: 2, ...}               # MoESection (MoEConfig); used by arch: moe only
    parallel: {...}  data: {...}  optimizer: {...}  schedule: {...}  checkpoint: {...}  logging: {...}
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from vffn_megatron.config import ATTENTION_BACKENDS, UPCYCLE_EXPERTS, KLoopConfig, MoEConfig
from vffn_megatron.config import VersatileFFNConfig, VFFNConfigError
from vffn_megatron.model import GPTConfig


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and how to fix it."""


# ----------------------------------------------------------------------------------------- sections
ARCHS = ("vffn", "dense", "kloop", "moe")  # model.arch: the FFN block of every layer

@dataclass
class ModelConfig(GPTConfig):
    """megatron GPTModel architecture (all GPTConfig fields) plus the FFN kind."""

    # "vffn": VersatileFFN block (the `vffn` section); "dense": megatron's SwiGLU MLP; "kloop": the shared FFN
    # applied kloop.loops times, no gate (baseline); "moe": megatron's MoELayer (the `moe` section)
    arch: str = "vffn"
    # None: the tokenizer's vocabulary padded up to a multiple of make_vocab_size_divisible_by (and of TP).
    vocab_size: Optional[int] = None
    make_vocab_size_divisible_by: int = 128
    # sdpa: torch's scaled_dot_product_attention (flash / memory-efficient kernels on GPUs, fused on CPU);
    # local: megatron's DotProductAttention (materialises the s x s scores; kept for parity checks)
    attention_backend: str = "sdpa"

    def gpt(self) -> GPTConfig:
        names = {f.name for f in dataclasses.fields(GPTConfig)}
        return GPTConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class MoESection(MoEConfig):
    """megatron's MoE baseline (arch: moe), MoEConfig's fields with the paper's defaults: a shared expert of
    model.ffn_hidden_size + num_experts routed experts of hidden ffn_hidden_size / num_experts, top-2, aux 1e-5.
    The Switch-style full-size experts variant: shared_expert: false, expert_ffn_hidden_size: <ffn_hidden_size>."""

    # checkpoint.init_from of a dense checkpoint (upcycling): the dense FFN becomes the shared expert; the routed
    # experts are "slices" (expert e = the dense FFN's hidden units [e*Fe, (e+1)*Fe): needs Fe = F / num_experts)
    # or "fresh" (the trainer's own initialisation from the run seed). The router is always fresh.
    upcycle_experts: str = "slices"


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3 over the data-parallel group
    timeout_minutes: int = 30  # process-group timeout (collectives that hang fail after this)
    # extra DeepSpeed config, deep-merged into the generated one (offload, bucket sizes, ...): keys the run config
    # owns are refused naming the key to use instead (DEEPSPEED_OWNED_KEYS); DeepSpeed validates the rest
    deepspeed_overrides: Dict[str, Any] = field(default_factory=dict)
    # Lost hosts (pretrain/peers.py): every rank bumps a counter in the job's TCP store this often; a rank
    # silent for heartbeat_timeout_seconds (or a store unreachable that long) ends the job on every host
    # with exit code 5, naming the lost rank and host. 0 disables it (a dropped link then waits out timeout_minutes).
    heartbeat_interval_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0


@dataclass
class DatasetEntry:
    path: str  # prefix of a preprocessed dataset: <path>.bin / <path>.idx
    weight: float = 1.0


@dataclass
class DataConfig:
    tokenizer: str = ""  # directory written by tools/train_tokenizer.py (vffn_data.tokenizer.load_tokenizer)
    datasets: List[DatasetEntry] = field(default_factory=list)  # blended by weight
    split: str = "98,2,0"  # train,valid,test shares of every dataset's documents
    seed: int = 1234  # document shuffling
    cache_dir: Optional[str] = None  # megatron's index cache; default <output_dir>/data_cache
    num_workers: int = 0  # DataLoader workers per rank
    check_token_ids: bool = True  # refuse data with token ids >= the tokenizer's vocabulary


@dataclass
class OptimizerConfig:
    """AdamW (torch's, through DeepSpeed: no compiled op)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1  # not applied to norms and other 1-D parameters
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables (DeepSpeed's own default would be 1.0)


@dataclass
class ScheduleConfig:
    train_steps: int = 100  # optimizer steps
    micro_batch_size: int = 4  # sequences per rank per forward
    global_batch_size: int = 8  # sequences per optimizer step = micro * data-parallel size * accumulation
    warmup_steps: int = 10  # linear warmup from lr/warmup_steps to lr
    decay_steps: Optional[int] = None  # cosine decay to min_lr ends here (default: train_steps)
    decay_style: str = "cosine"  # cosine | constant
    eval_interval: int = 0  # validation every N steps (and at the end); 0 disables
    eval_iters: int = 4  # validation batches (of global_batch_size sequences) per evaluation
    eval_at_start: bool = False  # also validate before the first update of a fresh run (step 0: e.g. an upcycled model)


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # default <output_dir>/checkpoints
    interval: int = 0  # save every N steps; 0 = only at the end
    keep_last: int = 3  # keep the newest K checkpoints; 0 keeps all
    resume: str = "auto"  # auto (latest in dir, if any) | none | <checkpoint dir or step directory>
    # a fresh run (nothing to resume) starts from these weights: a trainer checkpoint (run / checkpoints / step
    # directory, any TP / ZeRO) of a dense model (upcycled into model.arch) or of model.arch itself (copied);
    # optimizer, LR schedule, step and consumed samples start at 0 (pretrain/init_from.py)
    init_from: Optional[str] = None
    save_at_end: bool = True
    save_on_sigterm: bool = True  # SIGTERM (e.g. SLURM pre-emption): save, then exit 0
    verify: str = "full"  # resume / export check the manifest: full (sizes + crc32) | size (sizes only: huge checkpoints)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    tensorboard_dir: Optional[str] = None  # default <output_dir>/tensorboard
    log_interval: int = 1  # steps between scalar writes / console lines
    progress: str = "line"  # line | bar | none
    per_layer: bool = True  # per-layer VersatileFFN depth / sub-expert scalars


@dataclass
class RunConfig:
    run_name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 1234  # weights and VersatileFFN Gumbel noise
    precision: str = "bf16"  # bf16 | fp32
    on_nonfinite: str = "stop"  # non-finite loss: stop (error naming the step) | skip (drop the step's update)
    max_consecutive_skips: int = 10  # skip mode: this many non-finite steps in a row stop the run (exit 3)
    model: ModelConfig = field(default_factory=ModelConfig)
    vffn: Optional[VersatileFFNConfig] = field(default_factory=VersatileFFNConfig)
    kloop: Optional[KLoopConfig] = field(default_factory=KLoopConfig)
    moe: Optional[MoESection] = field(default_factory=MoESection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # -------------------------------------------------------------- derived values
    @property
    def is_vffn(self) -> bool:
        return self.model.arch == "vffn"

    @property
    def vffn_or_none(self) -> Optional[VersatileFFNConfig]:
        return self.vffn if self.is_vffn else None

    @property
    def kloop_or_none(self) -> Optional[KLoopConfig]:
        return self.kloop if self.model.arch == "kloop" else None

    @property
    def moe_or_none(self) -> Optional[MoEConfig]:
        return self.moe if self.model.arch == "moe" else None

    @property
    def ffn_block(self):
        """The FFN block config of model.arch: None (dense), VersatileFFNConfig, KLoopConfig or MoEConfig."""
        return self.vffn_or_none or self.kloop_or_none or self.moe_or_none

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.output_dir, "checkpoints")

    @property
    def tensorboard_dir(self) -> str:
        return self.logging.tensorboard_dir or os.path.join(self.output_dir, "tensorboard")

    @property
    def data_cache_dir(self) -> str:
        return self.data.cache_dir or os.path.join(self.output_dir, "data_cache")

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // self.parallel.tensor_model_parallel_size

    def grad_accum_steps(self, world_size: int) -> int:
        s = self.schedule
        return s.global_batch_size // (s.micro_batch_size * self.data_parallel_size(world_size))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.is_vffn:
            d["vffn"] = None
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------- loading
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: str, seen: tuple = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config 'base:' chain loops back to {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another config file, got {base!r}")
    return _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), raw)


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _did_you_mean(key: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys{' of ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(options))}"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp) or origin in (dict, Dict):
        return "mapping"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (and build nested dataclasses)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):  # a free-form mapping (parallel.deepspeed_overrides): its values are not typed here
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a mapping with string keys, got {value!r}")
        return copy.deepcopy(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know
        raise ConfigError(f"{key}: unsupported field type {tp}")
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    types = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{full}'{_did_you_mean(str(k), names, prefix + '.' if prefix else '')}")
        kwargs[k] = _convert(v, types[k], full)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix or 'config'} is missing required key(s): "
                          + ", ".join(f"{prefix}.{m}" if prefix else m for m in missing))
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"command-line override {item!r} must look like section.key=value (e.g. vffn.max_depth=4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"command-line override {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(tree: dict, parts: list[str], value: Any, cls=RunConfig) -> None:
    """Set ``parts`` in the raw tree, checking each level's key names against the dataclasses."""
    node, tp, path = tree, cls, []
    for i, p in enumerate(parts):
        path.append(p)
        full = ".".join(path)
        # unwrap Optional[...] to find the dataclass of the section
        if typing.get_origin(tp) is typing.Union:
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if typing.get_origin(tp) in (dict, Dict):  # inside a free-form mapping: section.mapping.any.keys=value
            for q in parts[i:-1]:
                if not isinstance(node.get(q), dict):
                    node[q] = {}
                node = node[q]
            node[parts[-1]] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {'.'.join(parts)}: '{'.'.join(path[:-1])}' is not a section")
        types = _field_types(tp)
        if p not in types:
            raise ConfigError(f"unknown config key '{full}'{_did_you_mean(p, types, '.'.join(path[:-1]) + '.' if i else '')}")
        if i == len(parts) - 1:
            node[p] = value
        else:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node, tp = node[p], types[p]


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Read YAML (+ its ``base:`` chain), apply ``key=value`` overrides, type-check and validate."""
    tree = _read_yaml(path) if path else {}
    for item in overrides or []:
        parts, value = _parse_override(item)
        _apply_override(tree, parts, value)
    cfg = from_dict(tree)
    validate(cfg)
    return cfg


def from_dict(tree: dict) -> RunConfig:
    data = tree.get("data")
    if isinstance(data, dict) and "datasets" in data:
        tree = {**tree, "data": {**data, "datasets": normalize_datasets(data["datasets"])}}
    return _build(RunConfig, resolve_tau_decay(tree), "")


def resolve_tau_decay(tree: dict) -> dict:
    """``vffn.tau_decay: auto``: the decay that takes tau from tau_start to tau_end exactly at the last update
    (0-based index train_steps - 1: tau_start * decay**(train_steps - 1) == tau_end), from the final
    schedule.train_steps (file + overrides). The number replaces ``auto``, so the saved config.yaml has it."""
    v = tree.get("vffn")
    if not isinstance(v, dict) or not isinstance(v.get("tau_decay"), str):
        return tree
    if v["tau_decay"].strip().lower() != "auto":
        try:
            float(v["tau_decay"])  # "1e-3"-style strings are numbers (the type check converts them)
            return tree
        except ValueError:
            raise ConfigError(f"vffn.tau_decay must be a number in (0, 1] or auto (reach vffn.tau_end at the "
                              f"last step), got {v['tau_decay']!r}") from None
    steps = _convert((tree.get("schedule") or {}).get("train_steps", ScheduleConfig.train_steps), int,
                     "schedule.train_steps")
    start = _convert(v.get("tau_start", VersatileFFNConfig.tau_start), float, "vffn.tau_start")
    end = _convert(v.get("tau_end", VersatileFFNConfig.tau_end), float, "vffn.tau_end")
    _need(steps >= 2, f"vffn.tau_decay: auto needs schedule.train_steps >= 2 (got {steps}): the temperature "
          f"cannot fall from tau_start to tau_end in one update; give vffn.tau_decay a number instead")
    _need(math.isfinite(start) and 0 < end < start,
          f"vffn.tau_decay: auto needs vffn.tau_start > vffn.tau_end > 0 (got tau_start {start}, tau_end {end}); "
          f"with tau_start == tau_end use vffn.tau_decay: 1.0")
    decay = (end / start) ** (1.0 / (steps - 1))
    while start * decay ** (steps - 1) > end:  # round-off: VersatileFFNConfig.tau's max() must pick tau_end
        decay = math.nextafter(decay, 0.0)
    return {**tree, "vffn": {**v, "tau_decay": decay}}


def normalize_datasets(value: Any) -> Any:
    """``data.datasets`` in any of the spellings users bring, as a list of {path, weight} mappings:

    * a bare prefix: ``runs/x/corpus_text_document``;
    * Megatron-LM's ``--data-path`` list, weights and prefixes alternating: ``[0.7, a_text_document, 0.3, b]``;
    * a list of prefixes (equal weights), or of {path, weight} mappings (the canonical form).
    Anything else is left for the type check, which names the key.
    """
    def is_weight(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(value, str):
        return [{"path": value}]
    if not isinstance(value, list) or not value or any(isinstance(v, dict) for v in value):
        return value
    if all(isinstance(v, str) for v in value):
        return [{"path": v} for v in value]
    pairs = len(value) % 2 == 0 and all(is_weight(w) and isinstance(p, str) for w, p in zip(value[::2], value[1::2]))
    if not pairs:
        raise ConfigError(f"data.datasets: {value!r} is neither a list of {{path, weight}} mappings nor a Megatron-style "
                          f"list alternating weight and path (e.g. [0.7, a_text_document, 0.3, b_text_document])")
    return [{"path": p, "weight": float(w)} for w, p in zip(value[::2], value[1::2])]


# ----------------------------------------------------------------------------------------- validation
def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _choice(value: str, key: str, options: tuple) -> None:
    _need(value in options, f"{key} must be one of {', '.join(options)}; got {value!r}"
          + (_did_you_mean(value, options) if isinstance(value, str) else ""))


def validate(cfg: RunConfig, world_size: Optional[int] = None) -> None:
    """Checks that need no files; with ``world_size`` also the batch / parallel layout."""
    _choice(cfg.model.arch, "model.arch", ARCHS)
    _choice(cfg.model.attention_backend, "model.attention_backend", ATTENTION_BACKENDS)
    _choice(cfg.precision, "precision", ("bf16", "fp32"))
    _choice(cfg.on_nonfinite, "on_nonfinite", ("stop", "skip"))
    _need(isinstance(cfg.max_consecutive_skips, int) and cfg.max_consecutive_skips >= 1,
          f"max_consecutive_skips must be an integer >= 1, got {cfg.max_consecutive_skips!r}")
    _choice(cfg.schedule.decay_style, "schedule.decay_style", ("cosine", "constant"))
    _choice(cfg.logging.progress, "logging.progress", ("line", "bar", "none"))
    tp = cfg.parallel.tensor_model_parallel_size
    _need(tp >= 1, f"parallel.tensor_model_parallel_size must be >= 1, got {tp}")
    _need(cfg.parallel.zero_stage in (0, 1, 2, 3), f"parallel.zero_stage must be 0, 1, 2 or 3, got {cfg.parallel.zero_stage}")
    _need(cfg.parallel.timeout_minutes >= 1, "parallel.timeout_minutes must be >= 1")
    _check_owned_deepspeed_keys(cfg.parallel.deepspeed_overrides)
    validate_heartbeat(cfg.parallel)
    m = cfg.model
    _need(m.make_vocab_size_divisible_by >= 1, "model.make_vocab_size_divisible_by must be >= 1")
    # megatron/VersatileFFN architecture checks (heads, query groups, ffn size vs TP; RoPE head dim)
    gpt = m.gpt()
    if gpt.vocab_size is None:
        gpt.vocab_size = tp  # placeholder: the real value is checked once the tokenizer is read
    try:
        gpt.validate(tensor_parallel_size=tp)
        if cfg.is_vffn:
            _need(cfg.vffn is not None, "model.arch is 'vffn' but the vffn section is null")
            cfg.vffn.validate(ffn_hidden_size=gpt.ffn_hidden_size, tensor_parallel_size=tp)
        if cfg.model.arch == "kloop":
            _need(cfg.kloop is not None, "model.arch is 'kloop' but the kloop section is null")
            cfg.kloop.validate()
        if cfg.model.arch == "moe":
            _need(cfg.moe is not None, "model.arch is 'moe' but the moe section is null")
            cfg.moe.validate(tensor_parallel_size=tp, ffn_hidden_size=gpt.ffn_hidden_size)
            _choice(cfg.moe.upcycle_experts, "moe.upcycle_experts", UPCYCLE_EXPERTS)
            # megatron-core 0.16.1's MoELayer raises in its first training forward when TP > 1 without sequence
            # parallelism, which the torch norms here cannot run
            _need(tp == 1, f"model.arch=moe trains only at parallel.tensor_model_parallel_size=1 (got {tp}): "
                  f"megatron-core's MoELayer refuses tensor parallelism without sequence parallelism, which this "
                  f"trainer does not support. Use data parallelism (more processes at TP=1) instead")
    except VFFNConfigError as e:
        raise ConfigError(str(e)) from None
    if m.vocab_size is not None:
        _need(m.vocab_size % tp == 0, f"model.vocab_size ({m.vocab_size}) must be divisible by "
              f"parallel.tensor_model_parallel_size ({tp}); or set model.vocab_size: null to pad the tokenizer's")
    o = cfg.optimizer
    for k in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
        v = getattr(o, k)
        _need(math.isfinite(v) and v >= 0, f"optimizer.{k} must be a finite number >= 0, got {v}")
    _need(o.lr > 0, "optimizer.lr must be > 0")
    _need(o.min_lr <= o.lr, f"optimizer.min_lr ({o.min_lr}) must be <= optimizer.lr ({o.lr})")
    _need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optimizer.beta1 / beta2 must be in [0, 1)")
    s = cfg.schedule
    for k in ("train_steps", "micro_batch_size", "global_batch_size"):
        _need(getattr(s, k) >= 1, f"schedule.{k} must be >= 1, got {getattr(s, k)}")
    _need(s.warmup_steps >= 0, "schedule.warmup_steps must be >= 0")
    _need(s.decay_steps is None or s.decay_steps >= 1, "schedule.decay_steps must be >= 1 or null")
    _need(s.eval_interval >= 0 and s.eval_iters >= 1, "schedule.eval_interval must be >= 0 and eval_iters >= 1")
    _need(s.global_batch_size % s.micro_batch_size == 0,
          f"schedule.global_batch_size ({s.global_batch_size}) must be a multiple of schedule.micro_batch_size "
          f"({s.micro_batch_size})")
    c = cfg.checkpoint
    _need(c.interval >= 0 and c.keep_last >= 0, "checkpoint.interval and checkpoint.keep_last must be >= 0")
    _need(bool(c.resume), "checkpoint.resume must be auto, none or a checkpoint path")
    _need(c.init_from is None or bool(c.init_from.strip()),
          "checkpoint.init_from must be a checkpoint path or null")
    _choice(c.verify, "checkpoint.verify", ("full", "size"))  # full: sizes + crc32; size: sizes only
    _need(cfg.logging.log_interval >= 1, "logging.log_interval must be >= 1")
    d = cfg.data
    _need(bool(d.tokenizer), "data.tokenizer is required: the directory written by tools/train_tokenizer.py")
    _need(len(d.datasets) >= 1, "data.datasets is empty: list at least one {path: <prefix>, weight: 1.0} "
          "(prefix of the .bin/.idx files written by tools/preprocess_data.py)")
    for i, e in enumerate(d.datasets):
        _need(bool(e.path), f"data.datasets[{i}].path is empty")
        _need(math.isfinite(e.weight) and e.weight > 0, f"data.datasets[{i}].weight must be > 0, got {e.weight}")
    try:
        split = [float(x) for x in d.split.split(",")]
    except ValueError:
        split = []
    _need(1 <= len(split) <= 3 and all(x >= 0 for x in split) and split[0] > 0,
          f"data.split must be 'train,valid,test' non-negative weights with train > 0 (e.g. '98,2,0'), got {d.split!r}")
    _need(s.eval_interval == 0 or (len(split) > 1 and split[1] > 0),
          "schedule.eval_interval > 0 needs a validation share in data.split (e.g. '98,2,0')")
    _need(not s.eval_at_start or s.eval_interval > 0,
          "schedule.eval_at_start needs schedule.eval_interval > 0 (the validation data is built only then)")
    _need(d.num_workers >= 0, "data.num_workers must be >= 0")
    if world_size is not None:
        validate_layout(cfg, world_size)


def validate_heartbeat(p: ParallelConfig) -> None:
    every, deadline = p.heartbeat_interval_seconds, p.heartbeat_timeout_seconds
    _need(math.isfinite(every) and every > 0,
          f"parallel.heartbeat_interval_seconds must be a number > 0, got {every!r}")
    _need(math.isfinite(deadline) and (deadline == 0 or deadline >= 2 * every),
          f"parallel.heartbeat_timeout_seconds must be 0 (no heartbeat) or at least twice "
          f"parallel.heartbeat_interval_seconds ({every}): a rank is declared lost after that long without a "
          f"heartbeat, so a shorter one would end healthy runs; got {deadline!r}")
    _need(deadline <= p.timeout_minutes * 60,
          f"parallel.heartbeat_timeout_seconds ({deadline}) is longer than parallel.timeout_minutes "
          f"({p.timeout_minutes} min): the process-group timeout would fire first; lower the first or raise the second")


# DeepSpeed config keys the trainer generates from the run config: an override would silently disagree with what
# the trainer computes from its own keys (the data position, the LR schedule, the checkpoint layout)
DEEPSPEED_OWNED_KEYS = {
    "train_batch_size": "schedule.global_batch_size",
    "train_micro_batch_size_per_gpu": "schedule.micro_batch_size",
    "gradient_accumulation_steps": "schedule.global_batch_size (accumulation = global / (micro x data-parallel size))",
    "gradient_clipping": "optimizer.grad_clip",
    "optimizer": "the optimizer section (optimizer.lr, beta1, beta2, eps, weight_decay)",
    "scheduler": "the schedule section (warmup_steps, decay_steps, decay_style)",
    "bf16": "precision", "fp16": "precision (bf16 | fp32)",
    "zero_optimization.stage": "parallel.zero_stage",
    "checkpoint.load_universal": "checkpoint.resume (a checkpoint of another layout is converted automatically)",
}


def _check_owned_deepspeed_keys(overrides: dict) -> None:
    for owned, use in DEEPSPEED_OWNED_KEYS.items():
        node, parts = overrides, owned.split(".")
        for q in parts[:-1]:
            node = node.get(q) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            raise ConfigError(f"parallel.deepspeed_overrides.{owned} is set by the trainer from the run config: "
                              f"use {use} instead")


def validate_layout(cfg: RunConfig, world_size: int) -> None:
    tp = cfg.parallel.tensor_model_parallel_size
    _need(world_size % tp == 0, f"the number of processes ({world_size}) must be a multiple of "
          f"parallel.tensor_model_parallel_size ({tp})")
    dp = world_size // tp
    s = cfg.schedule
    _need(s.global_batch_size % (s.micro_batch_size * dp) == 0,
          f"schedule.global_batch_size ({s.global_batch_size}) must be a multiple of schedule.micro_batch_size "
          f"({s.micro_batch_size}) x data-parallel size ({dp} = {world_size} processes / TP {tp})")
