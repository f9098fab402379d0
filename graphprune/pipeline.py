"""The pipeline, stage by stage: load -> prepare -> analyze -> calibrate -> score -> allocate ->
compensate -> rewrite -> compact -> verify -> write. Each stage is one call; `prune` is the whole
job. `compact` takes back what preparation added for analysis only (copies, folded fills), so
`--ratio 0` writes a file no larger than its input.

Calibration runs only when the criterion or a compensation pass needs data. Compensation
Updates are computed on the original weights and written into the working model before it is
sliced, so the zero-then-prune oracle compares the masked *compensated* original with the
pruned compensated model: the structure is still checked exactly. How far compensation moved
the outputs is measured separately: pruned with and without compensation, each against the
dense model, on the oracle's inputs."""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path

import numpy as np
import onnx

from graphprune import load as loading
from graphprune import outputs, values
from graphprune.allocate import DEFAULT_SCOPES, allocate, in_scope, unit_params
from graphprune.calibrate import GRAM_BUDGET, CalibrationStats, calibrate, exposed
from graphprune.data import CalibrationSource, batches
from graphprune.depgraph import DepGraph, Group
from graphprune.errors import BadInput, about
from graphprune.ops import Space, WeightValues
from graphprune.passes.base import Update
from graphprune.passes.bias_compensation import NewBias, apply_update, insert_biases, merge
from graphprune.plan import Plan, fingerprint
from graphprune.prepare import prepare, refine_shapes
from graphprune.progress import progress
from graphprune.report import Summary, count_macs, summarize
from graphprune.verify import (
    ATOL,
    RTOL,
    Check,
    check_feeds,
    compare,
    oracle,
    random_inputs,
    run,
)


@dataclass
class Analysis:
    """A loaded model ready for scoring and rewriting."""

    work: onnx.ModelProto  # prepared, with inferred shapes; the pipeline's only full copy
    dep: DepGraph
    fingerprint: str
    original: Summary  # parameters, ops and bytes on disk of the model as loaded
    # names of the main graph's constants as loaded: what `compact` may share or leave alone
    constant_names: frozenset[str] = frozenset()


@dataclass
class PruneResult:
    plan: Plan
    before: Summary
    after: Summary
    checks: list[Check]
    groups: int
    prunable_groups: int
    seconds: dict[str, float] = field(default_factory=dict)
    written: bool = False
    calibration: dict | None = None  # CalibrationStats.summary() when data was used
    compensation: dict | None = None  # what compensation changed and how far it moved outputs
    peak_rss_bytes: int = 0  # of the whole process, read when the run ends

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def analyze(source: str | Path) -> Analysis:
    """Load `source` and analyze it (see `analyze_model`)."""
    model, disk_bytes = loading.load_sized(source)
    return analyze_model(model, disk_bytes)


