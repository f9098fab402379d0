"""Expert pruning on a mixture-of-experts decoder trained here on real text.

    python -m benchmarks.moe [--minutes M]     # writes the MoE section of BENCHMARKS.md

The model is our Mixtral-style decoder (models/moe.py: RMSNorm, causal attention, top-2 of
EXPERTS SwiGLU experts, renormalized) over bytes (vocab 256), trained for a few minutes on the
Wikipedia calibration split (models/wiki.py) with a Switch-style load-balancing loss, so that
its experts differ and are all used: random-init experts are interchangeable, and every
selection criterion then looks alike. The trained weights are exported in two forms that
compute the same function: sparse (per-expert token gathering) and dense dispatch (stacked
[E, ...] weights, every expert on every token), and pruned at 25% and 50% of the experts by
each criterion. Quality is measured against the unpruned model on held-out articles: cosine of
the next-byte logits, next-byte agreement (argmax), and bits per byte. Latency: onnxruntime
CPU, batch 1, sequence 128, median of RUNS.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import cache_dir, write_section

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- moe:begin -->", "<!-- moe:end -->"
SIZES = {"layers": 2, "hidden": 64, "experts": 8, "k": 2, "width": 128}
SEQ, BATCH, LR, AUX = 64, 16, 3e-3, 0.01
RATIOS = (0.25, 0.5)
CRITERIA = {
    "stun (router rows)": ("stun", 0.0),
    "stun (+ co-selection, lambda 1)": ("stun", 1.0),
    "frequency": ("frequency", 0.0),
    "l2 (weight norm)": ("l2", 0.0),
}
EVAL_SEQS, CALIB_SEQS, RUNS = 64, 64, 50


def byte_stream(split: str) -> np.ndarray:
    from models.wiki import wiki_texts

    return np.frombuffer("\n".join(wiki_texts(split)).encode("utf-8"), dtype=np.uint8)


def windows(stream: np.ndarray, count: int, seed: int, length: int = SEQ + 1) -> np.ndarray:
    starts = np.random.default_rng(seed).integers(0, len(stream) - length, count)
    return np.stack([stream[s : s + length] for s in starts]).astype(np.int64)


def build(dispatch: str):
    """The decoder with dense-dispatch ("dense") or sparse ("gather") MoE blocks."""
    from models.moe import DenseMoE, MixtralMoE, MoEDecoder

    common = {"hidden": SIZES["hidden"], "width": SIZES["width"], "experts": SIZES["experts"]}
    if dispatch == "dense":
        make = functools.partial(DenseMoE, k=SIZES["k"], **common)
    else:
        make = functools.partial(MixtralMoE, k=SIZES["k"], dispatch=dispatch, **common)
    return MoEDecoder(make, layers=SIZES["layers"], vocab=256, hidden=SIZES["hidden"])


def train(minutes: float, seed: int = 0):
    """Train the dense-dispatch decoder (batched MatMuls: the cheapest to train on a CPU) for
    `minutes` of wall time; returns (model, steps, last loss)."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    model = build("dense").train()
    router_logits = []
    for layer in model.layers:
        layer.moe.gate.register_forward_hook(lambda m, i, out: router_logits.append(out))
    stream = byte_stream("calibration")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    deadline, step, loss = time.monotonic() + 60 * minutes, 0, float("nan")
    while time.monotonic() < deadline:
        batch = torch.from_numpy(windows(stream, BATCH, seed=step))
        router_logits.clear()
        logits = model(batch[:, :-1])
        lm_loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        balance = sum(_balance_loss(r) for r in router_logits) / len(router_logits)
        optimizer.zero_grad()
        (lm_loss + AUX * balance).backward()
        optimizer.step()
        step, loss = step + 1, float(lm_loss.detach())
    return model.eval(), step, loss


def _balance_loss(logits):
    """Switch Transformer: E * sum_e (share of tokens routed to e) * (mean router prob of e)."""
    import torch

    probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    chosen = torch.zeros_like(probs).scatter(1, probs.topk(SIZES["k"], dim=-1).indices, 1.0)
    return probs.shape[-1] * (chosen.mean(0) / SIZES["k"] * probs.mean(0)).sum()


def sparse_copy(dense):
    """The same weights as a sparse decoder (one SwiGLU module per expert, token gathering)."""
    sparse = build("gather")
    state = {k: v for k, v in dense.state_dict().items() if not k.endswith("_proj") or "attn" in k}
    for i, layer in enumerate(dense.layers):
        for name in ("gate_proj", "up_proj", "down_proj"):
            stacked = getattr(layer.moe, name).detach()
            for e in range(SIZES["experts"]):
                state[f"layers.{i}.moe.experts.{e}.{name}.weight"] = stacked[e].T.contiguous()
    sparse.load_state_dict(state)
    return sparse.eval()


def export(model, path: Path) -> None:
    import torch

    ids = torch.zeros((2, 16), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids,),
            str(path),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "logits": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            dynamo=False,
        )


