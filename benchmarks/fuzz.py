"""Fuzz the command line with many broken models and record how it answered (issue 11).

The mutants are those of tests/test_fuzz.py (same seed, same mutations: byte flips, truncations,
structural changes, bad external data of small CNN, MLP and attention models), here 500 and
more instead of CI's sample. Each one runs `graphprune inspect` and `graphprune prune --ratio
0.3` in this process; the exit codes are counted per command, and every broken promise (exit 3,
a traceback, more than one stderr line, a changed input, a stray output file) is listed.

    python -m benchmarks.fuzz [--count 500] [--seed 11] [--write]

`--write` puts the figures into BENCHMARKS.md between the fuzz markers. The address space is
capped (`--memory-gib`) so a runaway allocation is a MemoryError to count, not a process the
kernel kills.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import write_section
from benchmarks.machine import describe, load_average
from tests.test_fuzz import MUTATIONS, SEED, check_mutant, mutants

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--memory-gib", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    cap = args.memory_gib * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    started = time.perf_counter()
    exits: dict[str, Counter] = {"inspect": Counter(), "prune": Counter()}
    per_mutation: dict[str, Counter] = {kind: Counter() for kind in MUTATIONS}
    failures = []
    for i, mutant in enumerate(mutants(args.count, args.seed)):
        with tempfile.TemporaryDirectory(prefix="graphprune-fuzz-") as folder:
            for outcome in check_mutant(mutant, Path(folder)):
                exits[outcome.command][outcome.exit_code] += 1
                per_mutation[mutant.label.split("/")[1]][outcome.exit_code] += 1
                if outcome.problems:
                    failures.append((mutant.label, outcome))
        if (i + 1) % 50 == 0:
            print(f"{i + 1} mutants, {len(failures)} broken promises", flush=True)
    seconds = time.perf_counter() - started

    for label, outcome in failures:
        print(f"{label} {outcome.command}: {outcome.problems} {outcome.stderr[:400]}")
    section = render(args, exits, per_mutation, failures, seconds)
    print(section)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", BEGIN, END, section)


def render(args, exits, per_mutation, failures, seconds: float) -> str:
    machine = describe(ROOT)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    codes = sorted(set(exits["inspect"]) | set(exits["prune"]))
    internal = sum(1 for _, o in failures if o.exit_code == 3)
    lines = [
        BEGIN,
        "## Fuzzing the command line with broken models (issue 11)",
        "",
        f"`python -m benchmarks.fuzz --count {args.count} --seed {args.seed} --write` "
        f"(last run {when}, {seconds:.0f} s; {machine['CPU']}, {machine['cores (os.cpu_count)']} "
        f"cores shared with other work, load {load_average()}; onnxruntime "
        f"{machine['onnxruntime']}, onnx {machine['onnx']}; graphprune commit "
        f"{machine['graphprune commit']}; address space capped at {args.memory_gib} GiB). "
        f"{args.count} mutants of three small models (CNN, MLP, 2-head attention block), the "
        f"{len(per_mutation)} mutations of tests/test_fuzz.py in turn; each runs `inspect` and "
        "`prune --ratio 0.3` in-process. A broken promise is an exit code other than 0, 1 or 2, "
        "a traceback, more than one line on stderr (onnxruntime's own log lines included), an "
        "input file changed, or a file left in the output folder by a run that failed.",
        "",
        f"**Internal errors (exit 3): {internal}. Broken promises of any kind: {len(failures)}.**",
        "",
        "| command | " + " | ".join(f"exit {c}" for c in codes) + " |",
        "|---|" + "---|" * len(codes),
    ]
    for command, counter in exits.items():
        lines.append(f"| {command} | " + " | ".join(str(counter[c]) for c in codes) + " |")
    lines += ["", "| mutation | runs | " + " | ".join(f"exit {c}" for c in codes) + " |"]
    lines.append("|---|---|" + "---|" * len(codes))
    for kind, counter in per_mutation.items():
        total = sum(counter.values())
        lines.append(f"| {kind} | {total} | " + " | ".join(str(counter[c]) for c in codes) + " |")
    if failures:
        lines += ["", "Broken promises (first 20):", ""]
        for label, outcome in failures[:20]:
            message = outcome.stderr.splitlines()[0][:200] if outcome.stderr else ""
            lines.append(f"- `{label}` {outcome.command}: {', '.join(outcome.problems)}: {message}")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