def analyze_model(model: onnx.ModelProto, disk_bytes: int | None = None) -> Analysis:
    """Count, prepare and annotate `model` in place (one copy of the weights in memory), then
    build its dependency graph."""
    counted, graph_hash = summarize(model, disk_bytes, macs=False), fingerprint(model)
    names = frozenset(constant_names(model))
    work = loading.infer_shapes(prepare(model, in_place=True), in_place=True)
    refine_shapes(work)
    return Analysis(work, DepGraph.build(work), graph_hash, counted, names)


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers and Constant-node outputs of the main graph."""
    return {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output
    }


# a uniform tensor below this many elements is smaller stored than as a ConstantOfShape node
UNIFORM_MIN_ELEMENTS = 16


def compact(model: onnx.ModelProto, original: frozenset[str] | set[str]) -> onnx.ModelProto:
    """Undo, in place, what preparation added to `model` for analysis only, so that a prune
    that removes nothing writes a file no larger than its input:

    - a constant the input did not have whose values equal one it had (a vector untied per
      reader, a private copy of a shared shape constant, an Identity folded into a copy) is
      dropped and its readers read the original again;
    - a uniform constant the input did not have (a ConstantOfShape folded into a filled
      tensor so that rules could slice it) becomes a ConstantOfShape node again.

    Constants of the input model are never touched: their names and sharing stay as given."""
    graph = model.graph
    kept = {o.name for o in graph.output} | {i.name for i in graph.input}
    tensors = {t.name: t for t in graph.initializer}
    tensors |= {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    added = [t for name, t in tensors.items() if name not in original and name not in kept]
    renamed = _shared_again(added, tensors, original)
    renamed = _defined_before(graph, renamed)
    _rename_inputs(graph, renamed)
    dropped = set(renamed)
    stored = {t.name for t in graph.initializer}
    uniform = [t for t in added if t.name in stored - dropped and _uniform(t)]
    for tensor in uniform:
        fill = _constant_of_shape(model, tensor, tensors)
        # after the Constant node holding the shape, if one does (folded, the fill's readers
        # came after it too)
        producer = next((i for i, n in enumerate(graph.node) if fill.input[0] in n.output), -1)
        graph.node.insert(producer + 1, fill)
    dropped |= {t.name for t in uniform}
    # deleted one by one: rebuilding the list would copy every weight
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in dropped:
            del graph.initializer[i]
    for i in reversed(range(len(graph.node))):
        node = graph.node[i]
        if node.op_type == "Constant" and node.output and node.output[0] in renamed:
            del graph.node[i]
    return model


def _shared_again(
    added: list[onnx.TensorProto], tensors: Mapping[str, onnx.TensorProto], original
) -> dict[str, str]:
    """Added constant name -> the input model's constant with the same type, shape and values."""
    from onnx import numpy_helper

    internal = [t for t in added if t.data_location != onnx.TensorProto.EXTERNAL]
    wanted = {(t.data_type, tuple(t.dims)) for t in internal}
    by_value: dict[tuple, str] = {}
    for name in sorted(original & tensors.keys()):
        tensor = tensors[name]
        key = (tensor.data_type, tuple(tensor.dims))
        if key in wanted and tensor.data_location != onnx.TensorProto.EXTERNAL:
            by_value.setdefault((*key, numpy_helper.to_array(tensor).tobytes()), name)
    renamed = {}
    for tensor in internal:
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in by_value:
            renamed[tensor.name] = by_value[key]
    return renamed


def _defined_before(graph: onnx.GraphProto, renamed: Mapping[str, str]) -> dict[str, str]:
    """The pairs of `renamed` whose target (an initializer, or a Constant node's output) exists
    before the first node that reads the copy: a Constant node placed after that reader cannot
    replace it."""
    from graphprune.graph import all_inputs

    produced_at: dict[str, int] = {}
    first_read: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        for name in node.output:
            produced_at.setdefault(name, position)
        for name in all_inputs(node):
            if name in renamed:
                first_read.setdefault(name, position)
    return {
        copy: target
        for copy, target in renamed.items()
        if produced_at.get(target, -1) < first_read.get(copy, len(graph.node))
    }


def _rename_inputs(graph: onnx.GraphProto, renamed: Mapping[str, str]) -> None:
    """Every read of a key of `renamed`, in `graph` and the bodies nested in it, reads its
    value instead."""
    if not renamed:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for attr in node.attribute:
            for body in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_inputs(body, renamed)


def _uniform(tensor: onnx.TensorProto) -> bool:
    from onnx import numpy_helper

    if (
        prod(tensor.dims) < UNIFORM_MIN_ELEMENTS
        or tensor.data_location == onnx.TensorProto.EXTERNAL
    ):
        return False
    values = numpy_helper.to_array(tensor)
    return bool(np.all(values == values.flat[0]))


