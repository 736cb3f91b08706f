"""How many CPU threads torch should use: from the CPUs this process may actually run on. Stdlib only.

torch sizes its thread pool from the machine's core count, not from what the process is allowed to use
(a CPU affinity mask, a container's cgroup quota), and its OpenMP threads spin-wait for each other at
every operation: when another CPU-bound process holds one of the cores, each step waits for a thread that
is not running. Measured on the 2-core development machine: 30 s per step with 2 threads against 0.4 s with
one while another process was busy. So the automatic choice counts the usable CPUs and, on small machines,
leaves one of them free.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` quota ("max 100000" = unlimited -> None)."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cgroup_file: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process can really use: its affinity, capped by a cgroup quota (rounded up)."""
    cpus = affinity_cpus()
    quota = cgroup_quota(cgroup_file)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def auto_threads(cpus: int) -> int:
    """Threads for `cpus` usable CPUs: all but one up to 8 CPUs (one left for a competing process, the
    OS and the web UI, so that no OpenMP thread waits for a descheduled sibling), at least one."""
    if cpus <= 2:
        return 1
    return cpus - 1 if cpus <= 8 else cpus - 2


def choose_threads(requested: int | None = None, cgroup_file: Path = CGROUP_CPU_MAX) -> int:
    """`requested` when set (> 0, taken as given), else `auto_threads` of the available CPUs."""
    cpus = available_cpus(cgroup_file)
    if requested:
        return int(requested)
    return auto_threads(cpus)


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op thread count (see `choose_threads`); returns it.

    An explicit OMP_NUM_THREADS in the environment wins over the automatic choice (the user set it)."""
    import torch

    if not requested and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = choose_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.debug("torch threads: %d (%d CPUs available)", threads, available_cpus())
    return threads
