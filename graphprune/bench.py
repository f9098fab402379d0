"""Bench: latency, throughput and memory of one model on an onnxruntime execution provider.

Warm-up runs first (allocations, kernel selection, CUDA graph capture are not latency), then
`runs` timed runs of the same inputs; the median and the 90th percentile are reported, and
throughput = batch / median. Memory is the peak resident set of a fresh child process that
only loads the model and runs it, so it is the model's footprint and not this process's
history (ru_maxrss is a high-water mark).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from graphprune.errors import BadInput, GraphpruneError
from graphprune.load import load
from graphprune.progress import progress
from graphprune.verify import cuda_available, random_inputs, session


@dataclass
class BenchResult:
    provider: str
    batch: int
    runs: int
    median_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median latency
    peak_rss_bytes: int | None  # None when measured in-process was not asked for

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        memory = f", peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB" if self.peak_rss_bytes else ""
        return (
            f"{self.provider}: median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, "
            f"{self.throughput:.1f} samples/s (batch {self.batch}, {self.runs} runs){memory}"
        )


def bench(
    model: str | os.PathLike,
    provider: str = "cpu",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    threads: int = 0,
    measure_memory: bool = True,
) -> BenchResult:
    """Time `model` (a path) on `provider`; see the module docstring."""
    if provider == "cuda" and not cuda_available():
        raise BadInput("CUDAExecutionProvider is not available (install graphprune[gpu])")
    if measure_memory:
        return _in_child(Path(model), provider, input_shapes, batch, warmup, runs, threads)
    return _measure(Path(model), provider, input_shapes, batch, warmup, runs, threads)


def _measure(
    path: Path, provider: str, input_shapes, batch, warmup: int, runs: int, threads: int
) -> BenchResult:
    model = load(path)
    shapes = dict(input_shapes or {})
    feeds = random_inputs(model, seed=0, shapes=_with_batch(model, shapes, batch))
    sess = session(model, provider, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads)
    del model
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in progress(range(runs), "timing"):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    median, p90 = float(np.median(times)), float(np.percentile(times, 90))
    batch_size = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    return BenchResult(provider, batch_size, runs, median, p90, batch_size / median * 1e3, None)


def _with_batch(model, shapes: dict, batch: int | None) -> dict:
    """Set dimension 0 of every graph input to `batch` (it must be dynamic or already equal)."""
    if batch is None:
        return shapes
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or value.name in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            raise BadInput(
                f"input '{value.name}' has a static batch of {dims[0].dim_value}; "
                f"--batch {batch} needs a dynamic one"
            )
        fixed = [d.dim_value if d.HasField("dim_value") else 64 for d in dims]
        shapes[value.name] = (batch, *fixed[1:])
    return shapes


def _in_child(
    path: Path, provider: str, input_shapes, batch, warmup: int, runs: int, threads: int
) -> BenchResult:
    """Run `_measure` in a fresh interpreter and read its peak RSS."""
    request = json.dumps(
        {
            "path": str(path),
            "provider": provider,
            "batch": batch,
            "shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "warmup": warmup,
            "runs": runs,
            "threads": threads,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "graphprune.bench", request],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"benchmark of {path} failed: {message}")
    return BenchResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def _child_main(request: str) -> None:
    args = json.loads(request)
    shapes = {k: tuple(v) for k, v in args["shapes"].items()}
    try:
        result = _measure(
            Path(args["path"]),
            args["provider"],
            shapes,
            args["batch"],
            args["warmup"],
            args["runs"],
            args["threads"],
        )
    except GraphpruneError as err:
        sys.exit(f"{err}")
    result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    _child_main(sys.argv[1])