def _constant_of_shape(
    model: onnx.ModelProto, tensor: onnx.TensorProto, tensors: Mapping[str, onnx.TensorProto]
) -> onnx.NodeProto:
    """ConstantOfShape(shape) -> `tensor.name`; the shape is an int64 constant of `tensors`
    when one holds it (the one the folded node read), else a new initializer."""
    from onnx import numpy_helper

    from graphprune.edit import ConstantStore

    values = numpy_helper.to_array(tensor)
    shape = np.array(values.shape, np.int64)
    shape_name = next(
        (
            name
            for name, held in tensors.items()
            if held.data_type == onnx.TensorProto.INT64
            and tuple(held.dims) == shape.shape
            and np.array_equal(numpy_helper.to_array(held), shape)
        ),
        None,
    ) or ConstantStore(model).add(f"{tensor.name}_shape", shape)
    fill = numpy_helper.from_array(values.reshape(-1)[:1].copy(), "value")
    return onnx.helper.make_node(
        "ConstantOfShape", [shape_name], [tensor.name], name=f"{tensor.name}_fill", value=fill
    )


def score(
    analysis: Analysis,
    criterion: str,
    seed: int = 0,
    stats: CalibrationStats | None = None,
    groups: list[Group] | None = None,
) -> dict[str, np.ndarray]:
    """Scores of `groups` (default: every prunable group) by `criterion`; `stats` for criteria
    that need data."""
    from graphprune.passes import ScoreContext, importance

    scorer = importance(criterion)
    # quantized weights are scored by their dequantized values (int8 squares would wrap)
    context = ScoreContext(constants=WeightValues(analysis.dep.index), stats=stats, seed=seed)
    prunable = [g for g in (analysis.dep.groups if groups is None else groups) if g.prunable]
    return {g.id: scorer.score(g, context) for g in progress(prunable, f"scoring ({criterion})")}


# the criterion's own compensation (--compensation own); the others have none
OWN_COMPENSATION = {"fluctuation": "bias", "obspa": "obs", "condition": "mask"}
COMPENSATIONS = ("none", "own")


def compensation_names(criterion: str, compensation: str, reconstruct: bool) -> list[str]:
    """The compensation passes to run, in order (a later pass's weights replace an earlier
    one's; see `_compensate`)."""
    if compensation not in COMPENSATIONS:
        raise BadInput(f"unknown compensation '{compensation}' (known: none, own)")
    own = compensation == "own" and criterion in OWN_COMPENSATION
    names = [OWN_COMPENSATION[criterion]] if own else []
    return [*names, "reconstruct"] if reconstruct else names


