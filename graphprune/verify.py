"""Verify: run models on onnxruntime and compare them.

The zero-then-prune oracle: take the original model, zero every slice that *reads* a removed
channel (role `in`: the next layers' input columns), and run it beside the physically pruned
model on the same inputs. Removed channels are still computed in the masked model but reach
nothing, so every output must match the pruned model to fp32 round-off. A wrong group, a
missed consumer, a stale shape constant or a misplaced slice shows up as a mismatch.

"fp32 round-off" is measured, not assumed, when the fixed tolerance is not enough: deep models
ending in a peaked softmax amplify summation-order noise past any fixed atol. Then the masked
model is run again with ORT's graph optimizations off and fully on (the same function, summed
in other orders); the pruned model passes if it is within twice the larger self-difference. A
structural error is of the output's own magnitude and cannot hide below it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphprune import load as loading
from graphprune.depgraph import DepGraph
from graphprune.edit import ConstantStore
from graphprune.ops import Role

RTOL, ATOL = 1e-4, 1e-5
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DYNAMIC_DIM = 64  # size given to a symbolic non-batch dimension when no shape is supplied


@dataclass
class OutputCheck:
    name: str
    max_abs: float
    max_rel: float
    passed: bool
    scale: float = 0.0  # max |reference|: how large the values compared were
    noise: float | None = None  # the reference's own fp32 noise, when it had to be measured


@dataclass
class Check:
    """One comparison on one execution provider."""

    what: str
    provider: str
    outputs: list[OutputCheck] = field(default_factory=list)
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or all(o.passed for o in self.outputs)

    def line(self) -> str:
        if self.skipped:
            return f"SKIPPED  {self.what} on {self.provider}: {self.skipped}"
        worst = max(self.outputs, key=lambda o: o.max_abs)
        verdict = "PASSED " if self.passed else "FAILED "
        noise = [o.noise for o in self.outputs if o.noise is not None]
        within = f", fp32 noise of the reference {max(noise):.2e}" if noise else ""
        return (
            f"{verdict} {self.what} on {self.provider}: max abs {worst.max_abs:.2e}, "
            f"max rel {worst.max_rel:.2e}, output scale {worst.scale:.2e}{within} "
            f"({len(self.outputs)} outputs)"
        )


def cuda_available() -> bool:
    return PROVIDERS["cuda"] in ort.get_available_providers()


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """Random inputs honouring dtypes; symbolic dimensions get 1 (batch) or DYNAMIC_DIM."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = (shapes or {}).get(value.name) or tuple(
            d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else DYNAMIC_DIM)
            for axis, d in enumerate(tensor_type.shape.dim)
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) < 0.5
        else:
            feeds[value.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def session(
    model: onnx.ModelProto,
    provider: str = "cpu",
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
) -> ort.InferenceSession:
    """An onnxruntime session, created from a temporary file: onnxruntime then reads the weights
    itself, where passing serialized bytes would hold a second copy of them (100 MB more for
    ResNet-50), and models past the protobuf limit work the same way."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.log_severity_level = 3
    providers: list = [PROVIDERS[provider]]
    if provider == "cuda":
        # fp32 parity: TF32 would round matmul inputs to 10 mantissa bits
        providers = [(PROVIDERS["cuda"], {"use_tf32": "0"})]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        loading.save(model, path)
        return ort.InferenceSession(str(path), options, providers=providers)


def run(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    provider: str = "cpu",
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
) -> dict[str, np.ndarray]:
    sess = session(model, provider, optimization)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs)), strict=True))


def compare(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[OutputCheck]:
    """Per output: |actual - reference| <= atol * max(1, scale) + rtol * |reference| everywhere,
    where scale = max |reference|.

    fp32 round-off grows with the magnitudes summed: an element that cancels to near zero in an
    output whose values reach 40 carries ~1e-5 of summation-order noise. Scaling atol by the
    output's magnitude (only when it exceeds 1) keeps the check as strict as rtol/atol on
    unit-scale outputs without failing on noise; a structural error is of the output's order.
    """
    checks = []
    for name, ref in reference.items():
        got = actual[name]
        if got.shape != ref.shape:
            checks.append(OutputCheck(name, float("inf"), float("inf"), False))
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(got64 - ref64)
        max_abs = float(diff.max(initial=0.0))
        max_rel = float((diff / np.maximum(np.abs(ref64), 1e-12)).max(initial=0.0))
        scale = float(np.abs(ref64).max(initial=0.0))
        passed = bool(np.all(diff <= atol * max(1.0, scale) + rtol * np.abs(ref64)))
        checks.append(OutputCheck(name, max_abs, max_rel, passed, scale))
    return checks


def masked_model(
    model: onnx.ModelProto,
    dep: DepGraph,
    removals: Mapping[str, np.ndarray],
    in_place: bool = False,
) -> onnx.ModelProto:
    """`model` with every slice that reads a removed unit set to zero (the oracle's reference);
    a copy, or `model` itself when `in_place`."""
    masked = model
    if not in_place:
        masked = onnx.ModelProto()
        masked.CopyFrom(model)
    store = ConstantStore(masked)
    for group_id, units in removals.items():
        group = dep.group(group_id)
        for space, role in group.roles.items():
            indices = group.indices(space, np.asarray(units))
            if role != Role.IN or not len(indices):
                continue
            value = store.get(space.tensor).copy()
            np.moveaxis(value, space.axis, 0)[indices] = 0
            store.set(space.tensor, value)
    return masked


def oracle(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    dep: DepGraph,
    removals: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    providers: tuple[str, ...] = ("cpu", "cuda"),
    rtol: float = RTOL,
    atol: float = ATOL,
    in_place: bool = False,
) -> list[Check]:
    """The zero-then-prune oracle on each provider (CUDA is reported as skipped when absent).
    With `in_place`, `model` itself is masked (saves a copy when the caller is done with it)."""
    reference_model = masked_model(model, dep, removals, in_place)
    checks = []
    for provider in providers:
        check = Check("zero-then-prune oracle", provider)
        if provider == "cuda" and not cuda_available():
            check.skipped = "CUDAExecutionProvider not available (install graphprune[gpu])"
        else:
            reference = run(reference_model, inputs, provider)
            check.outputs = compare(reference, run(pruned, inputs, provider), rtol, atol)
            if not check.passed:
                _judge_against_noise(check, reference_model, reference, inputs, provider)
        checks.append(check)
    return checks


NOISE_FACTOR = 2.0


def _judge_against_noise(
    check: Check,
    reference_model: onnx.ModelProto,
    reference: Mapping[str, np.ndarray],
    inputs,
    provider: str,
) -> None:
    """Measure the reference's own summation-order noise; failed outputs within NOISE_FACTOR
    times it pass (see the module docstring)."""
    levels = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    resummed = [run(reference_model, inputs, provider, level) for level in levels]
    for output in check.outputs:
        if output.passed:
            continue
        ref = reference[output.name].astype(np.float64)
        output.noise = max(float(np.abs(r[output.name] - ref).max()) for r in resummed)
        output.passed = output.max_abs <= NOISE_FACTOR * output.noise
