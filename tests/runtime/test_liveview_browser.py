"""The live view end to end in headless Chromium: ``lemo-edge run synthetic://... http://0.0.0.0:PORT`` (token from
the environment), the page opened with its token: it loads, a frame of the stream arrives, the score chart updates;
without the token it is 401. The screenshot is kept in ``tests/artifacts/liveview.png`` (git-ignored).

Needs chromium and chromium-driver (Debian packages, installed by ``.ci/run``) and selenium (the ``dev`` extra);
skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "browser-test-token-4f9a"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")

try:
    import selenium  # noqa: F401

    WHY_NO_SELENIUM = ""
except ImportError as err:
    WHY_NO_SELENIUM = f"selenium is not installed ({err}); pip install -e '.[dev]'"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt: chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="needs chromedriver (apt: chromium-driver)"),
    pytest.mark.skipif(bool(WHY_NO_SELENIUM), reason=WHY_NO_SELENIUM),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(base: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base}/status.json?token={TOKEN}", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _wait_for(predicate, what: str, timeout: float, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            pytest.fail(f"lemo-edge run ended (exit {process.returncode}) while waiting for {what}:\n{out[-3000:]}")
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_live_view_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "lemo_edge.runtime.main",
        "run",
        "synthetic://?seed=0&defect_rate=0.25&size=64",
        f"http://0.0.0.0:{port}?fps=10",
        "--state",
        str(tmp_path / "state"),
        "--headless",
        "--backend",
        "torch",
        "--config",
        '{"size": 64, "memory_size": 256, "warmup": 8}',
        "--threads",
        "1",
    ]
    env = {**os.environ, "LEMO_EDGE_LIVE_TOKEN": TOKEN}
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    driver = None
    try:
        _wait_for(lambda: (_status(base) or {}).get("counts", {}).get("frames", 0) > 0, "the first frames", 180, run)

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1280,1300",
        ):
            options.add_argument(flag)
        options.page_load_strategy = "eager"  # the MJPEG image never finishes loading
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(60)

        driver.get(base + "/")
        assert "401" in driver.find_element("tag name", "body").text  # no token, no page

        driver.get(f"{base}/?token={TOKEN}")
        assert driver.title == "lemo-edge live"
        body = driver.find_element("tag name", "body")
        chart = driver.find_element("id", "chart")
        _wait_for(lambda: body.get_attribute("data-status") == "ok", "the status to be shown", 60)
        _wait_for(lambda: body.get_attribute("data-frame") == "1", "a frame of the MJPEG stream", 60)
        width = driver.execute_script("return document.getElementById('frame').naturalWidth")
        assert width == 64  # the 64 x 64 overlay
        first = _wait_for(lambda: int(chart.get_attribute("data-last-frame")) + 1, "the chart's first points", 60) - 1
        later = _wait_for(
            lambda: (n := int(chart.get_attribute("data-last-frame"))) > first and n, "the chart to update", 60
        )
        assert int(chart.get_attribute("data-points")) > 0 and later > first
        counts = driver.find_element("id", "counts").text
        model = driver.find_element("id", "model").text
        assert "frames" in counts and "threshold" in counts
        assert "tf_efficientnet_lite0" in model and "/ 256" in model  # memory items / capacity
        # the chart has drawn something: the canvas is not one colour
        distinct = driver.execute_script(
            "const c = document.getElementById('chart'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; const s = new Set();"
            "for (let i = 0; i < d.length; i += 4 * 97) s.add(d[i] + ',' + d[i+1] + ',' + d[i+2]); return s.size;"
        )
        assert distinct > 2
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "liveview.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"live view screenshot: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        try:
            out, _ = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            out, _ = run.communicate()
    assert run.returncode == 0, out[-3000:]
    assert f"live view http://0.0.0.0:{port}/" in out
