"""The rlimits of a python-tool kernel: set by the first cell the kernel runs, read back there, checked here.

Setting a limit is not enough: a ``setrlimit`` that failed, or a kernel that could raise its limits again (one
running as root), leaves the model's code unbounded while everyone believes otherwise. So the cell reports what
``getrlimit`` says afterwards and the user id it runs as, and ``problems`` compares that with what was asked: a
kernel with any problem is shut down before the model's code runs. Soft = hard, so the limits cannot be raised by
an unprivileged kernel.

``cpu_seconds`` counts from the moment the limits are set (the kernel's own start-up CPU time is added to the
limit), so a small budget is not eaten by importing ipykernel. A kernel with its own user id also gets
``RLIMIT_NPROC`` (the count is per user, so it bounds a fork bomb without touching the agent's processes).
"""

from __future__ import annotations

import json
import resource
from typing import Any

MAX_PROCESSES = 256  # processes and threads of one kernel user (BLAS libraries start one thread per core)

_CELL = """\
def _hanlin_limits(wanted):
    import json, math, os, resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = math.ceil(usage.ru_utime + usage.ru_stime)
    errors = {}
    for name, value in wanted:
        kind = getattr(resource, name)
        value += spent if name == "RLIMIT_CPU" else 0
        hard = resource.getrlimit(kind)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError) as exc:
            errors[name] = str(exc)
    print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "spent": spent, "errors": errors,
                      "limits": {name: resource.getrlimit(getattr(resource, name)) for name, _ in wanted}}))
_hanlin_limits(%s)
del _hanlin_limits
"""


def wanted(memory_mb: int | None, cpu_seconds: int | None, own_user: bool) -> list[tuple[str, int]]:
    """(rlimit name, value) pairs a kernel must run under."""
    out = [("RLIMIT_CORE", 0)]
    if memory_mb:
        out.append(("RLIMIT_AS", memory_mb * 1024 * 1024))
    if cpu_seconds:
        out.append(("RLIMIT_CPU", cpu_seconds))
    if own_user:
        out.append(("RLIMIT_NPROC", MAX_PROCESSES))
    return out


def cell(limits: list[tuple[str, int]]) -> str:
    """The code the kernel runs first: it sets ``limits`` and prints one JSON line about what it got."""
    return _CELL % json.dumps(limits)


def problems(printed: str, limits: list[tuple[str, int]], uid: int | None) -> list[str]:
    """What is wrong with a kernel, from the line its limits cell printed; ``uid``: the id it must run as (None: any
    but root's). Empty when every limit is in place."""
    try:
        report: dict[str, Any] = json.loads(printed.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"the limits cell printed no report ({printed[-300:]!r})"]
    found = []
    ids = {report.get("uid"), report.get("euid")}
    if uid is not None and ids != {uid}:
        found.append(f"it runs as user {sorted(ids, key=str)}, not as its own user {uid}")
    if uid is None and 0 in ids:
        found.append("it runs as root, so its code could raise its own limits")
    for name, error in (report.get("errors") or {}).items():
        found.append(f"setrlimit({name}) failed: {error}")
    for name, value in limits:
        allowed = value + int(report.get("spent", 0)) if name == "RLIMIT_CPU" else value
        soft, hard = (report.get("limits") or {}).get(name, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        if resource.RLIM_INFINITY in (soft, hard) or max(soft, hard) > allowed:
            found.append(f"{name} is (soft {_show(soft)}, hard {_show(hard)}), it must be at most {allowed}")
    return found


def _show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)
