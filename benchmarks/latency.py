"""onnxruntime CPU latency, measured interleaved so that machine noise hits every model alike."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class Latency:
    """Per-run seconds of one model at one thread count."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        """25th and 75th percentiles."""
        q = statistics.quantiles(self.samples, n=4)
        return q[0], q[2]


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with its own pool of ``threads`` intra-op threads (for one-off runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # failures surface as exceptions; keep stderr quiet
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(
    models: dict[str, Path], shape: tuple[int, ...], threads: int, runs: int, warmup: int
) -> dict[str, Latency]:
    """Latencies of every model, measured in one fresh process (see ``_measure``)."""
    paths = {name: str(path) for name, path in models.items()}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        samples = pool.submit(_measure, paths, shape, threads, runs, warmup).result()
    return {name: Latency(times) for name, times in samples.items()}


def _measure(
    models: dict[str, str], shape: tuple[int, ...], threads: int, runs: int, warmup: int
) -> dict[str, list[float]]:
    """Warm up each model, then time one run of each in turn, ``runs`` times, alternating the
    order each round.

    All sessions share one global onnxruntime thread pool of ``threads`` intra-op threads. With
    a pool per session, each pool's threads keep spinning after its run and fight the next
    session's threads for the cores (on 2 cores that tripled ResNet-50's latency at 2 threads).
    A global pool is fixed per process, hence a fresh process per thread count.
    """
    ort.set_global_thread_pool_sizes(threads, 1)
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {
        name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for name, path in models.items()
    }
    feed = {"input": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feed)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for round_ in range(runs):
        for name in order if round_ % 2 == 0 else reversed(order):
            start = time.perf_counter()
            sessions[name].run(None, feed)
            samples[name].append(time.perf_counter() - start)
    return samples
