"""Verify: run models on onnxruntime and compare them.

The zero-then-prune oracle: take the original model, zero every slice that *reads* a removed
channel (role `in`: the next layers' input columns), and run it beside the physically pruned
model on the same inputs. Removed channels are still computed in the masked model but reach
nothing, so every output must match the pruned model to fp32 round-off. A wrong group, a
missed consumer, a stale shape constant or a misplaced slice shows up as a mismatch.

Every check, the oracle's and `verify`'s, compares with one comparator (`compare`): per
output, |actual - reference| <= rtol |reference| + atol * max |reference| everywhere (the
tolerance follows the output's own magnitude at every scale: logits of 1e-7 are judged as
strictly as logits of 10), cosine >= 1 - 1e-4, and for classifier- and LM-shaped outputs the
argmax of every row that round-off cannot flip. At the default tolerances the elementwise test
implies the other two; with tolerances loosened by hand they still hold the line.

A check has tested something only where the reference outputs are alive: finite, not all
zero, not constant. Dead outputs are reported and not judged; when the inputs were generated
(graphprune.inputs) and some output is dead, other input sets are tried (image-like [0, 1]
and [0, 255], floats x 10, another seed) and the one with the most alive outputs kept; when
no output is alive at any of them the check is INCONCLUSIVE: not passed, so nothing is
written, with a hint to give --inputs. Each check records the inputs it used (shapes, value
ranges, how they were made).

"fp32 round-off" is measured, not assumed, when the fixed tolerance is not enough: deep models
ending in a peaked softmax amplify summation-order noise past any fixed atol. Then the masked
model is run again with ORT's graph optimizations off and fully on (the same function, summed
in other orders); the pruned model passes if it is within twice the larger self-difference. A
structural error is of the output's own magnitude and cannot hide below it.

Re-running at other optimization levels does not always move the round-off: the pruned model's
matmuls have a shorter inner dimension, so its sums are grouped differently, and in a deep
model (a 24-layer LLM, or weights refitted by compensation) that difference can exceed any
self-difference ORT shows. When an output still fails, the decision is made in float64 on CPU:
both models are widened (every float32 initializer, Constant, Cast target and input) and run
again. Round-off then shrinks by about 2^29, so an exact rewrite agrees to FP64_RTOL of the
output's scale while a structural error stays of the output's own order. A model that cannot
run in float64 (an op without a double kernel) keeps its float32 verdict.

A plan that prunes an *inexact* group (the residual stream through its normalizations: the
masked model still counts the removed channels in every LayerNorm/RMSNorm statistic) cannot
match exactly. Its oracle comparison is still run and reported (max abs/rel error, cosine),
labelled "not exact by design", without judging; a structural check judges instead: the pruned
model runs and every output has the masked original's shape, at the oracle's inputs and, for a
model with dynamic axes, at other sizes of them.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphprune import load as loading
from graphprune.depgraph import DepGraph
from graphprune.edit import ConstantStore, copy_structure
from graphprune.errors import BadInput, about
from graphprune.inputs import (
    DYNAMIC_DIM,
    InputSet,
    as_input_set,
    declared_dims,
    default_inputs,
    free_inputs,
)
from graphprune.ops import Role, zero_value
from graphprune.progress import progress
from graphprune.values import check_values

__all__ = ["DYNAMIC_DIM", "InputSet"]  # re-exported: callers read them from here

RTOL, ATOL = 1e-4, 1e-5
COSINE_EPS = 1e-4  # 1 - cosine allowed: a relative L2 error of ~1.4%
FP16_RTOL, FP16_ATOL = 1e-2, 1e-3  # verify's defaults for fp16 models, and top-1's widest slack
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
INCONCLUSIVE_HINT = "give real inputs with --inputs"


@dataclass
class OutputCheck:
    name: str
    max_abs: float
    max_rel: float
    passed: bool
    scale: float = 0.0  # max |reference|: how large the values compared were
    noise: float | None = None  # the reference's own fp32 noise, when it had to be measured
    fp64_gap: float | None = None  # max |masked - pruned| in float64, when it had to decide
    cosine: float | None = None  # of the flattened outputs
    top1: float | None = None  # share of rows (all axes but the last) with the same argmax
    top5: float | None = None  # share of rows whose reference argmax is in the actual top 5
    dead: str = ""  # why the reference output tests nothing (all zero, constant, NaN): not judged

    def line(self, provider: str) -> str:
        if self.dead:
            return f"NOT JUDGED | {provider} | output '{self.name}' | reference {self.dead}"
        verdict = "PASSED" if self.passed else "FAILED"
        extra = "".join(
            f", {k} {v:.6f}" if k == "cosine" else f", {k} {v:.1%}"
            for k, v in (("cosine", self.cosine), ("top-1", self.top1), ("top-5", self.top5))
            if v is not None
        )
        return (
            f"{verdict} | {provider} | output '{self.name}' | max abs {self.max_abs:.2e}, "
            f"max rel {self.max_rel:.2e}{extra}"
        )


@dataclass
class ShapeCheck:
    """One output of the pruned model against the masked original, at one set of input shapes."""

    name: str
    inputs: dict[str, list[int]]
    expected: list[int]
    actual: list[int]
    error: str = ""  # why the pruned model did not run, if it did not

    @property
    def passed(self) -> bool:
        return not self.error and self.expected == self.actual

    def as_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


NOT_EXACT = "not exact by design (normalization statistics change)"


@dataclass
class Check:
    """One comparison on one execution provider. An inexact check (`exact` False) reports its
    outputs without judging them; `shapes` (a structural check) are always judged. Outputs
    whose reference is dead are reported, not judged; when no output is alive at any input
    tried the check is `inconclusive`: not passed. `inputs` describes the inputs used."""

    what: str
    provider: str
    outputs: list[OutputCheck] = field(default_factory=list)
    skipped: str = ""
    exact: bool = True
    note: str = ""
    shapes: list[ShapeCheck] = field(default_factory=list)
    inconclusive: str = ""  # why nothing could be judged
    inputs: dict[str, dict] = field(default_factory=dict)  # InputSet.describe() of those used
    inputs_text: str = ""  # the same in one line
    inputs_tried: list[str] = field(default_factory=list)  # labels of the input sets run

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        if self.inconclusive:
            return False
        judged = [o for o in self.outputs if not o.dead] if self.exact else []
        return all(o.passed for o in judged) and all(s.passed for s in self.shapes)

    @property
    def state(self) -> str:
        """skipped, inconclusive, reported (inexact, not judged), passed or failed."""
        if self.skipped or self.inconclusive:
            return "skipped" if self.skipped else "inconclusive"
        if not self.exact and not self.shapes:
            return "reported"
        return "passed" if self.passed else "failed"

    def as_dict(self) -> dict:
        shapes = [s.as_dict() for s in self.shapes]
        return asdict(self) | {"shapes": shapes, "passed": self.passed, "state": self.state}

    def line(self) -> str:
        """The verdict in one line, then the inputs used (shapes, ranges) on the same line."""
        line = self._verdict_line()
        return f"{line}; {self.inputs_text}" if self.inputs_text else line

    def _verdict_line(self) -> str:
        if self.skipped:
            return f"SKIPPED  {self.what} on {self.provider}: {self.skipped}"
        if self.inconclusive:
            return f"INCONCLUSIVE {self.what} on {self.provider}: {self.inconclusive}"
        if self.shapes:
            return self._shape_line()
        alive = [o for o in self.outputs if not o.dead] or self.outputs
        dead = [o for o in self.outputs if o.dead]
        unjudged = (
            "; not judged: " + ", ".join(f"'{o.name}' ({o.dead})" for o in dead) if dead else ""
        )
        # a failed output first, then the largest error relative to its output's scale
        worst = max(alive, key=lambda o: (not o.passed, o.max_abs / (o.scale or 1.0)))
        if not self.exact:
            cosine = min((o.cosine for o in self.outputs if o.cosine is not None), default=None)
            return (
                f"REPORTED {self.what} on {self.provider}, {self.note}: max abs "
                f"{worst.max_abs:.2e}, max rel {worst.max_rel:.2e}"
                + (f", cosine {cosine:.6f}" if cosine is not None else "")
                + f" ({len(self.outputs)} outputs)"
            )
        verdict = "PASSED " if self.passed else "FAILED "
        noise = [o.noise for o in alive if o.noise is not None]
        within = f", fp32 noise of the reference {max(noise):.2e}" if noise else ""
        wide = [o.fp64_gap for o in alive if o.fp64_gap is not None]
        within += f", float64 max abs {max(wide):.2e}" if wide else ""
        cosine = min((o.cosine for o in alive if o.cosine is not None), default=None)
        within += f", cosine {cosine:.6f}" if cosine is not None else ""
        return (
            f"{verdict} {self.what} on {self.provider}: max abs {worst.max_abs:.2e}, "
            f"max rel {worst.max_rel:.2e}, output scale {worst.scale:.2e}{within} "
            f"({len(alive)} outputs){unjudged}"
        )

    def _shape_line(self) -> str:
        verdict = "PASSED " if self.passed else "FAILED "
        sizes = sorted({str(s.inputs) for s in self.shapes})
        wrong = next((s for s in self.shapes if not s.passed), None)
        detail = ""
        if wrong is not None:
            detail = f"; '{wrong.name}' at {wrong.inputs}: " + (
                wrong.error or f"expected {wrong.expected}, got {wrong.actual}"
            )
        return (
            f"{verdict} {self.what} on {self.provider}: {len(self.shapes)} output shapes at "
            f"{len(sizes)} input size(s){detail}"
        )


def cuda_available() -> bool:
    return PROVIDERS["cuda"] in ort.get_available_providers()


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> InputSet:
    """Default inputs derived from the graph (graphprune.inputs): integers within the tables
    they index, masks of ones, floats N(0, 1); symbolic (and -1 or 0) sizes from `shapes`
    where an input given there names them, else 1 on axis 0 and DYNAMIC_DIM elsewhere. The
    set carries the alternatives the oracle tries when outputs are dead at these."""
    return default_inputs(model, seed, shapes)


def session(
    model: onnx.ModelProto,
    provider: str = "cpu",
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    threads: int = 0,
) -> ort.InferenceSession:
    """An onnxruntime session, created from a temporary file: onnxruntime then reads the weights
    itself, where passing serialized bytes would hold a second copy of them (100 MB more for
    ResNet-50), and models past the protobuf limit work the same way."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.log_severity_level = 4  # fatal only: failed runs are reported in our own words
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
    providers: list = [PROVIDERS[provider]]
    if provider == "cuda":
        # fp32 parity: TF32 would round matmul inputs to 10 mantissa bits
        providers = [(PROVIDERS["cuda"], {"use_tf32": "0"})]
    from graphprune.outputs import scratch  # one folder per process, removed on exit, SIGTERM

    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        path = Path(tmp) / "model.onnx"
        _save_for_session(model, path)
        return ort.InferenceSession(str(path), options, providers=providers)