def prune(
    source: str | Path,
    destination: str | Path,
    ratio: float = 0.5,
    criterion: str = "l2",
    allocation: str = "uniform",
    scopes: tuple[str, ...] = DEFAULT_SCOPES,
    round_to: int = 1,
    plan: Plan | None = None,
    verify: bool = True,
    providers: tuple[str, ...] = ("cpu", "cuda"),
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    calib=None,
    compensation: str = "own",
    reconstruct: bool = False,
    gram_budget: int = GRAM_BUDGET,
) -> PruneResult:
    """Prune `source` into `destination`; the output is written only if verification passes.
    The oracle runs on `inputs` when given (real data), else on random ones at `input_shapes`.

    `calib` is the calibration data for criteria and compensation that need it: a
    `graphprune.data.CalibrationSource`, a path to an .npz file, a mapping of input name ->
    stacked samples, or "data-free". `compensation` "own" runs the criterion's own compensation
    (fluctuation: FLAP's bias, obspa: the OBS update, condition: mask tuning), `reconstruct`
    adds layer-wise least-squares reconstruction. With a replayed `plan`, the plan's criterion
    decides the own compensation."""
    _check_paths(source, destination, {"--calib": calib})
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 3)
        clock = now

    criterion = plan.criterion if plan is not None else criterion
    scorer, passes = _passes(criterion, plan is None, compensation, reconstruct, calib is not None)
    needs_data = bool(passes) or getattr(scorer, "needs_data", False)
    needs_gram = any(p.needs_gram for p in passes) or getattr(scorer, "needs_gram", False)

    analysis = analyze(source)
    # --shape, --inputs and --calib against the model's inputs, before any session runs
    values.check_values(values.free_inputs(analysis.work), input_shapes, inputs, "--inputs", calib)
    dep = analysis.dep
    lap("load+analyze")
    if plan is not None:
        if plan.model != analysis.fingerprint:
            raise BadInput(
                f"plan was made for another graph (fingerprint {plan.model}, "
                f"this model is {analysis.fingerprint})"
            )
        removals = plan.removals(dep)
        scored = [dep.group(group_id) for group_id in removals]
        if not removals and plan.ratio > 0:
            raise BadInput(
                f"the plan removes nothing although it was made at ratio {plan.ratio:g} "
                "(no groups); a plan that reproduces the model says ratio 0"
            )
    else:
        scored = [g for g in in_scope(dep.groups, scopes) if g.prunable]
        if ratio > 0 and not scored:  # before calibration: nothing could qualify
            raise BadInput(nothing_removed(dep, scopes, ratio))
    _check_compensable(passes, scored, dep)
    stats = None
    if needs_data:
        data = batches(CalibrationSource.of(calib), analysis.work, input_shapes)
        stats = calibrate(analysis.work, dep, scored, data, needs_gram, gram_budget)
        lap("calibrate")
    if plan is None:
        scores = score(analysis, criterion, seed, stats, scored)
        lap("score")
        costs = {g.id: unit_params(g, dep.index.shapes) for g in scored}
        removals = allocate(scored, scores, ratio, allocation, round_to, costs=costs)
        if ratio > 0 and not removals:

            def removes_a_unit(r: float) -> bool:
                return bool(allocate(scored, scores, r, allocation, round_to, costs=costs))

            raise BadInput(nothing_removed(dep, scopes, ratio, smallest_ratio(removes_a_unit)))
        plan = Plan.from_removals(dep, removals, analysis.fingerprint, criterion, ratio, allocation)
    lap("allocate")
    update = _compensate(passes, dep, removals, stats, seed)
    if passes:
        lap("compensate")
    if inputs is None:
        inputs = random_inputs(analysis.work, seed, input_shapes)
    check_feeds(analysis.work, inputs, source)
    shapes = {name: value.shape for name, value in inputs.items()}
    before = replace(analysis.original, macs=count_macs(analysis.work, shapes))
    moved = None
    if update is not None:
        dense, without = _uncompensated_outputs(analysis, removals, inputs)
        lap("outputs without compensation")
    if removals:
        pruned, new_biases = _rewrite(analysis, removals, update, stats)
        compact(pruned, analysis.constant_names)
    else:  # ratio 0 reproduces the input as it was: the oracle checks preparation against it
        pruned, new_biases = loading.load(source), []
    lap("rewrite")
    after = summarize(pruned, None, shapes)
    if update is not None:
        moved = _movement(
            [p.name for p in passes], update, new_biases, dense, without, pruned, inputs
        )
        del dense, without
        lap("outputs with compensation")
    checks = []
    if verify:
        # the working copy is not needed past this point: the oracle masks it in place (with
        # compensation applied, the masked model is the compensated original)
        # pruning an inexact group (hidden size): the oracle reports, a structural check judges
        exact = all(dep.group(group_id).exact for group_id in removals)
        with about(source):
            checks = oracle(
                analysis.work, pruned, dep, removals, inputs, providers, rtol, atol, True, exact
            )
        lap("verify")
    result = PruneResult(
        plan=plan,
        before=before,
        after=after,
        checks=checks,
        groups=len(dep.groups),
        prunable_groups=sum(g.prunable for g in dep.groups),
        seconds=seconds,
        calibration=stats.summary() if stats is not None else None,
        compensation=moved,
    )
    del analysis, dep  # the working copy (every original weight) is done with: free it
    gc.collect()
    if result.passed:
        result.after.bytes = outputs.write_model(pruned, destination, check=True)
        result.written = True
    lap("write")
    result.peak_rss_bytes = peak_rss_bytes()
    return result


