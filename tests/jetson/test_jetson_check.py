"""The pieces of ``tests/jetson/arm64_check.sh`` that run without an arm64 box, and the check itself on demand.

The emulated check (``make jetson-check``, root, minutes) runs here only with ``LEMO_EDGE_ARM64=1``; its last log is
``tests/jetson/last-run.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lemo_edge.runtime.bundle.build import jetson_requirements
from lemo_edge.runtime.bundle.templates import SERVICE, render_env_file, render_unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import unit_exec  # noqa: E402

CAMERA = "synthetic://?defect_rate=0.1&seed=0"
ONNX = "tf_efficientnet_lite0-256x256-opset18-lemo0.1.0.onnx"


def _box(tmp_path: Path, env_text: str | None) -> Path:
    """A root folder with the bundle's unit installed and, unless None, ``/etc/lemo-edge/lemo-edge.env``."""
    unit = tmp_path / "etc/systemd/system" / SERVICE
    unit.parent.mkdir(parents=True)
    unit.write_text(render_unit(ONNX, "csi://0"))
    if env_text is not None:
        env = tmp_path / "etc/lemo-edge/lemo-edge.env"
        env.parent.mkdir(parents=True)
        env.write_text(env_text)
    return tmp_path


def test_the_service_plan_of_the_bundle_unit(tmp_path: Path) -> None:
    root = _box(tmp_path, render_env_file(CAMERA, ["mqtt://broker:1883/plant/lemo", "overlays/"]))
    plan = unit_exec.service_plan(Path(f"/etc/systemd/system/{SERVICE}"), root)
    assert (plan.user, plan.group, plan.groups, plan.workdir) == (
        "lemo-edge",
        "lemo-edge",
        ["video"],
        "/var/lib/lemo-edge",
    )
    # The env file overrides the unit's Environment= (camera csi://0 there).
    assert (
        plan.environment["LEMO_EDGE_CAMERA"] == CAMERA and plan.environment["LEMO_EDGE_CACHE"] == "/var/lib/lemo-edge"
    )
    assert plan.exec_start is not None and not plan.exec_start.ignore_failure
    argv = plan.exec_start.argv
    # ${LEMO_EDGE_CAMERA}: one word; $LEMO_EDGE_SINKS: one word per sink.
    assert argv[:5] == [
        "/opt/lemo-edge/venv/bin/lemo-edge",
        "run",
        CAMERA,
        "/var/lib/lemo-edge/events.jsonl",
        "mqtt://broker:1883/plant/lemo",
    ]
    assert argv[5] == "overlays/" and argv[argv.index("--state") + 1] == "/var/lib/lemo-edge/state"
    (pre,) = plan.exec_start_pre
    assert pre.ignore_failure and pre.argv[1:3] == ["export", "tensorrt"] and pre.argv[4].endswith(ONNX)


def test_an_empty_sinks_variable_gives_no_word_and_a_missing_optional_env_file_is_skipped(tmp_path: Path) -> None:
    plan = unit_exec.service_plan(Path(f"/etc/systemd/system/{SERVICE}"), _box(tmp_path, None))
    assert plan.exec_start is not None
    assert plan.exec_start.argv[2:4] == ["csi://0", "/var/lib/lemo-edge/events.jsonl"]
    assert plan.exec_start.argv[4] == "--state"


def test_expansion_rules_and_refused_specifiers() -> None:
    env = {"A": "x y", "B": ""}
    assert unit_exec.expand_command("-/bin/echo $A ${A} pre${A}post $B $$A 100%%", env).argv == [
        "/bin/echo",
        "x",
        "y",
        "x y",
        "prex ypost",
        "$A",
        "100%",
    ]
    assert unit_exec.expand_command("-/bin/true", env).ignore_failure
    with pytest.raises(unit_exec.UnitError, match="specifier '%n'"):
        unit_exec.expand_command("/bin/echo %n", env)


def test_the_shell_assignments_eval_to_the_same_words(tmp_path: Path) -> None:
    root = _box(tmp_path, render_env_file(CAMERA, []))
    plan = unit_exec.service_plan(Path(f"/etc/systemd/system/{SERVICE}"), root)
    script = unit_exec.shell_assignments(plan) + 'printf "%s\\n" "${UNIT_START[@]}"; echo "$UNIT_PRE_IGNORE_0"\n'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert plan.exec_start is not None
    assert done.stdout.splitlines() == [*plan.exec_start.argv, "1"]


def test_a_unit_without_exec_start_is_refused(tmp_path: Path) -> None:
    unit = tmp_path / "u.service"
    unit.write_text("[Service]\nUser=x\n")
    with pytest.raises(unit_exec.UnitError, match="ExecStart"):
        unit_exec.service_plan(Path("/u.service"), tmp_path)


def test_jetson_requirements_keep_the_mqtt_extra_only() -> None:
    keep, pycuda = jetson_requirements(
        [
            "torch>=2",
            "timm>=1.0",
            'pycuda>=2024.2; extra == "gpu"',
            'onnxruntime-gpu>=1.18; extra == "gpu"',
            'paho-mqtt>=2.0; extra == "mqtt"',
            'paho-mqtt>=2.0; extra == "dev"',
            'pytest>=8; extra == "dev"',
        ]
    )
    assert keep == ["timm>=1.0", "paho-mqtt>=2.0"] and pycuda == "pycuda>=2024.2"


def test_pip_aarch64_makes_the_markers_those_of_aarch64() -> None:
    code = "\n".join(
        (
            f"import sys; sys.argv = ['pip_aarch64.py', '--version']; sys.path.insert(0, {str(HERE)!r})",
            "import pip_aarch64",
            "try:\n    pip_aarch64.main()\nexcept SystemExit as stop:  # optparse's --version exits\n"
            "    assert stop.code in (0, None)",
            "from pip._vendor.packaging.markers import Marker",
            "print(*(Marker(f'platform_machine == {m!r}').evaluate() for m in ('aarch64', 'x86_64')))",
        )
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "True False" in done.stdout.splitlines(), done.stdout


def test_the_check_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (Debian: apt-get install -y shellcheck; .ci/run installs it)")
    done = subprocess.run([shellcheck, str(HERE / "arm64_check.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_the_bundle_installs_and_runs_on_an_emulated_arm64_box() -> None:
    """The whole check (minutes; root; the network on a first run). Opt in with LEMO_EDGE_ARM64=1."""
    if os.environ.get("LEMO_EDGE_ARM64") != "1":
        pytest.skip("the emulated arm64 check runs with LEMO_EDGE_ARM64=1 (or make jetson-check); minutes, root")
    if os.geteuid() != 0:
        pytest.skip("the emulated arm64 check needs root (chroot, mounts, binfmt_misc)")
    done = subprocess.run(
        ["bash", str(HERE / "arm64_check.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "uname -m in the box: aarch64" in done.stdout and "30 events written, state saved" in done.stdout
