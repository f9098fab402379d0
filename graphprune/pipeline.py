"""The pipeline, stage by stage: load -> prepare -> analyze -> score -> allocate -> rewrite ->
verify -> write. Each stage is one call; `prune` is the whole job."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from graphprune import load as loading
from graphprune.allocate import DEFAULT_SCOPES, allocate, in_scope
from graphprune.depgraph import DepGraph
from graphprune.errors import BadInput
from graphprune.plan import Plan, fingerprint
from graphprune.prepare import prepare, refine_shapes
from graphprune.progress import progress
from graphprune.report import Summary, count_macs, summarize
from graphprune.verify import ATOL, RTOL, Check, check_feeds, oracle, random_inputs


@dataclass
class Analysis:
    """A loaded model ready for scoring and rewriting."""

    work: onnx.ModelProto  # prepared, with inferred shapes; the pipeline's only full copy
    dep: DepGraph
    fingerprint: str
    original: Summary  # parameters, ops and bytes on disk of the model as loaded


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
    work = loading.infer_shapes(prepare(model, in_place=True), in_place=True)
    refine_shapes(work)
    return Analysis(work, DepGraph.build(work), graph_hash, counted)


def score(analysis: Analysis, criterion: str, seed: int = 0) -> dict[str, np.ndarray]:
    from graphprune.passes import ScoreContext, importance

    scorer = importance(criterion)
    context = ScoreContext(constants=analysis.dep.index.constants, seed=seed)
    prunable = [g for g in analysis.dep.groups if g.prunable]
    return {g.id: scorer.score(g, context) for g in progress(prunable, f"scoring ({criterion})")}


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
) -> PruneResult:
    """Prune `source` into `destination`; the output is written only if verification passes.
    The oracle runs on `inputs` when given (real data), else on random ones at `input_shapes`."""
    from graphprune.passes.slice_channels import slice_channels

    _check_paths(source, destination)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 3)
        clock = now

    analysis = analyze(source)
    lap("load+analyze")
    if plan is not None:
        if plan.model != analysis.fingerprint:
            raise BadInput(
                f"plan was made for another graph (fingerprint {plan.model}, "
                f"this model is {analysis.fingerprint})"
            )
        removals = plan.removals(analysis.dep)
    else:
        scores = score(analysis, criterion, seed)
        lap("score")
        groups = in_scope(analysis.dep.groups, scopes)
        removals = allocate(groups, scores, ratio, allocation, round_to)
        plan = Plan.from_removals(
            analysis.dep, removals, analysis.fingerprint, criterion, ratio, allocation
        )
    lap("allocate")
    pruned = slice_channels(analysis.work, analysis.dep, removals)
    lap("rewrite")
    if inputs is None:
        inputs = random_inputs(analysis.work, seed, input_shapes)
    check_feeds(analysis.work, inputs, source)
    shapes = {name: value.shape for name, value in inputs.items()}
    before = replace(analysis.original, macs=count_macs(analysis.work, shapes))
    after = summarize(pruned, None, shapes)
    checks = []
    if verify:
        # the working copy is not needed past this point: the oracle masks it in place
        checks = oracle(
            analysis.work,
            pruned,
            analysis.dep,
            removals,
            inputs,
            providers,
            rtol,
            atol,
            in_place=True,
        )
        lap("verify")
    result = PruneResult(
        plan=plan,
        before=before,
        after=after,
        checks=checks,
        groups=len(analysis.dep.groups),
        prunable_groups=sum(g.prunable for g in analysis.dep.groups),
        seconds=seconds,
    )
    del analysis  # the working copy (every original weight) is done with: free it before writing
    gc.collect()
    if result.passed:
        result.after.bytes = loading.save(pruned, destination, check=True)
        result.written = True
    lap("write")
    return result


def _check_paths(source: str | Path, destination: str | Path) -> None:
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise BadInput("output path is the input path; graphprune never overwrites its input")
    if destination.is_dir():
        raise BadInput(f"output path is a directory: {destination}")