def nothing_removed(
    dep: DepGraph, scopes: tuple[str, ...], ratio: float, smallest: float | None = None
) -> str:
    """One line saying why a prune asked to remove `ratio` of the groups in `scopes` removes
    nothing: no group in scope, every one blocked (the commonest reason), or the ratio rounds
    to zero units in every group (`smallest`: the least ratio that removes one, if any);
    and the ops without a rule, whose barriers most often explain the first two."""
    considered = in_scope(dep.groups, scopes)
    prunable = [g for g in considered if g.prunable]
    where = f"--ratio {ratio:g} removes nothing (scope {','.join(scopes)}"
    if not considered:
        kinds = Counter(g.kind for g in dep.groups)
        found = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items())) or "none"
        line = f"{where}): no group in scope among the model's {len(dep.groups)} ({found})"
    elif not prunable:
        reasons = Counter(g.blocked[0] if g.blocked else "not prunable" for g in considered)
        reason, count = reasons.most_common(1)[0]
        line = (
            f"{where}, {len(considered)} groups): every group is blocked; most often "
            f"{reason!r} ({count} of {len(considered)})"
        )
    else:
        line = (
            f"{where}, {len(prunable)} prunable groups): the ratio rounds to zero units in "
            "every group"
        )
        line += (
            f"; the smallest ratio that removes a unit is {smallest:g}"
            if smallest is not None
            else "; no ratio below 1 removes one (every group keeps at least one unit per space)"
        )
    barriers = Counter(dep.missing_rules).most_common(3)
    if barriers and not prunable:
        line += "; ops without a rule: " + ", ".join(f"{op} x{n}" for op, n in barriers)
    return line


def smallest_ratio(removes_a_unit: Callable[[float], bool], ceiling: float = 0.99) -> float | None:
    """The least ratio (to 3 decimals) at which `removes_a_unit` holds, by bisection; None
    when even `ceiling` removes nothing."""
    if not removes_a_unit(ceiling):
        return None
    low, high = 0.0, ceiling
    for _ in range(20):
        middle = (low + high) / 2
        low, high = (low, middle) if removes_a_unit(middle) else (middle, high)
    # `high` sits just above the threshold: the nearest 3-decimal ratio often is the threshold
    for rounded in (round(high, 3), math.ceil(high * 1000) / 1000):
        if removes_a_unit(rounded):
            return rounded
    return high


def _passes(
    criterion: str, scoring: bool, compensation: str, reconstruct: bool, has_data: bool
) -> tuple:
    """(the importance pass, or None when a plan is replayed; the compensation passes), checked
    for names that are not registered and for data they need but were not given."""
    from graphprune.passes import compensation as compensation_pass
    from graphprune.passes import importance

    try:
        scorer = importance(criterion) if scoring else None
        names = compensation_names(criterion, compensation, reconstruct)
        passes = [compensation_pass(name) for name in names]
    except KeyError as err:
        raise BadInput(err.args[0]) from None
    scorer_needs_data = getattr(scorer, "needs_data", False)
    if not has_data and (passes or scorer_needs_data):
        what = (
            f"criterion '{criterion}'"
            if scorer_needs_data
            else "compensation " + "+".join(p.name for p in passes)
        )
        raise BadInput(
            f"{what} needs calibration data: pass --calib FILE.npz (or --calib-images, "
            "--calib-text) or --data-free"
        )
    return scorer, passes


