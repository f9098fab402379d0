"""The tools compared against: Torch-Pruning 1.6.1 (in process) and onnxsim 0.8.1."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from benchmarks.common import Config, build_model, example_input
from benchmarks.latency import session


@dataclass
class TorchPruningResult:
    """Torch-Pruning's timings per repetition and the model it produced (the last one's)."""

    times: list[tuple[float, float]]  # (build, step) seconds per repetition
    out_channels: dict[str, int]  # Conv module path -> out channels after pruning
    in_features: dict[str, int]  # Linear module path -> in features after pruning
    removed: dict[str, set[int]]  # Conv module path -> removed output-channel indices
    params: tuple[int, int]  # before, after (torch parameters: BatchNorm affine included)
    macs: tuple[int, int]  # before, after (tp.utils.count_ops_and_params)

    @property
    def median(self) -> tuple[float, float]:
        """Median build and median step seconds."""
        return (
            statistics.median(b for b, _ in self.times),
            statistics.median(s for _, s in self.times),
        )

    @property
    def totals(self) -> list[float]:
        """build + step seconds of each repetition."""
        return [b + s for b, s in self.times]


def torch_pruning(config: Config) -> TorchPruningResult:
    """Prune a fresh model ``config.repeats`` times; model construction is not timed."""
    import torch
    import torch_pruning as tp

    times, last = [], None
    for _ in range(config.repeats):
        model, inputs = build_model(config), example_input(config)
        before = tp.utils.count_ops_and_params(model, inputs)
        build, step, removed = _prune_once(tp, model, inputs, config.ratio)
        times.append((build, step))
        last = model, inputs, before, removed
    model, inputs, before, removed = last
    after = tp.utils.count_ops_and_params(model, inputs)
    names = dict(model.named_modules())
    return TorchPruningResult(
        times=times,
        out_channels={n: m.out_channels for n, m in names.items() if _is_conv(torch, m)},
        in_features={n: m.in_features for n, m in names.items() if _is_linear(torch, m)},
        removed=removed,
        params=(int(before[1]), int(after[1])),
        macs=(int(before[0]), int(after[0])),
    )


def _prune_once(tp, model, inputs, ratio: float) -> tuple[float, float, dict[str, set[int]]]:
    """Build the pruner and step it once; record each Conv's removed output channels.

    ``step(interactive=True)`` yields the same groups that ``step()`` prunes; recording their
    indices before ``group.prune()`` costs microseconds.
    """
    import torch

    names = {module: name for name, module in model.named_modules()}
    start = time.perf_counter()
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(  # MetaPruner / MagnitudePruner are aliases of it in 1.6.1
        model,
        inputs,
        importance=importance,
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
        global_pruning=False,
    )
    built = time.perf_counter()
    removed: dict[str, set[int]] = {}
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for item in group:
                module = item.dep.target.module
                if _is_conv(torch, module) and pruner.DG.is_out_channel_pruning_fn(
                    item.dep.handler
                ):
                    removed[names[module]] = {int(i) for i in item.idxs}
            group.prune()
    stepped = time.perf_counter()
    return built - start, stepped - built, removed


def _is_conv(torch, module) -> bool:
    return isinstance(module, torch.nn.Conv2d)


def _is_linear(torch, module) -> bool:
    return isinstance(module, torch.nn.Linear)


@dataclass
class OnnxsimResult:
    """One ``onnxsim.apply_structured_pruning`` run on one input file."""

    label: str
    source: Path
    output: Path
    seconds: float
    params: tuple[int, int]  # float initializer elements, before and after
    runs: bool  # onnxruntime loads it and returns finite outputs of the dense output's shape
    error: str = ""

    @property
    def removed_share(self) -> float:
        return 1 - self.params[1] / self.params[0]


def float_params(model: onnx.ModelProto) -> int:
    """Elements of all floating-point initializers."""
    kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in kinds)


def onnxsim_prune(label: str, src: Path, dst: Path, config: Config) -> OnnxsimResult:
    """Load ``src``, run ``apply_structured_pruning(sparsity=ratio, importance_norm="l2")``
    (timed, save excluded), save to ``dst``, then check that onnxruntime runs the result."""
    import onnxsim

    model = onnx.load(str(src))
    start = time.perf_counter()
    pruned = onnxsim.apply_structured_pruning(
        model, sparsity=config.ratio, importance_norm="l2", global_sparsity=False
    )
    seconds = time.perf_counter() - start
    onnx.save(pruned, str(dst))
    error = runs_error(src, dst, config)
    return OnnxsimResult(
        label, src, dst, seconds, (float_params(model), float_params(pruned)), not error, error
    )


def runs_error(dense: Path, pruned: Path, config: Config) -> str:
    """Empty when ``pruned`` runs on onnxruntime like ``dense`` does (shape, finite); else why."""
    feed = {"input": np.random.default_rng(0).standard_normal(config.shape, dtype=np.float32)}
    try:
        want = session(dense, threads=1).run(None, feed)
        got = session(pruned, threads=1).run(None, feed)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph types
        return _one_line(err)
    if [w.shape for w in want] != [g.shape for g in got]:
        return f"output shapes {[g.shape for g in got]} != {[w.shape for w in want]}"
    if not all(np.isfinite(g).all() for g in got):
        return "non-finite outputs"
    return ""


def _one_line(err: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def unshare_initializers(src: Path, dst: Path) -> int:
    """Write ``src`` with every ``Identity(initializer)`` replaced by a private copy of it.

    The TorchScript exporter deduplicates equal initializers and reads the copies through
    Identity nodes; with random init every folded BatchNorm bias is zero, so Convs share biases.
    Returns how many Identity nodes were replaced.
    """
    model = onnx.load(str(src))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    aliases = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in constants
    }
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    for alias, name in aliases.items():
        graph.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(constants[name]), alias)
        )
    del graph.node[:]
    graph.node.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(aliases)
