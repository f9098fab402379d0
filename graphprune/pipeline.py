"""The pipeline, stage by stage: load -> prepare -> analyze -> score -> allocate -> rewrite ->
verify -> write. Each stage is one call; `prune` is the whole job."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphprune import load as loading
from graphprune.allocate import allocate
from graphprune.depgraph import DepGraph
from graphprune.errors import BadInput
from graphprune.plan import Plan, fingerprint
from graphprune.prepare import prepare
from graphprune.report import Summary, summarize
from graphprune.verify import ATOL, RTOL, Check, oracle, random_inputs


@dataclass
class Analysis:
    """A loaded model ready for scoring and rewriting."""

    original: onnx.ModelProto
    work: onnx.ModelProto  # prepared, with inferred shapes
    dep: DepGraph
    fingerprint: str


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
    original = loading.load(source)
    work = loading.infer_shapes(prepare(original))
    return Analysis(original, work, DepGraph.build(work), fingerprint(original))


def score(analysis: Analysis, criterion: str, seed: int = 0) -> dict[str, np.ndarray]:
    from graphprune.passes import ScoreContext, importance

    scorer = importance(criterion)
    context = ScoreContext(constants=analysis.dep.index.constants, seed=seed)
    return {g.id: scorer.score(g, context) for g in analysis.dep.groups if g.prunable}


def prune(
    source: str | Path,
    destination: str | Path,
    ratio: float = 0.5,
    criterion: str = "l2",
    allocation: str = "uniform",
    round_to: int = 1,
    plan: Plan | None = None,
    verify: bool = True,
    providers: tuple[str, ...] = ("cpu", "cuda"),
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> PruneResult:
    """Prune `source` into `destination`; the output is written only if verification passes."""
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
        removals = allocate(analysis.dep.groups, scores, ratio, allocation, round_to)
        plan = Plan.from_removals(
            analysis.dep, removals, analysis.fingerprint, criterion, ratio, allocation
        )
    lap("allocate")
    pruned = slice_channels(analysis.work, analysis.dep, removals)
    onnx.checker.check_model(pruned, full_check=True)
    lap("rewrite")
    checks = []
    inputs = random_inputs(analysis.work, seed, input_shapes)
    shapes = {name: value.shape for name, value in inputs.items()}
    if verify:
        checks = oracle(
            analysis.work, pruned, analysis.dep, removals, inputs, providers, rtol, atol
        )
        lap("verify")
    result = PruneResult(
        plan=plan,
        before=summarize(analysis.original, loading.file_size(source), shapes, analysis.work),
        after=summarize(pruned, None, shapes),
        checks=checks,
        groups=len(analysis.dep.groups),
        prunable_groups=sum(g.prunable for g in analysis.dep.groups),
        seconds=seconds,
    )
    if result.passed:
        loading.save(pruned, destination)
        result.after.bytes = loading.file_size(destination)
        result.written = True
    lap("write")
    return result


def _check_paths(source: str | Path, destination: str | Path) -> None:
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise BadInput("output path is the input path; graphprune never overwrites its input")
    if destination.is_dir():
        raise BadInput(f"output path is a directory: {destination}")
