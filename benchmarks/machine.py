"""Describe the machine and software versions the figures were taken on."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "graphprune",
    "onnxruntime",
    "onnx",
    "numpy",
    "torch",
    "torchvision",
    "torch-pruning",
    "onnxsim",
)


def _first(path: str, key: str, sep: str = ":") -> str:
    """The value of the first ``key<sep>value`` line of a text file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        name, found, value = line.partition(sep)
        if found and name.strip() == key:
            return value.strip().strip('"')
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision(root: Path) -> str:
    """Short commit of the checkout, with ``+dirty`` when graphprune's sources are modified."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "graphprune", "passes"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def describe(root: Path) -> dict[str, str]:
    """CPU, cores, RAM, OS, Python and package versions, as label -> text."""
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    info = {
        "CPU": _first("/proc/cpuinfo", "model name"),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "RAM": f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "unknown",
        "OS": f"{_first('/etc/os-release', 'PRETTY_NAME', '=')}, kernel {platform.release()}",
        "Python": platform.python_version(),
        "graphprune commit": _git_revision(root),
    }
    info.update({package: _version(package) for package in PACKAGES})
    return info


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge how busy the machine was."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())
