"""Tests of ``lemo-edge run``: in-process through ``lemo_edge.runtime.main.main`` and as a subprocess killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
import torch

from lemo_edge.backbone import resolve_spec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import BackendUnavailableError, InputError
from lemo_edge.runtime.cli import ModuleBackend, resolve_backend, resolve_scorer
from lemo_edge.runtime.main import main
from lemo_edge.state import load_state, read_state
from lemo_edge.synthetic import synthetic_sample

SIZE = 64
CONFIG_JSON = json.dumps({"size": SIZE, "memory_size": 512})
CONFIG = ModelConfig(size=SIZE, memory_size=512)
SYNTHETIC = f"synthetic://?defect_rate=0.1&seed=0&size={SIZE}"
EVENT_FIELDS = {
    "time",
    "frame",
    "score",
    "decision",
    "threshold",
    "updated",
    "learned",
    "reason",
    "finite",
    "failing_sinks",
    "latency_ms",
    "label",
}
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``lemo-edge run ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    try:
        code = main(["run", *args])
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- in-process -------------------------------------------------------------------------------------------------------


def test_synthetic_run_writes_events_state_and_prequential_auroc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 40
    events, state, summary_json = tmp_path / "events.jsonl", tmp_path / "s", tmp_path / "summary.json"
    code, out, err = run_cli(
        capsys,
        SYNTHETIC,
        str(events),
        "--frames",
        str(n),
        "--headless",
        "--state",
        str(state),
        "--config",
        CONFIG_JSON,
        "--backend",
        "torch",
        "--save-every",
        "10",
        "--summary-json",
        str(summary_json),
    )
    assert code == 0, err
    records = _events(events)
    assert len(records) == n
    assert all(EVENT_FIELDS <= set(r) for r in records)
    assert [r["frame"] for r in records] == list(range(n))
    assert {r["decision"] for r in records} <= {"normal", "anomaly"}
    assert set(records[0]["latency_ms"]) == {"preprocess", "backbone", "score", "map", "update", "sinks", "total"}
    assert any(r["label"] == 1 for r in records) and any(r["label"] == 0 for r in records)
    assert (state / "state.safetensors").is_file()
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == n and summary["labelled"] == n and summary["stopped"] == "frames limit"
    assert 0.0 <= summary["prequential_auroc"] <= 1.0
    assert summary["updates"] == sum(r["updated"] for r in records) == summary["total_updates"]
    assert summary["resumed_updates"] is None
    assert summary["nonfinite"] == 0 and summary["sink_failures"] == {}
    assert all(r["failing_sinks"] == [] and r["finite"] is True for r in records)
    # synthetic frames carry masks: the summary says what the memory learned of the defects
    contamination = summary["contamination"]
    defects = [r for r in records if r["label"] == 1]
    assert contamination["defect_accept_rate"] == pytest.approx(sum(r["updated"] for r in defects) / len(defects))
    assert contamination["defect_patches"] > 0 and 0.0 <= contamination["defect_patch_learned"] <= 1.0
    assert 0.0 <= contamination["memory_defect_share"] <= 1.0
    assert "defect patches learned" in out
    assert all(r["learned"] == (r["reason"] in ("warm-up", "below threshold")) for r in records)
    assert "prequential image AUROC" in out and f"frames {n} in" in out
    saved = load_state(state, resolve_spec(CONFIG.backbone), CONFIG)
    assert saved.stats.updates == summary["updates"] and saved.stats.seen == n

    # a second run on the same state resumes it, with its saved config (no --config needed)
    code, out, err = run_cli(capsys, SYNTHETIC, str(events), "--frames", "5", "--headless", "--state", str(state))
    assert code == 0, err
    assert f"resumed from {state / 'state.safetensors'} ({summary['updates']} updates" in err
    assert f"resumed from {summary['updates']} updates" in out
    assert len(_events(events)) == n + 5

    # ... but not with another config
    code, out, err = run_cli(
        capsys, SYNTHETIC, "--frames", "5", "--state", str(state), "--config", '{"size": 64, "memory_size": 256}'
    )
    assert code == 1
    assert "saved config differs from the requested one" in err and "'memory_size': (512, 256)" in err


def _write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (SIZE, SIZE))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(synthetic_sample(2, i, size=SIZE, defect=i % 10 == 9).image, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_file_runs_to_its_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video, 30)
    events, summary_json = tmp_path / "events.jsonl", tmp_path / "summary.json"
    config_file = tmp_path / "config.json"
    config_file.write_text(CONFIG_JSON)
    args = ("--state", str(tmp_path / "s"), "--config", str(config_file), "--warmup", "4", "--backend", "torch")
    code, out, err = run_cli(capsys, str(video), str(events), *args, "--profile", "--summary-json", str(summary_json))
    assert code == 0, err
    assert read_state(tmp_path / "s")[0]["config"]["warmup"] == 4
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == 30 and summary["stopped"] == "end of input" and summary["skipped_total"] == 0
    assert summary["labelled"] == 0 and summary["prequential_auroc"] is None
    records = _events(events)
    assert len(records) == 30 and "label" not in records[0]


def test_folder_with_a_corrupt_image_skips_and_counts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(
            str(folder / f"{i:03d}.png"), cv2.cvtColor(synthetic_sample(3, i, size=SIZE).image, cv2.COLOR_RGB2BGR)
        )
    (folder / "005b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a truncated, corrupt PNG
    summary_json = tmp_path / "summary.json"
    args = ("--state", str(tmp_path / "s"), "--config", CONFIG_JSON, "--backend", "torch")
    code, out, err = run_cli(capsys, str(folder), *args, "--summary-json", str(summary_json))
    assert code == 0, err
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == 12 and summary["skipped"] == {"unreadable": 1} and summary["skipped_total"] == 1
    assert "skipped 1 (unreadable 1)" in out


def test_unopenable_source_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(tmp_path / "missing.mp4"), "--state", str(tmp_path / "s"))
    assert code == 1
    assert f"lemo-edge run: {tmp_path / 'missing.mp4'}: no such file or folder" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "argument --frames: expected a positive integer, got 0"),
        (["--save-every", "x"], "argument --save-every: expected a positive integer, got 'x'"),
        (["--backend", "tflite"], "argument --backend: invalid choice: 'tflite'"),
        (["--config", '{"size": 65}'], "size: expected H and W positive multiples of 32, got 65"),
        (["--size", "250x256"], "size: expected H and W positive multiples of 32, got 250x256"),
        (["--config", '{"sise": 64}'], "config: unknown fields ['sise']"),
        (["--config", "[1, 2]"], "--config: expected JSON text or a JSON file, got '[1, 2]' (no such file)"),
        (["--config", "{bad json"], "--config: expected a JSON object, got invalid JSON"),
        (["--tile", "64x"], "argument --tile: tile: expected HxW with positive integers (e.g. 256x256), got '64x'"),
        (["--roi", "1,2,3"], "argument --roi: roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, got '1,2,3'"),
        (["--overlap", "8"], "--overlap: expected together with --tile, got --overlap 8 alone"),
        (
            ["--tile", "32x64", "--overlap", "40"],
            "overlap: expected 0 <= overlap < 32 (the tile's smaller side), got 40",
        ),
        (["--roi", "40,0,64,64"], "roi: expected a rectangle inside the 64x64 frame, got x=40,y=0,w=64,h=64"),
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, SYNTHETIC, "--state", str(tmp_path / "s"), *args)
    assert code == 2
    assert message in err


def test_missing_state_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, SYNTHETIC)
    assert code == 2 and "the following arguments are required: --state" in err


def test_unknown_sink_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, SYNTHETIC, str(tmp_path / "out.txt"), "--state", str(tmp_path / "s"))
    assert code == 2 and "unknown sink type '.txt'" in err


# -- subprocesses: kill -9, kill during a save, SIGTERM ---------------------------------------------------------------


def _run_args(tmp_path: Path, frames: int = 100_000) -> list[str]:
    return [
        "run",
        SYNTHETIC,
        str(tmp_path / "events.jsonl"),
        "--state",
        str(tmp_path / "s"),
        "--config",
        CONFIG_JSON,
        "--backend",
        "torch",
        "--headless",
        "--save-every",
        "5",
        "--frames",
        str(frames),
        "--summary-json",
        str(tmp_path / "summary.json"),
    ]


def _spawn(cmd: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen[str], condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended early with {proc.returncode}:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_mid_run_then_restart_resumes_the_saved_state(tmp_path: Path) -> None:
    proc = _spawn([sys.executable, "-m", "lemo_edge.runtime.main", *_run_args(tmp_path)])
    state = tmp_path / "s" / "state.safetensors"
    _wait_for(proc, lambda: state.exists() and _lines(tmp_path / "events.jsonl") >= 25)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists()
    meta, _ = read_state(tmp_path / "s")
    saved_updates = meta["stats"]["updates"]
    assert saved_updates >= 5

    restart = _spawn([sys.executable, "-m", "lemo_edge.runtime.main", *_run_args(tmp_path, frames=10)])
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err
    assert f"resumed from {state} ({saved_updates} updates" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_updates"] == saved_updates and summary["frames"] == 10
    assert summary["total_updates"] == saved_updates + summary["updates"]
    assert load_state(tmp_path / "s", resolve_spec(CONFIG.backbone), CONFIG).stats.updates == summary["total_updates"]


def test_sigkill_during_a_save_keeps_the_previous_state_loadable(tmp_path: Path) -> None:
    marker = tmp_path / "saving"
    cmd = [sys.executable, str(HERE / "slow_save_run.py"), str(marker), "60", *_run_args(tmp_path)]
    proc = _spawn(cmd)
    _wait_for(proc, marker.exists)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    temporary = Path(marker.read_text())
    assert temporary.exists() and temporary.parent == tmp_path / "s"  # the interrupted save's file, never renamed
    updater = load_state(tmp_path / "s", resolve_spec(CONFIG.backbone), CONFIG)
    assert updater.stats.updates == 5  # the first save; the second never replaced it
    assert json.loads((tmp_path / "s" / "state.json").read_text())["stats"]["updates"] == 5


def test_sigterm_stops_cleanly_saves_and_prints_the_summary(tmp_path: Path) -> None:
    proc = _spawn([sys.executable, "-m", "lemo_edge.runtime.main", *_run_args(tmp_path)])
    _wait_for(proc, lambda: _lines(tmp_path / "events.jsonl") >= 20)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: signal SIGTERM" in out and "prequential image AUROC" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == _lines(tmp_path / "events.jsonl") >= 20
    updater = load_state(tmp_path / "s", resolve_spec(CONFIG.backbone), CONFIG)
    assert updater.stats.updates == summary["total_updates"] and updater.stats.seen == summary["frames"]


# -- backend and scorer resolution ------------------------------------------------------------------------------------


def test_without_runtime_backends_auto_falls_back_to_the_torch_extractor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lemo_edge.runtime.backends", None)  # import fails
    backend, reason = resolve_backend("auto", CONFIG, torch.device("cpu"))
    assert isinstance(backend, ModuleBackend) and "lemo_edge.runtime.backends cannot be imported" in reason
    features = backend(torch.zeros((1, 3, SIZE, SIZE), dtype=torch.uint8))
    assert features.shape == (1, backend.spec.dim, SIZE // 8, SIZE // 8) and features.dtype == torch.float32
    with pytest.raises(BackendUnavailableError, match="backend tensorrt: lemo_edge.runtime.backends cannot be"):
        resolve_backend("tensorrt", CONFIG, torch.device("cpu"))


def test_scorer_resolution_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    scorer, reason = resolve_scorer("auto", CONFIG, cpu)
    assert scorer is None and "torch reference" in reason
    with pytest.raises(InputError, match=r"the kernel supports 1 <= k <= 8, got k=9"):
        resolve_scorer("cuda", CONFIG.replace(score_k=9), cpu)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
            resolve_scorer("cuda", CONFIG.replace(score_k=1), cpu)
    monkeypatch.setitem(sys.modules, "lemo_edge.runtime.scorers", None)
    scorer, reason = resolve_scorer("auto", CONFIG, cpu)
    assert scorer is None and "lemo_edge.runtime.scorers cannot be imported" in reason


def test_run_at_a_non_square_size_with_letterbox_saves_and_resumes_that_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--size 64x128 --letterbox`` on 96 x 128 synthetic frames: the state records both and a later run resumes
    at 64 x 128 without them; another shape against that state is refused."""
    wide = "synthetic://?defect_rate=0.2&seed=0&size=64&height=96&width=128"
    state, events = tmp_path / "s", tmp_path / "events.jsonl"
    base = [wide, str(events), "--headless", "--state", str(state), "--backend", "torch", "--save-every", "2"]
    code, _, err = run_cli(capsys, *base, "--frames", "8", "--size", "64x128", "--letterbox", "--config", CONFIG_JSON)
    assert code == 0, err
    meta, _ = read_state(state)
    assert meta["config"]["size"] == [64, 128] and meta["config"]["letterbox"] is True
    assert len(_events(events)) == 8
    code, _, err = run_cli(capsys, *base, "--frames", "3")
    assert code == 0 and "resumed from" in err, err
    loaded = load_state(state, resolve_spec(CONFIG.backbone))
    assert loaded.model.config.input_hw == (64, 128) and loaded.model.grid == (8, 16)
    code, _, err = run_cli(capsys, *base, "--frames", "1", "--size", "128x64")
    assert code != 0 and "'size': ((64, 128), (128, 64))" in err


