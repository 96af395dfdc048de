#!/usr/bin/env bash
# The GPU check: the CUDA path of vffn on one GPU, from a machine with CUDA torch and no internet.
#
#   tools/gpu_check.sh --prepare DIR [--python-version 3.12]
#       on a machine WITH registry access: download / build into DIR the wheels a GPU image usually lacks
#       (megatron-core's cpXY manylinux wheel, DeepSpeed built as a pure-Python wheel with no op compiled,
#       pydantic + pydantic_core, hjson, ninja, typing helpers). Nothing here touches torch.
#   tools/gpu_check.sh [--wheels DIR] [--out DIR] [--peak-tflops 989] [--quick]
#       on the GPU machine: install the wheels of DIR that are missing there into a temporary folder (no
#       index, no dependencies: the machine's own torch and CUDA libraries stay), then run
#         1. pytest -m gpu  (tests/test_gpu.py: block on CUDA vs CPU fp64, SDPA vs local in bf16, a 1-GPU
#            NCCL / ZeRO-1 / bf16 run with SIGTERM save and resume, HF export generating on CPU);
#         2. tools/gpu_bench.py: tokens/s and MFU, dense vs VersatileFFN, 354M-class, seq 4096, bf16;
#         3. tools/bench_vffn.py: block-level ratios on the GPU (it runs on CUDA when there is one);
#       and write OUT/gpu_check.json (one summary; default OUT: ./gpu_check_out). --quick skips 2 and 3.
# Exit status: 0 every part passed, 1 a part failed (the JSON says which), 2 usage / no GPU.
# Budget: about 5-8 minutes on one H200-class GPU.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="" OUT="gpu_check_out" PEAK=989 QUICK="" PREPARE="" PYVER=3.12

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) PREPARE="${2:?--prepare needs a directory}"; shift 2 ;;
        --python-version) PYVER="${2:?}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        --peak-tflops) PEAK="${2:?}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) usage ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; usage ;;
    esac
done

# ---------------------------------------------------------------- --prepare: the wheel folder
# Pins: the versions requirements.lock was tested with. Binary wheels for the target Python; DeepSpeed has no
# wheel on PyPI: built here with DS_BUILD_OPS=0 (pure Python; the trainer uses torch's AdamW, no op is needed).
BINARY=(megatron-core==0.16.1 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0
        typing-inspection==0.4.5 typing_extensions==4.16.0 hjson==3.1.0 ninja==1.13.2)
if [ -n "$PREPARE" ]; then
    mkdir -p "$PREPARE" || exit 2
    tag="${PYVER/./}"
    set -e
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --abi "cp$tag" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$PREPARE" "${BINARY[@]}"
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$PREPARE" deepspeed==0.19.8 \
        || DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps -w "$PREPARE" deepspeed==0.19.8
    set +e
    echo "gpu_check: wheels for Python $PYVER in $PREPARE:"
    ls -1 "$PREPARE"
    du -sh "$PREPARE" | awk '{print "gpu_check: " $1 " in all"}'
    exit 0
fi

# ---------------------------------------------------------------- the check itself
if [ "$(PYTHONPATH="$REPO" "$PYTHON" -m vffn_megatron.device --backend 2>/dev/null)" != nccl ]; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
if [ -n "$WHEELS" ]; then
    # only what the machine lacks or has older than the wheel: a wheel would shadow the installed copy
    mapfile -t missing < <("$PYTHON" - "$WHEELS"/*.whl <<'PY'
import importlib.metadata as md, os, re, sys
def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])
for whl in sys.argv[1:]:
    name, version = os.path.basename(whl).split("-")[:2]
    try:
        if key(md.version(name)) >= key(version):
            continue
    except md.PackageNotFoundError:
        pass
    print(whl)
PY
)
    if [ ${#missing[@]} -gt 0 ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${missing[@]}" \
            || { echo "gpu_check: installing the wheels of $WHEELS failed" >&2; exit 1; }
        echo "gpu_check: installed ${#missing[@]} missing package(s) into $SITE: $(for w in "${missing[@]}"; do basename "$w" | cut -d- -f1; done | tr '\n' ' ')"
    fi
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 VFFN_GPU_REPORT="$OUT/gpu_tests.jsonl"
rm -f "$VFFN_GPU_REPORT"
eval "$("$PYTHON" -m vffn_megatron.device --ds-accelerator | awk '{print "export DS_ACCELERATOR=" $1}')"
cd "$REPO"

status=0
t0=$SECONDS
"$PYTHON" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts="" --junitxml="$OUT/gpu_tests.xml" \
    2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" = 0 ] || status=1
tests_s=$((SECONDS - t0))
bench_rc=skipped vffn_rc=skipped
if [ -z "$QUICK" ]; then
    "$PYTHON" tools/gpu_bench.py --peak-tflops "$PEAK" --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
    bench_rc=${PIPESTATUS[0]}
    [ "$bench_rc" = 0 ] || status=1
    "$PYTHON" tools/bench_vffn.py --no-tp --json > "$OUT/bench_vffn.json" 2> "$OUT/bench_vffn.log"
    vffn_rc=$?
    [ "$vffn_rc" = 0 ] || status=1
fi
"$PYTHON" - "$OUT" "$tests_rc" "$tests_s" "$bench_rc" "$vffn_rc" "$((SECONDS - t0))" <<'PY'
import json, os, sys
out, tests_rc, tests_s, bench_rc, vffn_rc, total_s = sys.argv[1:]
def load(name):
    path = os.path.join(out, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
tests = []
if os.path.exists(os.path.join(out, "gpu_tests.jsonl")):
    tests = [json.loads(line) for line in open(os.path.join(out, "gpu_tests.jsonl")) if line.strip()]
import torch
summary = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "tests": {"exit_code": int(tests_rc), "seconds": int(tests_s), "figures": tests},
           "gpu_bench": {"exit_code": bench_rc, "result": load("gpu_bench.json")},
           "bench_vffn": {"exit_code": vffn_rc, "result": load("bench_vffn.json")},
           "total_seconds": int(total_s)}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
exit $status
