"""What systemd would run for a service unit, for ``tests/jetson/arm64_check.sh`` (which has no systemd to ask).

Reads an installed unit file (inside a root folder such as a chroot) and prints shell assignments that the check
``eval``s: the ``User=``/``Group=``/``SupplementaryGroups=``/``WorkingDirectory=`` settings, the environment (the
unit's ``Environment=`` lines, then its ``EnvironmentFile=`` files, which override them, as in systemd), and every
``ExecStartPre=`` and the ``ExecStart=`` command line, split into words and expanded as systemd does it:
``${VAR}`` is replaced inside its word, a word that is exactly ``$VAR`` becomes the value's whitespace-separated
words (none for an empty value), ``$$`` is a ``$`` and ``%%`` a ``%``. Other ``%`` specifiers are refused (the
bundle's unit has none; a unit that gets one should fail here, not run with a wrong argument).

Usage::

    eval "$(python3 tests/jetson/unit_exec.py --root BOX /etc/systemd/system/lemo-edge.service)"

Variables set: ``UNIT_USER``, ``UNIT_GROUP``, ``UNIT_GROUPS`` (array), ``UNIT_WORKDIR``, ``UNIT_ENV`` (array of
``KEY=VALUE``), ``UNIT_PRE_COUNT``, ``UNIT_PRE_<i>`` (array), ``UNIT_PRE_IGNORE_<i>`` (1: a ``-`` prefix, failure
ignored), ``UNIT_START`` (array). With ``--json`` the same facts are printed as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

_WHOLE_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_BRACED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PREFIX_CHARS = "-@:+!"


class UnitError(ValueError):
    """The unit cannot be read or holds something this reader does not handle."""


@dataclass
class Command:
    """One ``Exec*=`` line: its expanded words and whether a failure is ignored (``-`` prefix)."""

    argv: list[str]
    ignore_failure: bool


@dataclass
class ServicePlan:
    """What systemd would run for the unit."""

    user: str = "root"
    group: str = ""
    groups: list[str] = field(default_factory=list)
    workdir: str = "/"
    environment: dict[str, str] = field(default_factory=dict)
    exec_start_pre: list[Command] = field(default_factory=list)
    exec_start: Command | None = None


def unit_settings(text: str, section: str = "Service") -> list[tuple[str, str]]:
    """``(key, value)`` of every assignment in ``[section]``, in order (continuation lines joined by a space)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    current = ""
    settings = []
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an ``EnvironmentFile=`` (``#``/``;`` comments; shell-style quotes removed)."""
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            env[key.strip()] = " ".join(shlex.split(value, comments=False))
        except ValueError as err:
            raise UnitError(f"{path}: expected KEY=VALUE with balanced quotes, got {raw!r} ({err})") from err
    return env


def _specifiers(word: str) -> str:
    out = []
    i = 0
    while i < len(word):
        if word[i] == "%":
            if word[i + 1 : i + 2] != "%":
                raise UnitError(f"unit: the specifier {word[i : i + 2]!r} in {word!r} is not handled here")
            out.append("%")
            i += 2
            continue
        out.append(word[i])
        i += 1
    return "".join(out)


def expand_command(line: str, env: dict[str, str]) -> Command:
    """Split an ``Exec*=`` value into words and expand its variables as systemd does (see the module docstring)."""
    ignore = False
    while line and line[0] in _PREFIX_CHARS:
        ignore = ignore or line[0] == "-"
        line = line[1:]
    argv: list[str] = []
    for word in shlex.split(line):
        word = _specifiers(word)
        whole = _WHOLE_VAR.fullmatch(word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
            continue
        word = _BRACED_VAR.sub(lambda m: env.get(m.group(1), ""), word.replace("$$", "\0"))
        argv.append(word.replace("\0", "$"))
    if not argv:
        raise UnitError(f"unit: expected a command, got {line!r}")
    return Command(argv, ignore)


def service_plan(unit: Path, root: Path) -> ServicePlan:
    """Read ``unit`` (a path inside ``root``) and its environment files, as systemd would for a start.

    Raises:
        UnitError: no ``ExecStart=``, a required environment file missing, or an unhandled specifier.
    """
    inside = lambda path: root / path.lstrip("/")  # noqa: E731
    settings = unit_settings(inside(str(unit)).read_text(encoding="utf-8"))
    plan = ServicePlan()
    env_files: list[str] = []
    pre: list[str] = []
    start = ""
    for key, value in settings:
        if key == "User":
            plan.user = value
        elif key == "Group":
            plan.group = value
        elif key == "SupplementaryGroups":
            plan.groups = value.split() if value else []
        elif key == "WorkingDirectory":
            plan.workdir = value.lstrip("-")
        elif key == "Environment":
            if not value:
                plan.environment.clear()
            for item in shlex.split(value):
                name, _, val = item.partition("=")
                plan.environment[name] = val
        elif key == "EnvironmentFile":
            env_files.append(value)
        elif key == "ExecStartPre":
            pre.append(value)
        elif key == "ExecStart":
            start = value
    for entry in env_files:
        optional = entry.startswith("-")
        path = inside(entry.lstrip("-"))
        if not path.is_file():
            if optional:
                continue
            raise UnitError(f"unit: EnvironmentFile {entry} is missing")
        plan.environment.update(read_env_file(path))
    plan.group = plan.group or plan.user
    plan.exec_start_pre = [expand_command(line, plan.environment) for line in pre]
    if not start:
        raise UnitError(f"unit {unit}: expected an ExecStart= line in [Service], found none")
    plan.exec_start = expand_command(start, plan.environment)
    return plan


def shell_assignments(plan: ServicePlan) -> str:
    """The plan as bash assignments (see the module docstring for the names)."""
    q = shlex.quote
    array = lambda words: "(" + " ".join(q(w) for w in words) + ")"  # noqa: E731
    lines = [
        f"UNIT_USER={q(plan.user)}",
        f"UNIT_GROUP={q(plan.group)}",
        f"UNIT_GROUPS={array(plan.groups)}",
        f"UNIT_WORKDIR={q(plan.workdir)}",
        f"UNIT_ENV={array(f'{k}={v}' for k, v in plan.environment.items())}",
        f"UNIT_PRE_COUNT={len(plan.exec_start_pre)}",
    ]
    for i, command in enumerate(plan.exec_start_pre):
        lines += [f"UNIT_PRE_{i}={array(command.argv)}", f"UNIT_PRE_IGNORE_{i}={int(command.ignore_failure)}"]
    assert plan.exec_start is not None
    lines.append(f"UNIT_START={array(plan.exec_start.argv)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry: print the plan of a unit as shell assignments or JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unit", help="the unit's path inside --root, e.g. /etc/systemd/system/lemo-edge.service")
    parser.add_argument("--root", default="/", help="the root folder the unit and its environment files are in")
    parser.add_argument("--json", action="store_true", help="print JSON instead of shell assignments")
    args = parser.parse_args(argv)
    try:
        plan = service_plan(Path(args.unit), Path(args.root))
    except (OSError, UnitError) as err:
        print(f"unit_exec: {err}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(plan), indent=2) + "\n" if args.json else shell_assignments(plan), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
