"""How many CPUs this process may really use: affinity and cgroup quota, not the host's count."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """Return the CPUs this process may use: the affinity mask, capped by any cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1

    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """Return the cgroup CPU quota in CPUs (v2 `cpu.max` or v1 CFS files), or None if unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)

    v1_quota = root / "cpu" / "cpu.cfs_quota_us"
    v1_period = root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota_us = int(v1_quota.read_text())
        if quota_us <= 0:
            return None
        return quota_us / int(v1_period.read_text())
    return None
