"""graphprune as a user runs it: the CLI in a subprocess, with wall time and peak RSS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

# What loading a model cannot avoid: the interpreter plus the modules `graphprune prune` imports.
IMPORT_FLOOR = (
    "import onnx, numpy, graphprune.cli, graphprune.pipeline, graphprune.passes, "
    "graphprune.passes.slice_channels"
)


@dataclass
class Measured:
    """One finished subprocess: exit code, wall seconds, peak RSS in bytes, stdout, stderr."""

    command: list[str]
    returncode: int
    wall: float
    peak_rss: int
    stdout: str
    stderr: str


def graphprune_command() -> list[str]:
    """The installed ``graphprune`` console script next to this interpreter, else ``-m``."""
    script = shutil.which("graphprune", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "graphprune.cli"]


def measure(command: list[str], workdir: Path) -> Measured:
    """Run ``command`` under a small Python wrapper that reports its wall time and peak RSS.

    Why a wrapper: a child's ``ru_maxrss`` starts from the RSS of whoever spawned it (Linux
    carries the old address space's high-water mark across exec, and subprocess uses vfork), so
    measured straight from this process, which holds torch, it would read this process's size.
    The wrapper is ~10 MB, well under anything it measures.
    """
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    usage_path = workdir / "usage.txt"
    wrapped = [sys.executable, "-c", _WRAPPER, str(usage_path), *command]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        returncode = subprocess.call(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    wall, max_rss_kib = usage_path.read_text().split()
    return Measured(
        command=command,
        returncode=returncode,
        wall=float(wall),
        peak_rss=int(max_rss_kib) * 1024,  # Linux reports KiB
        stdout=out_path.read_text(),
        stderr=err_path.read_text(),
    )


_WRAPPER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(f"{wall} {peak}")
sys.exit(code)
"""


def prune(src: Path, dst: Path, ratio: float, verify: bool) -> tuple[Measured, dict]:
    """``graphprune prune SRC DST --ratio R --criterion l2 --json`` (``--no-verify`` unless
    ``verify``); returns the measurement and the parsed JSON report."""
    command = [*graphprune_command(), "prune", str(src), str(dst), "--ratio", str(ratio)]
    command += ["--criterion", "l2", "--json"]
    command += ["--providers", "cpu"] if verify else ["--no-verify"]
    run = measure(command, dst.parent)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {run.returncode}: {run.stderr.strip()}")
    return run, json.loads(run.stdout)


def in_process(src: Path, dst: Path, ratio: float, repeats: int) -> list[dict[str, float]]:
    """``graphprune.pipeline.prune(..., verify=False)`` run ``repeats`` times in this process;
    the stage seconds of each run (the first is cold, the later ones warm)."""
    from graphprune.pipeline import prune as prune_model

    return [
        prune_model(src, dst, ratio=ratio, criterion="l2", verify=False).seconds
        for _ in range(repeats)
    ]


def inspect(src: Path) -> dict:
    """``graphprune inspect SRC --json``: the groups and which constants each one slices."""
    command = [*graphprune_command(), "inspect", str(src), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def import_floor(workdir: Path) -> Measured:
    """Peak RSS of a Python process that only imports what ``graphprune prune`` imports."""
    return measure([sys.executable, "-c", IMPORT_FLOOR], workdir)


def conv_modules(path: Path) -> dict[str, str]:
    """Conv weight initializer -> torch module path, from TorchScript scope names.

    ``/layer1/layer1.0/downsample/downsample.0/Conv`` -> ``layer1.0.downsample.0``: each scope
    part is an attribute name, qualified by its parent's name inside containers.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    modules = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        parts: list[str] = []
        for scope in node.name.strip("/").split("/")[:-1]:
            if parts and scope.startswith(parts[-1] + "."):
                parts[-1] = scope
            else:
                parts.append(scope)
        modules[node.input[1]] = ".".join(parts)
    return modules


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Initializer name -> shape."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {t.name: list(t.dims) for t in graph.initializer}


def removed_by_tensor(plan: dict, groups: dict) -> dict[str, set[int]]:
    """Tensor -> output-channel indices removed from it, for every constant the plan's groups
    slice on axis 0 as producers (``name:0:out`` in ``inspect``)."""
    members = {g["id"]: g["constants"] for g in groups["groups"]}
    removed: dict[str, set[int]] = {}
    for group in plan["groups"]:
        for constant in members.get(group["group"], []):
            tensor, axis, role = constant.rsplit(":", 2)
            if axis == "0" and role == "out":
                removed[tensor] = set(group["removed"])
    return removed