def _uncompensated_outputs(
    analysis: Analysis, removals: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> tuple[dict, dict]:
    """Outputs of the dense model and of the pruned one without compensation, on `inputs`.
    The pruned model computes what the masked original does and is smaller to hold."""
    from graphprune.passes.slice_channels import slice_channels

    with exposed(analysis.work, []):  # without inferred sizes, as the oracle runs it
        dense = run(analysis.work, inputs)
    uncompensated = slice_channels(analysis.work, analysis.dep, removals)
    return dense, run(uncompensated, inputs)


def _check_compensable(passes: list, groups: list[Group], dep: DepGraph) -> None:
    """Compensation writes float updates into the consumers' weights: refuse it on a group
    whose weights are integers (a quantized model), before any data is read."""
    constants = dep.index.constants
    for group in groups if passes else []:
        for space in group.roles:
            if space.tensor in constants and not constants.is_float(space.tensor):
                raise BadInput(
                    f"compensation {'+'.join(p.name for p in passes)} would write float values "
                    f"into the quantized weight '{space.tensor}' (group {group.id}); use "
                    "--compensation none without --reconstruct, or prune the float model "
                    "before quantizing it"
                )


def _compensate(
    passes: list, dep: DepGraph, removals: Mapping[str, np.ndarray], stats, seed: int
) -> Update | None:
    """The passes' Updates for every pruned group, merged in order: a later pass's weights
    replace an earlier one's, and where a later pass rewrites a layer's weight, an earlier
    pass's bias delta for that layer is dropped (least-squares reconstruction fits the kept
    weights to the dense output itself; FLAP's bias on top would count the mean twice)."""
    from graphprune.passes import ScoreContext

    if not passes or not removals:
        return None
    context = ScoreContext(constants=dep.index.constants, stats=stats, seed=seed)
    consumers = stats.by_node()
    merged = Update()
    for compensation_pass in passes:
        found = [
            compensation_pass.compensate(dep.group(group_id), np.asarray(units), context)
            for group_id, units in progress(
                removals.items(), f"compensating ({compensation_pass.name})"
            )
        ]
        update = merge(found)
        rewritten = {c.node for c in consumers.values() if c.weight in update.weights}
        merged.bias_deltas = {p: d for p, d in merged.bias_deltas.items() if p not in rewritten}
        merged = merge([merged, update])
    return merged


def _rewrite(
    analysis: Analysis, removals: Mapping[str, np.ndarray], update: Update | None, stats
) -> tuple[onnx.ModelProto, list[NewBias]]:
    """Apply `update` to the working model, slice it, then insert the Adds of biases that had
    no constant to go into, in both the working model (the oracle's reference) and the pruned
    one (cut to the kept output channels)."""
    from graphprune.passes.slice_channels import slice_channels

    new_biases: list[NewBias] = []
    if update is not None:
        new_biases = apply_update(analysis.work, stats.by_node(), update)
    pruned = slice_channels(analysis.work, analysis.dep, removals)
    if new_biases:
        insert_biases(analysis.work, new_biases)
        insert_biases(pruned, new_biases, lambda space: kept_indices(analysis.dep, removals, space))
    return pruned, new_biases


def kept_indices(
    dep: DepGraph, removals: Mapping[str, np.ndarray], space: Space
) -> np.ndarray | None:
    """Indices of `space` that pruning keeps (None when no pruned group holds it)."""
    for group_id, units in removals.items():
        group = dep.group(group_id)
        if space in group.sizes:
            removed = group.indices(space, np.asarray(units))
            return np.setdiff1d(np.arange(group.sizes[space]), removed)
    return None


def _movement(names, update, new_biases, dense, without, pruned, inputs) -> dict:
    """How far the pruned outputs are from the dense ones with and without compensation."""
    with_outputs = run(pruned, inputs)

    def distances(outputs) -> list[dict]:
        return [
            {"name": c.name, "max_abs": c.max_abs, "cosine": c.cosine}
            for c in compare(dense, outputs)
        ]

    return {
        "passes": names,
        "updated_weights": len(update.weights),
        "bias_deltas": len(update.bias_deltas),
        "new_adds": len(new_biases),
        "with": distances(with_outputs),
        "without": distances(without),
    }


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (its whole life, not one stage)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _check_paths(
    source: str | Path, destination: str | Path, inputs: Mapping[str, object] | None = None
) -> None:
    """Refuse, before anything runs, an output that would land on an input or cannot be
    written safely (graphprune.outputs). `inputs` labels other files the run reads (a path,
    else ignored: a calibration mapping or source is not a file)."""
    files = {label: _file_of(value) for label, value in (inputs or {}).items()}
    outputs.check_paths(
        {outputs.MODEL_OUTPUT: destination}, models={"the input model": source}, inputs=files
    )


def _file_of(value: object) -> str | Path | None:
    """The file a calibration value reads: a path, or a CalibrationSource's npz or text file;
    None for data in memory, an image folder and "data-free"."""
    if isinstance(value, CalibrationSource):
        return value.path if value.kind in ("npz", "text") else None
    if isinstance(value, (str, Path)) and value != "data-free":
        return value
    return None
