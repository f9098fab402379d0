"""Every importance criterion x every compensation, on real models with real data.

    python -m benchmarks.criteria              # MiniLM and the digits CNN; writes its section
    python -m benchmarks.criteria --only digits

For each model, ratio, criterion and compensation (none; the criterion's own: FLAP's bias for
fluctuation, the OBS update for OBSPA, mask tuning for condition; `--reconstruct`: layer-wise
least squares), one `graphprune prune` in a fresh process (so its peak RSS is its own), with the
zero-then-prune oracle on. Reported: the task metric, the calibration time and the peak RSS.

- all-MiniLM-L6-v2 (real weights), heads + MLP: calibration = 64 windows of 128 tokens of
  Wikipedia summaries (the calibration split of models/wiki.py, MiniLM's own tokenizer);
  metric = cosine of pruned vs dense sentence embeddings and Spearman of pair similarities on
  benchmarks/minilm.py's fixed sentence pairs (none of them in the calibration text).
- digits CNN (trained on scikit-learn's load_digits): calibration = 256 training images (no test
  image), metric = test accuracy.

OBSPA is also run data-free (synthetic inputs), the setting its paper claims.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import write_section
from benchmarks.minilm import PAIRS, REPORT, embed, pair_similarities, spearman, tokenizer

BEGIN, END = "<!-- criteria:begin -->", "<!-- criteria:end -->"
CRITERIA = ("obspa", "fluctuation", "condition", "wanda", "l2", "l1", "random")
OWN = {"fluctuation": "bias", "obspa": "OBS update", "condition": "mask tuning"}
COMPENSATIONS = ("none", "own", "reconstruct")
RATIOS = {"minilm": (0.25, 0.5), "digits": (0.3, 0.5)}
CALIB_WINDOWS, CALIB_SEQ = 64, 128


# --------------------------------------------------------------------------- calibration data


def minilm_calibration(path: Path) -> Path:
    """64 windows of MiniLM input from the Wikipedia calibration split, as an .npz: each window
    is [CLS] + 126 text tokens + [SEP], the form the model sees in use. (Windows without the
    special tokens miss the activations BERT puts on them, and a reconstruction fitted on such
    statistics does not transfer to real inputs.)"""
    from models.wiki import wiki_texts

    tok = tokenizer()
    tok.no_padding()
    tok.no_truncation()
    body = CALIB_SEQ - 2
    stream: list[int] = []
    for text in wiki_texts("calibration", n=400):
        stream += tok.encode(text, add_special_tokens=False).ids
        if len(stream) >= CALIB_WINDOWS * body:
            break
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    text = np.array(stream[: CALIB_WINDOWS * body], dtype=np.int64).reshape(CALIB_WINDOWS, body)
    ids = np.concatenate(
        [np.full((CALIB_WINDOWS, 1), cls), text, np.full((CALIB_WINDOWS, 1), sep)], axis=1
    )
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids))
    return path


def digits_calibration(path: Path, input_name: str) -> Path:
    from models.digits import load_split

    x_train, _, _, _ = load_split()
    np.savez(path, **{input_name: x_train.astype(np.float32)})
    return path


# --------------------------------------------------------------------------- one run


def prune_in_child(
    source: Path,
    out: Path,
    ratio: float,
    criterion: str,
    compensation: str,
    calib: str | None,
    extra: tuple[str, ...] = (),
) -> dict:
    """`graphprune prune` in a fresh process: its JSON report, wall time and peak RSS."""
    command = [
        "/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "graphprune.cli", "prune",
        str(source), str(out), "--ratio", str(ratio), "--criterion", criterion,
        "--providers", "cpu", "--json", "--quiet",
    ]  # fmt: skip
    if compensation == "reconstruct":
        command += ["--compensation", "none", "--reconstruct"]
    else:
        command += ["--compensation", compensation]
    if calib == "data-free":
        command += ["--data-free"]
    elif calib is not None:
        command += ["--calib", calib]
    command += list(extra)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall, rss_kib = done.stderr.strip().splitlines()[-1].split()
    if done.returncode not in (0, 1):
        message = (done.stderr.strip().splitlines() or ["?"])[-2:-1] or ["?"]
        return {"error": message[0][:120], "wall_s": float(wall)}
    report = json.loads(done.stdout)
    return report | {"wall_s": float(wall), "rss_mib": int(rss_kib) / 1024}


def needs_data(criterion: str, compensation: str) -> bool:
    return criterion in ("obspa", "fluctuation", "condition", "wanda") or compensation != "none"


def configurations(model: str) -> list[tuple[float, str, str, str]]:
    """(ratio, criterion, compensation, data) for one model."""
    runs = []
    for ratio in RATIOS[model]:
        for criterion in CRITERIA:
            for compensation in COMPENSATIONS:
                if compensation == "own" and criterion not in OWN:
                    continue
                data = "calib" if needs_data(criterion, compensation) else "none"
                runs.append((ratio, criterion, compensation, data))
        runs.append((ratio, "obspa", "own", "data-free"))
    return runs


# --------------------------------------------------------------------------- models


def run_minilm(work: Path) -> list[dict]:
    from models.zoo import export

    source = Path(export("minilm_l6", "torchscript"))
    calib = str(minilm_calibration(work / "minilm_calib.npz"))
    sentences = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    dense = embed(source, sentences)
    dense_sim = pair_similarities(dense)
    rows = []
    for ratio, criterion, compensation, data in configurations("minilm"):
        out = work / "minilm_pruned.onnx"
        chosen = {"calib": calib, "data-free": "data-free", "none": None}[data]
        row = prune_in_child(source, out, ratio, criterion, compensation, chosen)
        if "error" not in row and row["passed"]:
            emb = embed(out, sentences)
            row["metric"] = {
                "cosine": float(np.sum(emb * dense, axis=1).mean()),
                "spearman": spearman(pair_similarities(emb), dense_sim),
            }
        rows.append(_summary("minilm", ratio, criterion, compensation, data, row))
        out.unlink(missing_ok=True)
    return rows


def run_digits(work: Path) -> list[dict]:
    from graphprune.load import load
    from models.digits import accuracy_onnx, load_split
    from models.zoo import export

    source = Path(export("digits_cnn", "torchscript"))
    input_name = load(source).graph.input[0].name
    calib = str(digits_calibration(work / "digits_calib.npz", input_name))
    _, _, x_test, y_test = load_split()
    dense_accuracy = accuracy_onnx(source, x_test, y_test)
    rows = []
    for ratio, criterion, compensation, data in configurations("digits"):
        out = work / "digits_pruned.onnx"
        chosen = {"calib": calib, "data-free": "data-free", "none": None}[data]
        # the export has a static batch of 1: 256 images keep calibration to seconds
        row = prune_in_child(
            source, out, ratio, criterion, compensation, chosen, ("--calib-samples", "256")
        )
        if "error" not in row and row["passed"]:
            row["metric"] = {"accuracy": accuracy_onnx(out, x_test, y_test)}
        rows.append(_summary("digits", ratio, criterion, compensation, data, row))
        out.unlink(missing_ok=True)
    rows.insert(0, {"model": "digits", "dense": {"accuracy": dense_accuracy}})
    return rows


def _summary(
    model: str, ratio: float, criterion: str, compensation: str, data: str, row: dict
) -> dict:
    summary = {
        "model": model, "ratio": ratio, "criterion": criterion, "compensation": compensation,
        "data": data, "wall_s": row.get("wall_s"), "rss_mib": row.get("rss_mib"),
    }  # fmt: skip
    if "error" in row:
        return summary | {"error": row["error"]}
    seconds = row.get("seconds", {})
    moved = row.get("compensation") or {}
    return summary | {
        "oracle": row["passed"],
        "params_kept": row["after"]["params"] / row["before"]["params"],
        "calib_s": seconds.get("calibrate"),
        "metric": row.get("metric"),
        "moved": moved,
    }


# --------------------------------------------------------------------------- report


def render(rows: list[dict]) -> str:
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    lines = [
        BEGIN,
        "## Criteria x compensation (issue 4)",
        "",
        f"Generated by `python -m benchmarks.criteria` on {stamp} UTC "
        f"({platform.processor() or 'CPU'}, 2 cores). Each cell is one `graphprune prune` in a "
        "fresh process (oracle on, CPU). MiniLM: heads + MLP, calibration 64 windows of "
        "[CLS] + 126 tokens + [SEP] of Wikipedia summaries (calibration split), metric on 24 "
        "fixed sentence pairs. Digits "
        "CNN: calibration = 256 images of the training split, metric = accuracy on the 447 "
        "held-out images. own = the criterion's own compensation (fluctuation: FLAP bias, "
        "obspa: OBS update, condition: mask tuning); reconstruct = layer-wise least squares. "
        "calib s = calibration wall time inside the run; RSS = the process's peak.",
        "",
    ]
    for model, heading, metric in (
        ("minilm", "all-MiniLM-L6-v2", "cosine / Spearman"),
        ("digits", "digits CNN", "accuracy"),
    ):
        picked = [r for r in rows if r.get("model") == model and "criterion" in r]
        if not picked:
            continue
        dense = next((r["dense"] for r in rows if r.get("model") == model and "dense" in r), None)
        note = f" (dense accuracy {dense['accuracy']:.3f})" if dense else ""
        lines += [
            f"### {heading}{note}",
            "",
            f"| ratio | criterion | data | compensation | oracle | params kept | {metric} | "
            "calib s | wall s | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_row(r) for r in picked]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _row(r: dict) -> str:
    head = f"| {r['ratio']:.0%} | {r['criterion']} | {r['data']} | {r['compensation']} |"
    if "error" in r:
        return f"{head} fails: {r['error']} | | | | | |"
    metric = r.get("metric") or {}
    if "cosine" in metric:
        shown = f"{metric['cosine']:.3f} / {metric['spearman']:.3f}"
    elif "accuracy" in metric:
        shown = f"{metric['accuracy']:.3f}"
    else:
        shown = "n/a"
    calib = f"{r['calib_s']:.1f}" if r.get("calib_s") is not None else "-"
    return (
        f"{head} {'exact' if r['oracle'] else 'FAILED'} | {r['params_kept']:.3f} | {shown} | "
        f"{calib} | {r['wall_s']:.1f} | {r['rss_mib']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("minilm", "digits", "none"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--rows",
        type=Path,
        nargs="*",
        default=[],
        help="rows saved by earlier --json runs to report beside this run's",
    )
    args = parser.parse_args(argv)
    rows: list[dict] = [row for path in args.rows for row in json.loads(path.read_text())]
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "digits"):
            rows += run_digits(Path(tmp))
        if args.only in (None, "minilm"):
            rows += run_minilm(Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    section = render(rows)
    write_section(REPORT, BEGIN, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
