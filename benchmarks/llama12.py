"""A 12-layer LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, GQA 8/2), random init, exported by the
dynamo exporter with dynamic batch and sequence, pruned 50% (KV groups + MLP channels).

    python -m benchmarks.llama12     # writes the LLaMA section of BENCHMARKS.md

Reports parameters and MACs at 1x128, onnxruntime CPU latency (batch 1, sequence 128) beside
the MACs ratio, and the wall time and peak RSS of `graphprune prune` on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import write_section
from benchmarks.minilm import REPORT

BEGIN, END = "<!-- llama12:begin -->", "<!-- llama12:end -->"
CONFIG = {
    "vocab_size": 1000,
    "max_position_embeddings": 256,
    "hidden_size": 256,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 688,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128)}


def export(path: Path) -> None:
    import torch

    from models.transformers_zoo import build_hf

    model = build_hf(
        "LlamaConfig", "LlamaForCausalLM", "logits", call={"use_cache": False}, **CONFIG
    )
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 16))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}),
        external_data=False,
        verbose=False,
    )


def prune_cli(source: Path, out: Path) -> dict:
    """`graphprune prune` in a fresh process under /usr/bin/time: its JSON, wall time, RSS."""
    shapes = [
        arg
        for name, dims in SHAPES.items()
        for arg in ("--shape", f"{name}:{'x'.join(map(str, dims))}")
    ]
    command = [
        "/usr/bin/time",
        "-f",
        "%e %M",
        sys.executable,
        "-m",
        "graphprune.cli",
        "prune",
        str(source),
        str(out),
        "--ratio",
        "0.5",
        "--providers",
        "cpu",
        "--json",
        "--quiet",
        *shapes,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall, rss_kib = done.stderr.strip().splitlines()[-1].split()
    return json.loads(done.stdout) | {"wall_s": float(wall), "rss_mib": int(rss_kib) / 1024}


def onnxsim_rows(source: Path, folder: Path) -> list[dict]:
    """onnxsim 0.8.1's two pruners on the same file at 50%: parameters kept, and whether the
    result still runs and matches the dense model's output shape."""
    import numpy as np
    import onnx
    import onnxsim

    from benchmarks.minilm import _params
    from graphprune.verify import random_inputs, run

    dense = onnx.load(source)
    feeds = random_inputs(dense, 0, SHAPES)
    before = _params(dense)
    rows = []
    for name in ("apply_attention_head_pruning", "apply_structured_pruning"):
        row = {"tool": f"onnxsim {name}"}
        try:
            pruned = getattr(onnxsim, name)(str(source), sparsity=0.5)
            path = folder / f"{name}.onnx"
            onnx.save(pruned, path)
            row["kept"] = _params(pruned) / before
            out = next(iter(run(onnx.load(path), feeds).values()))
            row["runs"] = bool(np.isfinite(out).all())
        except Exception as err:  # a peer failing is a result to report
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
        rows.append(row)
    return rows


def main() -> int:
    from graphprune.bench import bench

    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "llama12.onnx", Path(tmp) / "llama12.pruned.onnx"
        export(source)
        result = prune_cli(source, out)
        dense_ms = bench(source, input_shapes=SHAPES, runs=30).median_ms
        pruned_ms = bench(out, input_shapes=SHAPES, runs=30).median_ms
        file_mib = source.stat().st_size / 2**20
        peers = onnxsim_rows(source, Path(tmp))
    section = render(result, dense_ms, pruned_ms, file_mib, peers)
    write_section(REPORT, BEGIN, END, section)
    print(section)
    return 0


def render(
    result: dict, dense_ms: float, pruned_ms: float, file_mib: float, peers: list[dict]
) -> str:
    before, after = result["before"], result["after"]
    macs_ratio = before["macs"] / after["macs"]
    speedup = dense_ms / pruned_ms
    kinds = sorted({g["group"].split(":")[0] for g in result["plan"]["groups"]})
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    return "\n".join(
        [
            BEGIN,
            "## 12-layer LLaMA-style decoder (GQA 8/2), 50% KV groups + MLP",
            "",
            f"Generated by `python -m benchmarks.llama12` on {stamp} UTC. Random init, hidden "
            "256, 12 layers, 8 query / 2 key-value heads of 32, "
            "SwiGLU 688, dynamo export (opset 18, dynamic batch and sequence); onnxruntime CPU, "
            "batch 1, sequence 128, median of 30 runs.",
            "",
            "| | dense | pruned 50% | ratio |",
            "|---|---|---|---|",
            f"| parameters | {before['params']:,} | {after['params']:,} | "
            f"{after['params'] / before['params']:.3f} |",
            f"| MACs (1x128) | {before['macs']:,} | {after['macs']:,} | {1 / macs_ratio:.3f} |",
            f"| latency ms | {dense_ms:.2f} | {pruned_ms:.2f} | speedup {speedup:.2f}x, "
            f"{speedup / macs_ratio:.3f} of the MACs ratio |",
            "",
            f"Pruned groups: {len(kinds)} (the embedding and LM head are the graph interface and "
            f"the hidden size is RMSNorm-normalized, so they stay). Oracle: "
            f"{'exact' if result['passed'] else 'FAILED'}. `graphprune prune` (verification "
            f"included) took {result['wall_s']:.1f} s wall and {result['rss_mib']:.0f} MiB "
            f"peak RSS on a {file_mib:.0f} MiB model.",
            "",
            "Side by side on the same file at 50% (float initializers counted):",
            "",
            "| tool | params kept | runs |",
            "|---|---|---|",
            f"| graphprune (KV groups + MLP, l2) | {after['params'] / before['params']:.3f} "
            "| yes |",
            *[_peer_row(p) for p in peers],
            END,
        ]
    )


def _peer_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['tool']} | fails: {row['error']} | |"
    return f"| {row['tool']} | {row['kept']:.3f} | {'yes' if row['runs'] else 'no'} |"


if __name__ == "__main__":
    sys.exit(main())
