#!/usr/bin/env bash
# The Jetson bundle installed and run for real on an arm64 userland, under emulation (make jetson-check).
#
#   sudo tests/jetson/arm64_check.sh          # from a source checkout with `make install` done
#
# 1. builds the bundle (`lemo-edge bundle --target jetson`, camera synthetic://) with the aarch64 wheels of its
#    requirements, fetched on this host with `pip download --platform manylinux_*_aarch64 --python-version 3.11`;
# 2. makes, or reuses from its cache, an arm64 Debian bookworm userland (debootstrap, qemu-user-static, binfmt_misc)
#    with JetPack's parts stood in for: PyPI's CPU torch/torchvision for aarch64 instead of NVIDIA's build, the
#    opencv-python-headless aarch64 wheel instead of JetPack's OpenCV, NumPy 1.x, all in the system Python as
#    JetPack's are (docs/jetson.md, "Checked on an emulated arm64 box");
# 3. copies that userland to a fresh box, unpacks the bundle's .tar.gz there and runs its install.sh for real
#    (no --dry-run), offline (a network namespace with no network: only the bundle's wheels);
# 4. runs the installed unit's ExecStartPre (the TensorRT engine build: skipped, no TensorRT) and ExecStart (read from
#    /etc/systemd/system/lemo-edge.service, as the unit's user, with its environment) for 30 frames, with
#    `lemo-edge health` while it runs, and checks: 30 events, a saved state, the onnxruntime backend.
#
# Needs root (chroot, mounts, binfmt_misc) and, on the first run, the network (apt, debootstrap, PyPI); later runs
# reuse the cache. Environment (all optional):
#   LEMO_EDGE_ARM64_CACHE   cache folder (default ~/.cache/lemo-edge/arm64): the userland, the aarch64 wheels
#   LEMO_EDGE_ARM64_ROOTFS  the cached userland (default $LEMO_EDGE_ARM64_CACHE/rootfs-bookworm)
#   LEMO_EDGE_ARM64_WORK    work folder: bundle, box, log (default build/jetson-check in the checkout)
#   LEMO_EDGE_ARM64_LOG     where the log of a passing run is copied (default tests/jetson/last-run.log; "" = none)
#   LEMO_EDGE_KEEP_BOX=1    keep the box (WORK/box) after the run, to look into it
#   LEMO_EDGE_QEMU_CPU      the emulated CPU (default cortex-a76: ARMv8.2 like the Orin's Cortex-A78AE, no SVE)
#   PYTHON                  the host Python with lemo-edge installed (default .venv/bin/python)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${LEMO_EDGE_ARM64_CACHE:-$HOME/.cache/lemo-edge/arm64}
ROOTFS=${LEMO_EDGE_ARM64_ROOTFS:-$CACHE/rootfs-bookworm}
WHEEL_CACHE=$CACHE/wheels
WORK=${LEMO_EDGE_ARM64_WORK:-$REPO/build/jetson-check}
RESULT_LOG=${LEMO_EDGE_ARM64_LOG-$REPO/tests/jetson/last-run.log}
HOST_PY=${PYTHON:-$REPO/.venv/bin/python}
QEMU_CPU=${LEMO_EDGE_QEMU_CPU:-cortex-a76}
FRAMES=30
SUITE=bookworm
MIRROR=${LEMO_EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-dev: JetPack's step 2 installs it (docs/jetson.md); systemd: every Jetson has it (install.sh enables the unit).
INCLUDE=python3,python3-venv,python3-pip,python3-dev,systemd
# Stand-ins for NVIDIA's PyTorch and JetPack's OpenCV and NumPy. PyPI's newest CPU-only aarch64 torch is 2.10.0
# (2.11 and later on aarch64 are CUDA builds of 400+ MB with CUDA 13 wheels); torchvision 0.25.0 is its pair.
TORCH_PIN=torch==2.10.0
VISION_PIN=torchvision==0.25.0
JETPACK_STANDINS=("$TORCH_PIN" "$VISION_PIN" "numpy<2" "opencv-python-headless<4.12")
PLATFORMS=()
for tag in 2_35 2_34 2_31 2_28 2_27 2_26 2_24 2_17; do PLATFORMS+=(--platform "manylinux_${tag}_aarch64"); done
PLATFORMS+=(--platform manylinux2014_aarch64)

BOX=$WORK/box
LOG=$WORK/arm64-check.log
T0=$SECONDS
mkdir -p "$WORK" "$CACHE"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

step() { printf '\n== [%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    printf 'arm64-check: FAILED: %s\n' "$*" >&2
    exit 1
}
ok() { printf 'arm64-check: ok: %s\n' "$*"; }

# -- the box: mounts and commands -------------------------------------------------------------------------------------
mounts_under() { awk -v root="$1" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/mounts | sort -r; }
umount_all() {
    local root=$1 mnt
    for _ in 1 2 3; do
        while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; done < <(mounts_under "$root")
    done
    [[ -z $(mounts_under "$root") ]] || die "cannot unmount everything under $root: $(mounts_under "$root" | tr '\n' ' ')"
}
remove_tree() {
    [[ -e $1 ]] || return 0
    umount_all "$1"
    rm -rf --one-file-system -- "$1"
}
mount_box() {
    local root=$1
    mount -t proc proc "$root/proc"
    mount --bind /sys "$root/sys"
    # qemu 7.2 (bookworm) shows the host's /proc/cpuinfo to the guest; onnxruntime >= 1.28 crashes parsing an x86
    # one. A real Jetson has its own: stand in with the Orin's (Cortex-A78AE, implementer 0x41, part 0xd42).
    local i cpuinfo=$WORK/cpuinfo
    : >"$cpuinfo"
    for ((i = 0; i < $(nproc); i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp %s\n' \
            "$i" "asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg" >>"$cpuinfo"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' \
            >>"$cpuinfo"
    done
    mount --bind "$cpuinfo" "$root/proc/cpuinfo"
}
cleanup() {
    local rc=$?
    [[ -d $BOX ]] && umount_all "$BOX"
    [[ -d $ROOTFS ]] && umount_all "$ROOTFS"
    if ((rc == 0)) && [[ ${LEMO_EDGE_KEEP_BOX:-0} != 1 ]]; then
        remove_tree "$BOX"
    fi
    exit "$rc"
}
trap cleanup EXIT
BOX_ENV=(QEMU_CPU="$QEMU_CPU" LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
export QEMU_CPU
# in_box ROOT CMD...: run CMD as root inside ROOT with a clean environment (nothing of this host's pip config).
in_box() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i "${BOX_ENV[@]}" HOME=/root "$@"
}

# -- 0. tools ---------------------------------------------------------------------------------------------------------
step "tools"
((EUID == 0)) || die "run as root (chroot, mounts, binfmt_misc): sudo $0"
[[ -x $HOST_PY ]] || die "no $HOST_PY: run 'make install' first (or set PYTHON)"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    die "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64)"
qemu-aarch64-static --version | head -n 1
echo "emulated CPU: $QEMU_CPU; host: $(uname -m), $(nproc) cores"

# -- 1. the aarch64 wheels (host) -------------------------------------------------------------------------------------
step "requirements of the bundle and aarch64 wheels (pip download on the host)"
requirements=$("$HOST_PY" - <<'PY'
import importlib.metadata as md
from lemo_edge.runtime.bundle.build import jetson_requirements
print("\n".join(jetson_requirements(md.requires("lemo-edge") or [])[0]))
PY
)
echo "$requirements"
key=$(printf '%s\n' "$requirements" "${JETPACK_STANDINS[@]}" "${PLATFORMS[*]}" | sha256sum | cut -c1-16)
wheels=$WHEEL_CACHE/$key
if [[ -f $wheels/.complete ]]; then
    echo "reusing $wheels ($(find "$wheels" -name '*.whl' | wc -l) wheels)"
else
    rm -rf "$wheels"
    mkdir -p "$wheels"
    printf '%s\n' "$requirements" >"$wheels/requirements.txt"
    printf '%s\n' "$TORCH_PIN" "$VISION_PIN" "numpy<2" >"$wheels/constraints.txt"
    # pip evaluates environment markers for the machine it runs on, not for --platform: pip_aarch64.py makes them
    # aarch64, or torch's x86_64-only CUDA requirements would be fetched too.
    "$HOST_PY" "$REPO/tests/jetson/pip_aarch64.py" download -q --disable-pip-version-check --only-binary=:all: \
        "${PLATFORMS[@]}" --python-version 3.11 --implementation cp -d "$wheels" -c "$wheels/constraints.txt" \
        -r "$wheels/requirements.txt" "${JETPACK_STANDINS[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
    find "$wheels" -name '*.whl' | grep -q "/torch-2" || die "pip download got no aarch64 torch wheel"
    touch "$wheels/.complete"
fi
bundle_wheels=$WORK/bundle-wheels
rm -rf "$bundle_wheels"
mkdir -p "$bundle_wheels"
# As in docs/jetson.md "Offline boxes": everything but JetPack's own parts (torch, torchvision, OpenCV) goes in.
find "$wheels" -name '*.whl' ! -name 'torch-*' ! -name 'torchvision-*' ! -name 'opencv_*' -exec cp {} "$bundle_wheels/" \;
echo "$(find "$bundle_wheels" -name '*.whl' | wc -l) wheels for the bundle, $(du -sh "$wheels" | cut -f1) in the cache"

# -- 2. the bundle ----------------------------------------------------------------------------------------------------
step "lemo-edge bundle --target jetson"
bundle=$WORK/line-bundle
rm -rf "$bundle" "$bundle.tar.gz"
(cd "$REPO" && "$HOST_PY" -m lemo_edge.runtime.main bundle --target jetson --out "$bundle" \
    --camera 'synthetic://?defect_rate=0.1&seed=0' --wheels "$bundle_wheels")
diff <(grep -v '^#' "$bundle/requirements-jetson.txt") <(printf '%s\n' "$requirements") ||
    die "the bundle's requirements-jetson.txt differs from the requirements the wheels were fetched for"

# -- 3. the arm64 userland (cached) -----------------------------------------------------------------------------------
step "arm64 Debian $SUITE userland: $ROOTFS"
stamp="$SUITE $INCLUDE"
if [[ -f $ROOTFS/.lemo-edge-debootstrap ]] && [[ $(cat "$ROOTFS/.lemo-edge-debootstrap") == "$stamp" ]]; then
    echo "reusing it (debootstrap of: $stamp)"
else
    remove_tree "$ROOTFS.tmp"
    mkdir -p "$(dirname "$ROOTFS")"
    echo "debootstrap --arch=arm64 --variant=minbase --include=$INCLUDE $SUITE (a few minutes)"
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $WORK/debootstrap.log: $(tail -n 3 "$WORK/debootstrap.log")"
    echo "$stamp" >"$ROOTFS.tmp/.lemo-edge-debootstrap"
    remove_tree "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi
standins=$(find "$wheels" -name '*.whl' -printf '%f\n' | sort | sha256sum | cut -c1-16)
if [[ $(cat "$ROOTFS/.lemo-edge-jetpack" 2>/dev/null) != "$standins" ]]; then
    echo "JetPack stand-ins into the system Python (as NVIDIA's wheels are): ${JETPACK_STANDINS[*]}"
    rm -rf "$ROOTFS/root/jetpack-wheels"
    mkdir -p "$ROOTFS/root/jetpack-wheels"
    cp "$wheels"/*.whl "$ROOTFS/root/jetpack-wheels/"
    mount_box "$ROOTFS"
    in_box "$ROOTFS" python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        --break-system-packages --no-index --find-links /root/jetpack-wheels "${JETPACK_STANDINS[@]}"
    umount_all "$ROOTFS"
    rm -rf "$ROOTFS/root/jetpack-wheels"
    echo "$standins" >"$ROOTFS/.lemo-edge-jetpack"
else
    echo "reusing its JetPack stand-ins (${JETPACK_STANDINS[*]})"
fi

# -- 4. a fresh box: install.sh for real, offline ---------------------------------------------------------------------
step "a fresh box (copy of the userland) and the bundle's install.sh"
remove_tree "$BOX"
cp -a "$ROOTFS" "$BOX"
mount_box "$BOX"
echo "uname -m in the box: $(in_box "$BOX" uname -m)"
[[ $(in_box "$BOX" uname -m) == aarch64 ]] || die "the box is not aarch64"
in_box "$BOX" python3 -c 'import platform, torch, torchvision, cv2, numpy
print("box:", platform.machine(), "Python", platform.python_version(), "| torch", torch.__version__,
      "| torchvision", torchvision.__version__, "| OpenCV", cv2.__version__, "| NumPy", numpy.__version__)'
cp "$bundle.tar.gz" "$BOX/root/"
in_box "$BOX" tar -C /root -xzf "/root/${bundle##*/}.tar.gz"
echo "+ LEMO_EDGE_PYTHON=python3.11 /root/${bundle##*/}/install.sh   (for real: no --dry-run; no network)"
# Offline: a new network namespace has only a loopback, so pip gets nothing but the bundle's wheels/ (pycuda, which
# is never in it without a Jetson to build it, fails its index fallback quickly: PIP_RETRIES=0).
unshare --net chroot "$BOX" /usr/bin/env -i "${BOX_ENV[@]}" HOME=/root LEMO_EDGE_PYTHON=python3.11 PIP_RETRIES=0 \
    bash "/root/${bundle##*/}/install.sh" || die "install.sh failed (exit $?)"
for path in /opt/lemo-edge/venv/bin/lemo-edge /usr/local/bin/lemo-edge /opt/lemo-edge/config.json \
    /etc/systemd/system/lemo-edge.service /etc/systemd/system/multi-user.target.wants/lemo-edge.service \
    /etc/lemo-edge/lemo-edge.env /etc/logrotate.d/lemo-edge; do
    [[ -e $BOX$path || -L $BOX$path ]] || die "install.sh did not install $path"
done
ok "install.sh installed the venv, the unit (enabled), the config, the env file and the logrotate rule"
in_box "$BOX" /opt/lemo-edge/venv/bin/python -c 'import importlib.metadata as m
print("venv:", ", ".join(f"{d} {m.version(d)}" for d in ("lemo-edge", "torch", "onnxruntime", "numpy", "timm")))'
in_box "$BOX" lemo-edge info || die "lemo-edge info failed in the box"

# -- 5. the unit's commands, as systemd would run them ----------------------------------------------------------------
step "the installed unit: /etc/systemd/system/lemo-edge.service"
plan=$("$HOST_PY" "$REPO/tests/jetson/unit_exec.py" --root "$BOX" /etc/systemd/system/lemo-edge.service) ||
    die "cannot read the installed unit"
echo "$plan"
eval "$plan"
uid=$(awk -F: -v u="$UNIT_USER" '$1 == u {print $3}' "$BOX/etc/passwd")
gid=$(awk -F: -v g="$UNIT_GROUP" '$1 == g {print $3}' "$BOX/etc/group")
groups=""
for g in "${UNIT_GROUPS[@]}"; do
    groups+=${groups:+,}$(awk -F: -v g="$g" '$1 == g {print $3}' "$BOX/etc/group")
done
[[ -n $uid && -n $gid ]] || die "the unit's user $UNIT_USER:$UNIT_GROUP does not exist in the box"
# as_service CMD...: run CMD inside the box as the unit's user and groups, in its working folder, with its environment.
as_service() {
    unshare --net chroot --userspec="$uid:$gid" ${groups:+--groups="$groups"} "$BOX" /usr/bin/env -i -C "$UNIT_WORKDIR" \
        "${BOX_ENV[@]}" HOME="$UNIT_WORKDIR" USER="$UNIT_USER" LOGNAME="$UNIT_USER" "${UNIT_ENV[@]}" "$@"
}
((UNIT_PRE_COUNT == 1)) || die "expected one ExecStartPre (the engine build), got $UNIT_PRE_COUNT"

step "ExecStartPre (TensorRT engine build) as $UNIT_USER"
printf '+ %s\n' "${UNIT_PRE_0[*]}"
set +e
pre_out=$(as_service "${UNIT_PRE_0[@]}" 2>&1)
pre_rc=$?
set -e
echo "$pre_out"
echo "exit $pre_rc (the unit's '-' prefix: failure ignored = $UNIT_PRE_IGNORE_0)"
((pre_rc != 0 && UNIT_PRE_IGNORE_0 == 1)) || die "expected the engine build to fail, ignored, on a box without TensorRT"
grep -qi "tensorrt is not available" <<<"$pre_out" || die "the engine build failed without saying TensorRT is missing"
ok "engine build skipped: $(grep -i 'tensorrt is not available' <<<"$pre_out" | head -n 1)"

step "ExecStart as $UNIT_USER for $FRAMES frames, lemo-edge health while it runs"
summary=/var/lib/lemo-edge/arm64-check-summary.json
printf '+ %s --frames %d --summary-json %s\n' "${UNIT_START[*]}" "$FRAMES" "$summary"
events=$BOX/var/lib/lemo-edge/events.jsonl
rm -f "$events"
as_service "${UNIT_START[@]}" --frames "$FRAMES" --summary-json "$summary" &
run_pid=$!
health_rc=""
for _ in $(seq 1 900); do
    if [[ -f $events ]] && (($(wc -l <"$events") >= 5)); then
        echo "+ lemo-edge health   (after $(wc -l <"$events") events, the run still going)"
        set +e
        in_box "$BOX" lemo-edge health
        health_rc=$?
        set -e
        break
    fi
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 1
done
set +e
wait "$run_pid"
run_rc=$?
set -e
echo "lemo-edge run: exit $run_rc"
((run_rc == 0)) || die "the service's command line failed (exit $run_rc)"
[[ $health_rc == 0 ]] || die "lemo-edge health during the run: expected exit 0 (healthy), got '${health_rc:-not run}'"
ok "lemo-edge health during the run: healthy (exit 0)"
echo "+ lemo-edge health --json   (after the run: the process is gone, so it must say unhealthy)"
set +e
after=$(in_box "$BOX" lemo-edge health --json)
after_rc=$?
set -e
echo "$after"
if ((after_rc != 1)) || ! grep -q "is not running" <<<"$after"; then
    die "lemo-edge health after the run: expected exit 1 (the run is not running), got $after_rc"
fi
ok "lemo-edge health after the run: unhealthy (exit 1), the process that held the state is gone"

# -- 6. what it left ---------------------------------------------------------------------------------------------------
step "results"
"$HOST_PY" - "$BOX" "$FRAMES" "$summary" <<'PY' || die "the run's results are not what the service must leave"
import json, sys
from pathlib import Path

box, frames, summary = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
records = [json.loads(line) for line in (box / "var/lib/lemo-edge/events.jsonl").read_text().splitlines()]
frame_records = [r for r in records if "frame" in r]
print(f"events: {len(frame_records)} frame records in /var/lib/lemo-edge/events.jsonl "
      f"(frames {frame_records[0]['frame']}..{frame_records[-1]['frame']}), "
      f"{sum(r['decision'] == 'anomaly' for r in frame_records)} anomalies")
assert [r["frame"] for r in frame_records] == list(range(frames)), "expected frames 0..N-1, one record each"
state = box / "var/lib/lemo-edge/state"
meta = json.loads((state / "state.json").read_text())
size = (state / "state.safetensors").stat().st_size
config = json.loads((box / "opt/lemo-edge/config.json").read_text())
print(f"state saved: /var/lib/lemo-edge/state/state.safetensors ({size} bytes), state.json: "
      f"{meta.get('stats', {}).get('updates')} updates, config = the bundle's: {meta['config'] == config}")
assert size > 0 and meta["config"] == config
run = json.loads((box / summary.lstrip("/")).read_text())
print(f"summary: {run['frames']} frames, {run['fps']:.2f} fps under emulation, backend: {run['backend']}, "
      f"scorer: {run['scorer']}, stopped: {run['stopped']}")
assert run["frames"] == frames and run["backend"].startswith("onnxruntime"), "expected the onnxruntime backend"
PY
ok "$FRAMES events written, state saved, onnxruntime used, on $(in_box "$BOX" uname -m)"

step "passed in $((SECONDS - T0)) s"
if [[ -n $RESULT_LOG ]]; then
    mkdir -p "$(dirname "$RESULT_LOG")"
    sleep 1 # let tee write the last lines
    sed 's/\r$//' "$LOG" >"$RESULT_LOG"
    echo "log: $RESULT_LOG"
fi
