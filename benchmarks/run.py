"""Benchmark graphprune on ResNet-50 at 50% against Torch-Pruning and onnxsim; write BENCHMARKS.md.

python -m benchmarks.run            # the full run (resnet50, 224x224); writes BENCHMARKS.md
python -m benchmarks.run --quick    # smoke run (resnet18, 64x64); writes to the cache folder
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import baselines, latency, ours
from benchmarks.common import FULL, QUICK, Config, cache_dir, dense_onnx
from benchmarks.machine import describe, load_average
from benchmarks.report import LayerRow, Results, render

ROOT = Path(__file__).resolve().parents[1]
NEEDED = {"torch_pruning": "torch-pruning==1.6.1", "onnxsim": "onnxsim==0.8.1"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64x64, few repeats")
    parser.add_argument("--out", type=Path, help="report path (default: see above)")
    args = parser.parse_args(argv)
    missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"missing packages: pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    config = QUICK if args.quick else FULL
    out = args.out or (
        cache_dir() / "BENCHMARKS.quick.md" if args.quick else ROOT / "BENCHMARKS.md"
    )
    results = collect(config, " ".join(["python -m benchmarks.run", *argv]))
    out.write_text(render(results) + _kept_sections(out))
    log(f"wrote {out} ({results.total_seconds:.0f} s)")
    return 0


def collect(config: Config, command: str) -> Results:
    """Measure everything for ``config``."""
    start, load_start = time.perf_counter(), load_average()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = cache_dir() / f"{config.model}_{config.size}"
    work.mkdir(exist_ok=True)
    log(f"exporting {config.model} (cached in {cache_dir()})")
    dense = dense_onnx(config)
    pruned = work / "graphprune.onnx"
    log("graphprune prune (subprocess)")
    runs = [ours.prune(dense, pruned, config.ratio, verify=False) for _ in range(config.repeats)]
    warm = ours.in_process(dense, work / "graphprune.api.onnx", config.ratio, config.repeats)
    _, verified = ours.prune(dense, work / "graphprune.verified.onnx", config.ratio, verify=True)
    floor = ours.import_floor(work)
    groups = ours.inspect(dense)
    log("Torch-Pruning")
    tp = baselines.torch_pruning(config)
    log("onnxsim")
    sims, notes = _onnxsim(dense, work, config)
    log("latency")
    models = {"dense": dense, "graphprune": pruned}
    models |= {f"onnxsim ({o.label})": o.output for o in sims if o.runs}
    threads = sorted({1, os.cpu_count() or 1})
    lat = {
        n: latency.interleaved(models, config.shape, n, config.latency_runs, config.warmup)
        for n in threads
    }
    layers = compare_layers(dense, pruned, runs[0][1]["plan"], groups, tp)
    results = Results(
        config=config,
        command=command,
        date=date,
        machine=describe(ROOT),
        load=(load_start, load_average()),
        dense_bytes=dense.stat().st_size,
        ours=runs,
        in_process=warm,
        verified=verified,
        floor=floor,
        torch_pruning=tp,
        onnxsim=sims,
        latency=lat,
        layers=layers,
        notes=notes + _graphprune_notes(runs[0][1], verified, layers) + _noise_notes(lat),
    )
    results.total_seconds = time.perf_counter() - start
    return results


def _onnxsim(
    dense: Path, work: Path, config: Config
) -> tuple[list[baselines.OnnxsimResult], list[str]]:
    """onnxsim on the exported file, and on a copy with private (unshared) initializers."""
    same = baselines.onnxsim_prune("same file", dense, work / "onnxsim.onnx", config)
    private = work / "dense.unshared.onnx"
    replaced = baselines.unshare_initializers(dense, private)
    unshared = baselines.onnxsim_prune(
        "initializers unshared", private, work / "onnxsim.unshared.onnx", config
    )
    notes = [
        f"The exported file reads {replaced} deduplicated initializers (zero Conv biases: "
        "random-init BatchNorm folds to bias 0) through `Identity` nodes shared by several "
        'Convs. "initializers unshared" is the same model with each of those replaced by a '
        "private copy, to show what onnxsim does on a graph without that sharing."
    ]
    return [same, unshared], notes


def compare_layers(
    dense: Path, pruned: Path, plan: dict, groups: dict, tp: baselines.TorchPruningResult
) -> list[LayerRow]:
    """Per Conv (and the final Linear): out channels before, after graphprune and after
    Torch-Pruning, and whether both removed the same channel indices."""
    modules = ours.conv_modules(dense)
    before, after = ours.weight_shapes(dense), ours.weight_shapes(pruned)
    removed = ours.removed_by_tensor(plan, groups)
    rows = [
        LayerRow(
            module=module,
            tensor=tensor,
            before=before[tensor][0],
            ours=after[tensor][0],
            theirs=tp.out_channels.get(module),
            same_indices=removed.get(tensor, set()) == tp.removed.get(module, set()),
        )
        for tensor, module in modules.items()
    ]
    if "fc.weight" in before and "fc" in tp.in_features:
        rows.append(
            LayerRow(
                "fc (in features)",
                "fc.weight",
                before["fc.weight"][1],
                after["fc.weight"][1],
                tp.in_features["fc"],
                None,
            )
        )
    return rows


def _graphprune_notes(report: dict, verified: dict, layers: list[LayerRow]) -> list[str]:
    """Observations about graphprune's own output worth a reader's attention."""
    notes = [
        f"graphprune found {report['groups']} groups, {report['prunable_groups']} prunable, "
        f"pruned {report['pruned_groups']}; verification "
        f"{'passed' if verified['passed'] else 'FAILED'}."
    ]
    unmatched = [row.module for row in layers if row.theirs is None]
    if unmatched:
        notes.append(f"Conv nodes with no torch module of that path: {', '.join(unmatched)}.")
    ops_before, ops_after = report["before"]["ops"], report["after"]["ops"]
    dropped = {op: n for op, n in ops_before.items() if ops_after.get(op, 0) != n}
    if dropped:
        notes.append(
            "Op counts that changed (before -> after): "
            + ", ".join(f"{op} {n} -> {ops_after.get(op, 0)}" for op, n in dropped.items())
            + "."
        )
    return notes


def _noise_notes(lat: dict[int, dict[str, latency.Latency]]) -> list[str]:
    """Flag thread counts whose latencies spread widely: other load on the machine."""
    notes = []
    for threads, by_model in lat.items():
        spread = {name: (x.iqr[1] - x.iqr[0]) / x.median for name, x in by_model.items()}
        worst = max(spread, key=spread.get)
        if spread[worst] > 0.1:
            notes.append(
                f"Latency at {threads} thread(s) was noisy: the IQR of {worst} is "
                f"{spread[worst]:.0%} of its median, so other processes were competing for the "
                "cores; the medians (and the target verdict) at that thread count are unreliable, "
                "the minima less so."
            )
    return notes


if __name__ == "__main__":
    sys.exit(main())


def _kept_sections(report: Path) -> str:
    """Sections other benchmark scripts own in the same file (marked <!-- name:begin/end -->),
    carried over so that re-running this one does not erase them."""
    text = report.read_text() if report.exists() else ""
    sections = re.findall(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", text, flags=re.S)
    kept = [
        re.search(rf"<!-- {name}:begin -->.*?<!-- {name}:end -->", text, re.S).group(0)
        for name in sections
    ]
    return "".join(f"\n\n{section}\n" for section in kept)
