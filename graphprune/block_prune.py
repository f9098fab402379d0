"""COMP's coarse stage as a job: load -> score residual sub-blocks on calibration data -> remove the
least important -> oracle -> write. `prune_blocks` is the whole job (`graphprune prune
--remove-blocks N`).

Block importance is 1 - mean cos(h_in, h_out) of each residual sub-block (graphprune.blocks);
the rewrite replaces the chosen residual Adds by their stream input and deletes the branches
(passes/remove_blocks.py). The oracle is exact: the original graph with each removed branch
multiplied by zero must give the same outputs as the rewritten graph on onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from graphprune import load as loading
from graphprune import outputs
from graphprune.blocks import block_importance, find_blocks
from graphprune.data import CalibrationSource, batches
from graphprune.errors import BadInput
from graphprune.pipeline import _check_paths
from graphprune.verify import check_feeds, equivalence_checks, random_inputs


def prune_blocks(
    source: str | Path,
    destination: str | Path,
    count: int,
    calib=None,
    providers: tuple[str, ...] = ("cpu",),
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> dict:
    """Remove the `count` least important residual sub-blocks of `source` into `destination`
    (written only if the oracle passes). `calib` as for `pipeline.prune`; None scores on
    data-free synthetic inputs (said in the result)."""
    from graphprune.passes.remove_blocks import remove_blocks, zeroed_branches

    _check_paths(source, destination, {"--calib": calib})
    model = loading.load(source)
    blocks = find_blocks(model)
    if count < 1:
        raise BadInput(f"--remove-blocks {count} removes nothing: use --ratio 0 to reproduce")
    if not blocks:
        raise BadInput(
            f"--remove-blocks {count} removes nothing: no residual sub-block found (an Add of a "
            "stream and a branch computed from it through a layer with weights)"
        )
    if count > len(blocks):
        raise BadInput(f"--remove-blocks {count}: the model has {len(blocks)} residual sub-blocks")
    data = batches(CalibrationSource.of(calib if calib is not None else "data-free"), model)
    scores = block_importance(model, blocks, list(data))
    order = sorted(range(len(blocks)), key=lambda i: scores[i])[:count]
    chosen = [blocks[i] for i in order]
    ids = [b.id for b in chosen]
    inputs = random_inputs(model, seed, input_shapes)
    check_feeds(model, inputs, source)
    reference = zeroed_branches(model, ids)
    pruned = remove_blocks(model, ids, in_place=True)  # `model` is ours: no second copy
    checks = equivalence_checks(
        "branches x 0 vs blocks removed", reference, pruned, inputs, providers
    )
    passed = all(c.passed for c in checks)
    if passed:
        outputs.write_model(pruned, destination, check=True)
    return {
        "removed": [
            {"id": b.id, "kind": b.kind, "score": float(scores[i]), "parameters": b.parameters}
            for b, i in zip(chosen, order, strict=True)
        ],
        "blocks": len(blocks),
        "data": "data-free" if calib is None else str(CalibrationSource.of(calib).describe()),
        "checks": [c.as_dict() for c in checks],
        "check": "\n".join(c.line() for c in checks),
        "passed": passed,
        "written": passed,
    }