def quality(path: Path, reference: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Cosine of next-byte logits and argmax agreement against `reference`; bits per byte."""
    logits = _logits(path, ids[:, :-1])
    a, b = logits.reshape(-1, 256).astype(np.float64), reference.reshape(-1, 256)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    shifted = a - a.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(len(a)), ids[:, 1:].reshape(-1)].mean()
    return {
        "cosine": float(cosine.mean()),
        "agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "bits_per_byte": float(nll / np.log(2)),
    }


def _logits(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {"input_ids": ids[i : i + 16]})[0] for i in range(0, len(ids), 16)]
    )


def latency_ms(path: Path) -> float:
    from graphprune.bench import bench

    return bench(
        str(path), provider="cpu", input_shapes={"input_ids": (1, SEQ)}, runs=RUNS
    ).median_ms


def run(minutes: float) -> str:
    from graphprune.moe_prune import prune_experts

    dense, steps, loss = train(minutes)
    heldout = windows(byte_stream("heldout"), EVAL_SEQS, seed=1)
    calib = windows(byte_stream("calibration"), CALIB_SEQS, seed=2)[:, :-1]
    calib_batches = [{"input_ids": calib[i : i + 16]} for i in range(0, len(calib), 16)]
    oracle_inputs = {"input_ids": heldout[:2, :-1]}
    folder = Path(tempfile.mkdtemp(dir=cache_dir()))
    forms = {"sparse": folder / "sparse.onnx", "dense": folder / "dense.onnx"}
    export(sparse_copy(dense), forms["sparse"])
    export(dense, forms["dense"])
    reference = _logits(forms["sparse"], heldout[:, :-1]).astype(np.float64)
    same = np.abs(_logits(forms["dense"], heldout[:, :-1]) - reference).max()
    rows, timing = [], []
    base = quality(forms["sparse"], reference, heldout)
    for form, path in forms.items():
        timing.append((form, 0.0, _params(path), latency_ms(path), "-"))
    for label, (criterion, lam) in CRITERIA.items():
        for ratio in RATIOS:
            out = folder / f"{criterion}-{lam}-{ratio}.onnx"
            result = prune_experts(
                forms["sparse"],
                out,
                ratio,
                criterion,
                calib_inputs=calib_batches,
                inputs=oracle_inputs,
                providers=("cpu",),
                stun_lambda=lam,
            )
            kept = "/".join(str(x.after) for x in result.layers)
            worst = max(o.max_abs for c in result.checks for o in c.outputs)
            rows.append(
                (label, ratio, kept, quality(out, reference, heldout), result.passed, worst)
            )
    for form, path in forms.items():
        for ratio in RATIOS:
            out = folder / f"{form}-{ratio}.onnx"
            prune_experts(path, out, ratio, "stun", inputs=oracle_inputs, providers=("cpu",))
            timing.append(
                (form, ratio, _params(out), latency_ms(out), f"{_params(out) / _params(path):.3f}")
            )
    return _section(steps, loss, base, same, rows, timing)


def _params(path: Path) -> int:
    import onnx

    from graphprune.report import summarize

    return summarize(onnx.load(str(path)), None, macs=False).params


def _section(steps, loss, base, same, rows, timing) -> str:
    from benchmarks.machine import describe, load_average

    machine = describe(ROOT)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    where = f"{machine['CPU']}, {machine['cores (os.cpu_count)']} cores, load {load_average()}"
    lines = [
        BEGIN,
        "## Mixture of experts: expert pruning on a decoder trained here",
        "",
        f"`python -m benchmarks.moe` ({stamp}, {where}, commit {machine['graphprune commit']}). "
        "A byte-level Mixtral-style decoder "
        f"({SIZES['layers']} layers, hidden {SIZES['hidden']}, {SIZES['experts']} SwiGLU experts "
        f"of width {SIZES['width']}, top-{SIZES['k']}, renormalized), trained from scratch (dense "
        f"dispatch; the sparse export gets the same weights) for "
        f"{steps} steps (batch {BATCH} x {SEQ} bytes, AdamW {LR}, load-balancing loss {AUX}) on "
        f"the Wikipedia calibration split: final training loss {loss:.3f} nats/byte, held-out "
        f"{base['bits_per_byte']:.3f} bits/byte. Trained so that experts differ: random-init "
        "experts are interchangeable and every criterion would look alike. Quality against the "
        f"unpruned model on {EVAL_SEQS} held-out windows of {SEQ} bytes; calibration "
        f"(frequency, co-selection) on {CALIB_SEQS} windows of the calibration split. Every "
        "pruned model passed the -inf router oracle (max abs error column).",
        "",
        "| criterion | experts removed | experts kept per layer | logit cosine | next-byte "
        "agreement | bits/byte | oracle max abs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, ratio, kept, q, passed, worst in rows:
        verdict = f"{worst:.1e}" if passed else f"FAILED {worst:.1e}"
        lines.append(
            f"| {label} | {ratio:.0%} | {kept} | {q['cosine']:.4f} | {q['agreement']:.3f} | "
            f"{q['bits_per_byte']:.3f} | {verdict} |"
        )
    lines += [
        "",
        f"Sparse (per-expert gathering) and dense-dispatch exports of the same weights agree to "
        f"{same:.1e}. Parameters and onnxruntime CPU latency (batch 1, sequence {SEQ}, median of "
        f"{RUNS}), STUN selection:",
        "",
        "| form | experts removed | parameters | params ratio | latency (ms) |",
        "|---|---|---|---|---|",
    ]
    for form, ratio, params, ms, fraction in timing:
        lines.append(f"| {form} | {ratio:.0%} | {params:,} | {fraction} | {ms:.2f} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time")
    args = parser.parse_args()
    section = run(args.minutes)
    write_section(REPORT, BEGIN, END, section)
    print(section)


if __name__ == "__main__":
    main()