def _save_for_session(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` for onnxruntime to read. A model past the protobuf limit is written as its
    structure plus an external data file filled one initializer at a time; `model` itself is
    not touched (`loading.save` copies the whole model first, and clearing and restoring tensor
    bytes in place would leave the old bytes in protobuf's arena)."""
    if loading.tensor_nbytes(model) <= loading.EXTERNAL_DATA_THRESHOLD:
        path.write_bytes(model.SerializeToString())
        return
    skeleton = copy_structure(model)
    data_path = path.with_name(path.name + ".data")
    with open(data_path, "wb") as data:
        for tensor in model.graph.initializer:
            external = tensor.HasField("raw_data") and tensor.data_location != tensor.EXTERNAL
            # small tensors stay inline: onnxruntime's shape inference reads axes and shapes
            if not external or _nbytes(tensor) < 1024:
                skeleton.graph.initializer.add().CopyFrom(tensor)
                continue
            raw = tensor.raw_data  # one tensor's bytes at a time
            entry = skeleton.graph.initializer.add()
            entry.name, entry.data_type = tensor.name, tensor.data_type
            entry.dims.extend(tensor.dims)
            entry.data_location = entry.EXTERNAL
            for key, value in (
                ("location", data_path.name),
                ("offset", data.tell()),
                ("length", len(raw)),
            ):
                field = entry.external_data.add()
                field.key, field.value = key, str(value)
            data.write(raw)
            del raw
    path.write_bytes(skeleton.SerializeToString())


def _nbytes(tensor: onnx.TensorProto) -> int:
    """A tensor's bytes from its shape and type (reading `raw_data` would copy them)."""
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


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
    """The one comparator of every check. Per output, with scale = max |reference|:

    - everywhere |actual - reference| <= rtol * |reference| + atol * scale: the tolerance is
      relative to the output's own magnitude at every scale (logits of 1e-7 get 1e-12, not
      the 1e-5 an absolute floor would allow, which let any wrong model pass);
    - cosine(actual, reference) >= 1 - COSINE_EPS;
    - float outputs shaped like classifiers or LMs (last axis >= 2 classes, other axes rows):
      every row whose reference argmax leads the runner-up by more than twice the row's
      largest tolerance keeps its argmax (closer rows may flip on round-off); the tolerance
      here is at most fp16's (rtol 1e-2, atol 1e-3), whatever was asked.

    A reference output that is dead (empty, NaN/inf, all zero, constant) tests nothing: its
    OutputCheck says why in `dead` and does not pass; a Check leaves it unjudged. fp32
    round-off grows with the magnitudes summed, not with the output: outputs that cancel to
    small values can fail here on noise alone, and the fp32-noise and float64 judgements
    (`_compared`) then decide them.
    """
    checks = []
    min_cosine = 1.0 - COSINE_EPS
    for name, ref in reference.items():
        got = actual.get(name)
        dead = dead_reason(ref)
        if got is None or got.shape != ref.shape:
            checks.append(OutputCheck(name, float("inf"), float("inf"), False, dead=dead))
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf in a dead reference
            diff = np.abs(got64 - ref64)
        max_abs = float(diff.max(initial=0.0))
        max_rel = float((diff / np.maximum(np.abs(ref64), 1e-30)).max(initial=0.0))
        scale = float(np.abs(ref64).max(initial=0.0))
        tolerance = rtol * np.abs(ref64) + atol * scale
        cosine = _cosine(ref64, got64)
        passed = bool(np.all(diff <= tolerance)) and cosine >= min_cosine and not dead
        check = OutputCheck(name, max_abs, max_rel, passed, scale, cosine=cosine, dead=dead)
        classes = ref.ndim >= 2 and ref.shape[-1] >= 2 and ref.size
        if classes and np.issubdtype(ref.dtype, np.floating):
            check.top1, check.top5 = _topk_agreement(ref64, got64)
            slack = np.minimum(tolerance, FP16_RTOL * np.abs(ref64) + FP16_ATOL * scale)
            check.passed = check.passed and _decided_rows_agree(ref64, got64, slack)
        checks.append(check)
    return checks


def dead_reason(reference: np.ndarray) -> str:
    """Why a reference output tests nothing, or "" when it is alive: empty, not finite, all
    zero or constant (a single value counts as alive unless it is a float zero or not finite;
    an integer scalar, a count or a class, is data)."""
    values = np.asarray(reference)
    if values.size == 0:
        return "empty"
    floating = np.issubdtype(values.dtype, np.floating)
    if floating and not np.all(np.isfinite(values)):
        return "not finite (NaN/inf)"
    if floating and not np.any(values):
        return "all zero"
    if values.size > 1 and np.all(values == values.flat[0]):
        return f"constant ({values.flat[0]})"
    return ""


def _decided_rows_agree(reference: np.ndarray, actual: np.ndarray, tolerance) -> bool:
    """Top-1 agreement on the rows whose argmax cannot move within tolerance."""
    ref = reference.reshape(-1, reference.shape[-1])
    got = actual.reshape(-1, actual.shape[-1])
    slack = 2 * np.broadcast_to(tolerance, reference.shape).reshape(ref.shape).max(axis=1)
    top2 = -np.partition(-ref, 1, axis=1)[:, :2]
    decided = (top2[:, 0] - top2[:, 1]) > slack
    return bool(np.all(ref[decided].argmax(axis=1) == got[decided].argmax(axis=1)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the flattened arrays; NaN when either holds a NaN or an infinity (no warning:
    a non-finite output is reported by the comparison, not on stderr)."""
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        if not norms:
            return float(np.array_equal(a, b))
        return float(np.dot(a.ravel(), b.ravel()) / norms)


def _topk_agreement(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float | None]:
    """Classifier and LM outputs: the last axis holds classes, every other axis is a row."""
    ref = reference.reshape(-1, reference.shape[-1])
    got = actual.reshape(-1, actual.shape[-1])
    ref_top1 = ref.argmax(axis=1)
    top1 = float(np.mean(ref_top1 == got.argmax(axis=1)))
    if ref.shape[1] < 5:
        return top1, None
    got_top5 = np.argpartition(-got, 4, axis=1)[:, :5]  # the 5 largest, in any order
    return top1, float(np.mean((got_top5 == ref_top1[:, None]).any(axis=1)))


def masked_model(
    model: onnx.ModelProto,
    dep: DepGraph,
    removals: Mapping[str, np.ndarray],
    in_place: bool = False,
) -> onnx.ModelProto:
    """`model` with every slice that reads a removed unit set to zero (the oracle's reference);
    a copy, or `model` itself when `in_place`. A quantized weight's slice is set to its zero
    point, the integer that dequantizes to exactly zero."""
    masked = model
    if not in_place:
        masked = onnx.ModelProto()
        masked.CopyFrom(model)
    # inferred shapes stay behind: onnxruntime trusts value_info, and a symbolic size inference
    # pinned down at one input shape would be wrong at another
    del masked.graph.value_info[:]
    store = ConstantStore(masked)
    for group_id, units in removals.items():
        group = dep.group(group_id)
        for space, role in group.roles.items():
            indices = group.indices(space, np.asarray(units))
            if role != Role.IN or not len(indices):
                continue
            value = store.get(space.tensor).copy()
            zero = np.broadcast_to(zero_value(dep.index, space.tensor, value.shape), value.shape)
            np.moveaxis(value, space.axis, 0)[indices] = np.moveaxis(zero, space.axis, 0)[indices]
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
    exact: bool = True,
) -> list[Check]:
    """The zero-then-prune oracle on each provider (CUDA is reported as skipped when absent).
    With `in_place`, `model` itself is masked (saves a copy when the caller is done with it).
    Not `exact` (the plan prunes an inexact group): the comparison is reported, not judged,
    and a structural check follows it on each provider (see the module docstring)."""
    reference_model = masked_model(model, dep, removals, in_place)
    checks = []
    for provider in progress(providers, "verifying"):
        check, used = _compared(
            "zero-then-prune oracle", reference_model, pruned, inputs, provider, rtol, atol, exact
        )
        checks.append(check)
        if not exact and used is not None and not check.shapes:
            checks.append(structure_check(reference_model, pruned, used, provider))
    return checks


def equivalence_checks(
    what: str,
    reference_model: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    providers: tuple[str, ...] = ("cpu", "cuda"),
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[Check]:
    """`rewritten` against `reference_model` on each provider, for the oracles other than
    zero-then-prune (experts against -inf router logits, removed blocks against branch x 0):
    the same tolerances, and the same float32-noise and float64 judgements when they fail."""
    return [
        _compared(what, reference_model, rewritten, inputs, provider, rtol, atol)[0]
        for provider in providers
    ]


def _compared(
    what: str,
    reference_model: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    provider: str,
    rtol: float,
    atol: float,
    exact: bool = True,
) -> tuple[Check, InputSet | None]:
    """One provider's comparison, and the inputs it used (None when skipped). The inputs are
    the first set at which the reference's outputs are alive (`alive_inputs`); a model that
    does not run fails the check; with no output alive an exact check is inconclusive; failed
    outputs are judged against the reference's measured fp32 noise, then in float64 (an
    inexact check counts as passed and is not judged)."""
    check = Check(what, provider, exact=exact)
    check.note = "" if exact else NOT_EXACT
    if provider == "cuda" and not cuda_available():
        check.skipped = "CUDAExecutionProvider not available (install graphprune[gpu])"
        return check, None
    feeds, reference, tried = alive_inputs(reference_model, inputs, provider, what)
    check.inputs, check.inputs_text, check.inputs_tried = feeds.describe(), feeds.text(), tried
    try:
        actual = run(rewritten, feeds, provider)
    except Exception as err:  # the rewritten model does not run: a failed check, not a crash
        sizes = {name: list(value.shape) for name, value in feeds.items()}
        check.shapes.append(ShapeCheck("*", sizes, [], [], _first_line(err)))
        return check, feeds
    check.outputs = compare(reference, actual, rtol, atol)
    if exact and check.outputs and all(o.dead for o in check.outputs):
        reasons = "; ".join(f"'{o.name}' {o.dead}" for o in check.outputs[:3])
        check.inconclusive = (
            f"outputs dead/non-finite at every input tried ({reasons}; "
            f"{len(tried)} input set(s): {', '.join(tried)}); {INCONCLUSIVE_HINT}"
        )
        return check, feeds
    if not check.passed:
        _judge_against_noise(check, reference_model, reference, feeds, provider)
    if not check.passed:
        _judge_in_float64(check, reference_model, rewritten, feeds)
    return check, feeds


def alive_inputs(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    provider: str = "cpu",
    what: str = "check",
) -> tuple[InputSet, dict[str, np.ndarray], list[str]]:
    """(the inputs, `model`'s outputs at them, the labels of every input set run). Generated
    inputs whose outputs are partly dead (or a Sigmoid output saturated) are followed by their
    alternatives (image-like ranges, scaled floats, other seeds) until one makes every output
    alive and unsaturated; the set with the most alive, then unsaturated, outputs is kept, the
    first of equals; a set the model does not run at is
    passed over (an alternative has other sizes). Given inputs are used as they are. A
    reference that runs at no set is bad input (the model or the inputs)."""
    first = as_input_set(inputs)
    squashed = _sigmoid_outputs(model)
    best: tuple[tuple[int, int], InputSet, dict[str, np.ndarray]] | None = None
    tried: list[str] = []
    error = None  # why the first set that did not run failed
    for candidate in itertools.chain([first], first.alternatives()):
        if candidate.fallback and best is not None:
            continue  # tiny sizes make outputs trivially alive: only for a model that ran at none
        try:
            outputs = run(model, candidate, provider)
        except MemoryError:
            raise
        except Exception as err:  # onnxruntime's own error types
            error = error or f"{candidate.label} inputs: {_first_line(err)}"
            tried.append(f"{candidate.label} (does not run)")
            continue
        tried.append(candidate.label)
        alive = [name for name, value in outputs.items() if not dead_reason(value)]
        lively = [name for name in alive if not (name in squashed and saturated(outputs[name]))]
        rank = (len(alive), len(lively))
        if best is None or rank > best[0]:
            best = (rank, candidate, outputs)
        if len(lively) == len(outputs):
            break
    if best is None:
        raise BadInput(
            f"{what}: the reference model does not run on {provider} at {error}; "
            f"{INCONCLUSIVE_HINT} (or sizes with --shape)"
        )
    return best[1], best[2], tried


SATURATED = 1e-3  # a Sigmoid output within this of 0 or 1 everywhere is all but constant


def saturated(values: np.ndarray) -> bool:
    """Every value of a Sigmoid output within SATURATED of 0 or of 1: a text detector's map at
    Gaussian inputs (PP-OCR: 2e-5). Still judged when no input set does better (float64
    decides such outputs exactly), but other sets are tried first."""
    values = np.asarray(values, dtype=np.float64)
    return bool(values.size) and (values.max() < SATURATED or values.min() > 1 - SATURATED)


def _sigmoid_outputs(model: onnx.ModelProto) -> set[str]:
    outputs = {o.name for o in model.graph.output}
    sigmoids = {n.output[0] for n in model.graph.node if n.op_type == "Sigmoid"}
    return sigmoids & outputs


def structure_check(
    reference_model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    provider: str = "cpu",
) -> Check:
    """`pruned` runs and each output has `reference_model`'s shape, at `inputs` and, when the
    model has symbolic input dimensions, at `other_sizes(inputs)` too."""
    check = Check("structure (runs, output shapes as the masked original's)", provider)
    feeds = [inputs]
    other = other_sizes(reference_model, inputs)
    if other is not None:
        feeds.append(other)
    for feed in feeds:
        sizes = {name: list(value.shape) for name, value in feed.items()}
        expected = run(reference_model, feed, provider)
        try:
            actual = run(pruned, feed, provider)
        except Exception as err:  # onnxruntime's own error types; any failure fails the check
            check.shapes.append(ShapeCheck("*", sizes, [], [], _first_line(err)))
            continue
        for name, value in expected.items():
            got = list(actual[name].shape) if name in actual else []
            check.shapes.append(ShapeCheck(name, sizes, list(value.shape), got))
    return check


# onnxruntime names the file it was given: ours, a session copy in the scratch folder
SESSION_FILE = re.compile(r"Load model from \S+ failed:\s*")


def _first_line(err: Exception) -> str:
    """The first line of an error, without the session file's path (it means nothing to the
    user, whose own path the caller names)."""
    message = SESSION_FILE.sub("", str(err).strip())
    return (message.splitlines()[0] if message else type(err).__name__)[:300]


def other_sizes(
    model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """`inputs` at other sizes of the model's symbolic dimensions (one new size per symbol:
    batch 1 -> 3, sequence 16 -> 13), their values repeated or cut along those axes so they
    stay valid (token ids, masks, pixels); None when no input dimension is symbolic."""
    new_size: dict[str, int] = {}
    axes: dict[str, list[tuple[int, str]]] = {}
    for value in free_inputs(model):
        for axis, dim in enumerate(declared_dims(value)):
            if isinstance(dim, int) or value.name not in inputs:
                continue
            symbol = dim or f"{value.name}:{axis}"
            size = inputs[value.name].shape[axis]
            new_size.setdefault(symbol, size + 2 if size <= 2 else size - 3)
            axes.setdefault(value.name, []).append((axis, symbol))
    if not new_size:
        return None
    other = dict(inputs)
    for name, changed in axes.items():
        value = inputs[name]
        for axis, symbol in changed:
            value = np.take(value, np.arange(new_size[symbol]) % value.shape[axis], axis=axis)
        other[name] = value
    return other


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
        if output.passed or output.dead:
            continue
        ref = reference[output.name].astype(np.float64)
        output.noise = max(float(np.abs(r[output.name] - ref).max()) for r in resummed)
        output.passed = output.max_abs <= NOISE_FACTOR * output.noise


FP64_RTOL = 1e-9


def _judge_in_float64(
    check: Check, reference_model: onnx.ModelProto, pruned: onnx.ModelProto, inputs
) -> None:
    """Decide the outputs that still fail in float64 on CPU (see the module docstring)."""
    try:
        feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}
        expected = run(widened_to_float64(reference_model), feeds)
        actual = run(widened_to_float64(pruned), feeds)
    except Exception:  # no double kernel for some op: the float32 verdict stands
        return
    for output in check.outputs:
        if output.passed or output.dead or output.name not in expected:
            continue
        gap = float(np.abs(expected[output.name] - actual[output.name]).max(initial=0.0))
        output.fp64_gap = gap
        # relative to the output's own scale, as in `compare` (no floor at 1)
        output.passed = gap <= FP64_RTOL * output.scale


def widened_to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float64: float32 initializers, Constant values, tensor
    attributes, Cast targets, inputs and outputs widened; inferred shapes dropped."""
    from onnx import TensorProto, numpy_helper

    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    del wide.graph.value_info[:]
    for tensor in wide.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(tensor).astype(np.float64)
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    for node in wide.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                value = numpy_helper.to_array(attr.t).astype(np.float64)
                attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
    for value in (*wide.graph.input, *wide.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    _erf_in_double(wide)
    return wide


def _erf_in_double(model: onnx.ModelProto) -> None:
    """onnxruntime has no double Erf (BERT's GELU): replace each by tanh(x (a + b x^2)), a smooth
    stand-in computed in double. Both models of the comparison get the same stand-in, so it
    keeps them equal exactly when they were equal, which is all the oracle asks."""
    from onnx import helper, numpy_helper

    if not any(n.op_type == "Erf" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return
    a, b = "__erf_a", "__erf_b"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(2 / np.sqrt(np.pi), np.float64), a),
            numpy_helper.from_array(np.array(0.0893, np.float64), b),
        ]
    )
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Erf" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, y, p = node.input[0], node.output[0], f"{node.output[0]}__erf"
        nodes += [
            helper.make_node("Mul", [x, x], [f"{p}_x2"]),
            helper.make_node("Mul", [f"{p}_x2", b], [f"{p}_bx2"]),
            helper.make_node("Add", [f"{p}_bx2", a], [f"{p}_poly"]),
            helper.make_node("Mul", [x, f"{p}_poly"], [f"{p}_arg"]),
            helper.make_node("Tanh", [f"{p}_arg"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@dataclass
class VerifyReport:
    """`verify`'s result: one Check per provider, plus CPU vs CUDA for model B; `inputs`
    describes the inputs compared at (shapes, value ranges, how they were made)."""

    a: str
    b: str
    rtol: float
    atol: float
    input_shapes: dict[str, list[int]]
    checks: list[Check] = field(default_factory=list)
    inputs: dict[str, dict] = field(default_factory=dict)
    inputs_text: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def inconclusive(self) -> bool:
        return any(c.inconclusive for c in self.checks)

    def as_dict(self) -> dict:
        checks = [c.as_dict() for c in self.checks]
        state = "passed" if self.passed else "inconclusive" if self.inconclusive else "failed"
        return asdict(self) | {"checks": checks, "passed": self.passed, "state": state}

    def lines(self) -> list[str]:
        lines = []
        for check in self.checks:
            label = f"{check.provider} ({check.what})"
            if check.skipped:
                lines.append(f"SKIPPED | {label} | {check.skipped}")
            if check.inconclusive:
                lines.append(f"INCONCLUSIVE | {label} | {check.inconclusive}")
            lines += [f"FAILED | {label} | B does not run: {s.error}" for s in check.shapes]
            lines += [o.line(label) for o in check.outputs]
        if self.inputs_text:
            lines.append(self.inputs_text)
        verdict = "PASSED" if self.passed else "INCONCLUSIVE" if self.inconclusive else "FAILED"
        lines.append(
            f"{verdict} | {self.a} vs {self.b} "
            f"(rtol {self.rtol:g}, atol {self.atol:g} x each output's max |A|)"
        )
        return lines


def verify(
    a: str | Path,
    b: str | Path,
    providers: tuple[str, ...] = ("cpu", "cuda"),
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Run models `a` and `b` on each provider with the same inputs and compare every output
    with the oracle's comparator and judgements (`_compared`: alive inputs, fp32 noise,
    float64); with both providers available, also `b` on CPU against `b` on CUDA. fp16 models
    default to rtol 1e-2, atol 1e-3 (fp32: 1e-4, 1e-5)."""
    model_a, model_b = loading.load(a), loading.load(b)
    check_values(free_inputs(model_a), input_shapes, inputs)  # before any session runs
    feeds = (
        as_input_set(inputs) if inputs is not None else random_inputs(model_a, seed, input_shapes)
    )
    check_feeds(model_a, feeds, a)
    check_feeds(model_b, feeds, b)
    half = _has_fp16_outputs(model_a) or _has_fp16_outputs(model_b)
    rtol = rtol if rtol is not None else (FP16_RTOL if half else RTOL)
    atol = atol if atol is not None else (FP16_ATOL if half else ATOL)
    report = VerifyReport(str(a), str(b), rtol, atol, {k: list(v.shape) for k, v in feeds.items()})
    used: dict[str, InputSet] = {}
    for provider in providers:
        with about(a):
            check, chosen = _compared("A vs B", model_a, model_b, feeds, provider, rtol, atol)
        report.checks.append(check)
        if chosen is not None and not check.inconclusive:
            used[provider] = chosen
    if used:
        chosen = next(iter(used.values()))
        report.inputs, report.inputs_text = chosen.describe(), chosen.text()
        report.input_shapes = {k: list(v.shape) for k, v in chosen.items()}
    if {"cpu", "cuda"} <= used.keys():
        cross = Check("B on CPU vs B on CUDA", "cpu-vs-cuda")
        on_cpu, on_cuda = (run(model_b, used["cpu"], p) for p in ("cpu", "cuda"))
        cross.outputs = compare(on_cpu, on_cuda, rtol, atol)
        report.checks.append(cross)
    return report


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Inputs from an .npz file whose keys are the model's input names."""
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise BadInput(f"cannot read inputs from {path}: {err}") from None


def check_feeds(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], path) -> None:
    initializers = {t.name for t in model.graph.initializer}
    wanted = {v.name for v in model.graph.input} - initializers
    if missing := sorted(wanted - feeds.keys()):
        raise BadInput(f"{path} needs inputs {missing} that were not given")


def _has_fp16_outputs(model: onnx.ModelProto) -> bool:
    return any(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in model.graph.output)