def test_a_tiled_run_of_wide_frames_reports_boxes_in_their_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, state = tmp_path / "events.jsonl", tmp_path / "s"
    wide = "synthetic://?defect_rate=0.3&seed=0&size=64&width=160&height=96&defect_min=8&defect_max=16"
    config = json.dumps({"size": 32, "memory_size": 512, "warmup": 4})
    args = [wide, str(events), "--frames", "30", "--headless", "--state", str(state), "--config", config]
    code, out, err = run_cli(capsys, *args, "--tile", "32x32", "--overlap", "8", "--backend", "torch")
    assert code == 0, err
    assert read_state(state)[0]["layout"] == {
        "frame": [96, 160],
        "roi": [0, 0, 160, 96],
        "tile": [32, 32],
        "overlap": 8,
    }
    records = _events(events)
    assert len(records) == 30 and all("boxes" in r for r in records)
    boxes = [b for r in records if r["decision"] == "anomaly" for b in r["boxes"]]
    assert all(0 <= x and 0 <= y and x + w <= 160 and y + h <= 96 for x, y, w, h, _ in boxes)
    code, _, err = run_cli(capsys, *args, "--backend", "torch")  # the state learned with tiles
    assert code == 1 and "tile layout: expected tiles 32x32 overlap 8 over roi 0,0,160,96" in err
