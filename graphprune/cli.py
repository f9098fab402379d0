"""graphprune command line.

Exit codes: 0 success, 1 verification failed, 2 bad usage or bad input, 3 internal error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Errors are one line on stderr (with
`--json`, also `{"error": ..., "exit": N}` on stdout); set GRAPHPRUNE_DEBUG=1 for a traceback.
A reader that goes away (`graphprune inspect m.onnx | head -n 1`) ends output quietly.

Only the standard library is imported at start-up: the handlers for Ctrl-C and SIGTERM are in
place before numpy, onnx and onnxruntime load, so an interrupt at any point is one line.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import signal
import sys
from collections import Counter
from dataclasses import asdict
from os.path import commonprefix

from graphprune import outputs
from graphprune.errors import BadInput, GraphpruneError

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + the signal's number, as shells report it
NOT_EXACT_UNDER_ORACLE = "hidden scope: not exact under the oracle, normalization statistics change"
# bounds of command-line numbers (graphprune.values holds the model-dependent ones)
MAX_DIM, MAX_SEED = 2**24, 2**32
EXPERT_SCOPES = ("experts", "expert-mlp")


class Terminated(BaseException):
    """SIGTERM arrived: unwind (temporary files are removed on the way) and exit 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def _on_sigint(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # first thing: an interrupt during the imports below is one line too
    handlers = _install_signal_handlers()
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in argv
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _reader_may_leave(sys.stdout), _reader_may_leave(sys.stderr)
    try:
        code = _main(argv, wants_json)
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    finally:
        outputs.remove_scratch()
        sys.stdout, sys.stderr = streams
        for number, handler in handlers.items():  # a caller's own handlers (pytest's) return
            signal.signal(number, handler)


def _install_signal_handlers() -> dict:
    """Ctrl-C raises KeyboardInterrupt (unless the shell started us ignoring it: nohup, `&`),
    SIGTERM raises Terminated; both unwind through the cleanups. Returns the handlers they
    replace."""
    previous = {}
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: signals stay with whoever owns them
        pass
    return previous


def _main(argv: list[str], wants_json: bool) -> int:
    try:
        args = _parser().parse_args(argv)
        _quiet_onnxruntime()
        from graphprune import progress

        progress.enable(not (args.quiet or args.json))
        return args.run(args)
    except _UsageExit as stop:  # argparse's exit: callers still see SystemExit(2)
        _fail(stop.message, EXIT_USAGE, wants_json, stop.line)
        raise
    except GraphpruneError as err:
        return _fail(str(err), err.exit_code, wants_json)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, wants_json, "graphprune: interrupted")
    except Terminated:
        return _fail("terminated", EXIT_TERMINATED, wants_json, "graphprune: terminated")
    except Exception as err:  # one line, never a traceback, unless asked for
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return _fail(
            f"internal error: {type(err).__name__}: {message} "
            "(set GRAPHPRUNE_DEBUG=1 for a traceback)",
            EXIT_INTERNAL,
            wants_json,
        )


def _fail(message: str, code: int, wants_json: bool, line: str | None = None) -> int:
    """The one error line on stderr and, with --json, the error document on stdout."""
    print(line or f"graphprune: error: {message}", file=sys.stderr)
    if wants_json:
        print(json.dumps({"error": message, "exit": code}))
    return code


def _quiet_onnxruntime() -> None:
    """onnxruntime's own log lines (coloured warnings) off, errors only, for every session."""
    try:
        import onnxruntime
    except ImportError:  # commands that never run a model still work
        return
    onnxruntime.set_default_logger_severity(3)


def _reader_may_leave(stream):
    """`stream` wrapped in _ReaderMayLeave; None (a closed descriptor at start) stays None,
    which print() already treats as nowhere."""
    return None if stream is None else _ReaderMayLeave(stream)


class _ReaderMayLeave:
    """A text stream whose reader may close the pipe (`| head -n 1`): from then on output goes
    to /dev/null (as Python's documentation recommends for SIGPIPE) and the command finishes
    with its own exit code instead of a BrokenPipeError."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _UsageExit(SystemExit):
    """argparse's usage error, its message kept for the error line and --json."""

    def __init__(self, message: str, line: str):
        super().__init__(EXIT_USAGE)
        self.message, self.line = message, line


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse prints the whole usage)."""

    def error(self, message: str):
        raise _UsageExit(message, f"{self.prog}: error: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    from graphprune.allocate import DEFAULT_SCOPES

    parser = _Parser(prog="graphprune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)

    prune = commands.add_parser("prune", help="prune a model, verify it, write it")
    prune.add_argument("input", help="ONNX model to prune (never modified)")
    prune.add_argument("output", help="where to write the pruned model (atomically)")
    prune.add_argument(
        "--ratio",
        type=_ratio,
        default=0.5,
        help="share of each group's units to remove (default 0.5)",
    )
    prune.add_argument(
        "--criterion",
        default="l2",
        help="importance: l1, l2, random (no data); fluctuation, wanda, obspa, condition "
        "(need --calib or --data-free)",
    )
    prune.add_argument(
        "--allocation",
        choices=("uniform", "global", "adaptive"),
        default="uniform",
        help="uniform: the same share of every group; global: one ranking of mean-normalized "
        "scores; adaptive: FLAP's standardized scores, one threshold, a parameter budget",
    )
    prune.add_argument(
        "--scope",
        type=_scopes,
        default=DEFAULT_SCOPES,
        help="what to prune: channels (alias mlp), heads (attention heads and "
        "GQA/MQA key-value groups), hidden (the residual stream through its norms: not exact "
        "under the oracle, opt-in only); default channels,heads. experts (whole MoE experts) "
        "and expert-mlp (each expert's intermediate channels) form a run of their own",
    )
    prune.add_argument(
        "--expert-ratio",
        type=_ratio,
        default=None,
        help="share of each MoE layer's experts to remove (scope experts; default --ratio); "
        "criteria stun, frequency (needs --calib or --inputs), l2",
    )
    prune.add_argument(
        "--remove-blocks",
        type=_count,
        default=0,
        metavar="N",
        help="COMP's coarse stage: remove the N residual sub-blocks (attention or MLP) whose "
        "output is closest to their input (1 - cos on calibration data), before pruning "
        "channels; checked against the original with those branches multiplied by zero",
    )
    prune.add_argument(
        "--round-to", type=_positive_int, default=1, help="keep a multiple of N units per group"
    )
    prune.add_argument("--plan", help="replay a saved plan instead of scoring")
    prune.add_argument("--plan-out", help="save the plan as JSON")
    prune.add_argument("--report", help="write a self-contained HTML before/after report here")
    prune.add_argument("--no-verify", action="store_true", help="skip the onnxruntime oracle")
    prune.add_argument("--inputs", help=".npz of inputs for the oracle (default: random)")
    _add_providers(prune, "execution providers for verification")
    _add_shapes(prune)
    prune.add_argument("--seed", type=_seed, default=0)
    _add_calibration(prune)
    _add_output_options(prune)
    prune.set_defaults(run=_run_prune)

    inspect = commands.add_parser("inspect", help="list groups, prunable share and barriers")
    inspect.add_argument("input", help="ONNX model")
    _add_output_options(inspect)
    inspect.set_defaults(run=_run_inspect)

    verify = commands.add_parser("verify", help="run two models on the same inputs and compare")
    verify.add_argument("a", help="reference model")
    verify.add_argument("b", help="model to check against it")
    _add_providers(verify, "execution providers to compare on")
    verify.add_argument("--inputs", help=".npz of inputs keyed by input name (default: random)")
    _add_shapes(verify)
    verify.add_argument("--rtol", type=_tolerance, help="default 1e-4 (fp16 models: 1e-2)")
    verify.add_argument(
        "--atol",
        type=_tolerance,
        help="relative to each output's max |reference|; default 1e-5 (fp16 models: 1e-3)",
    )
    verify.add_argument("--seed", type=_seed, default=0)
    _add_output_options(verify)
    verify.set_defaults(run=_run_verify)

    diff = commands.add_parser("diff", help="compare two models: totals and layer by layer")
    diff.add_argument("a", help="model before")
    diff.add_argument("b", help="model after")
    _add_shapes(diff)
    diff.add_argument("--html", help="also write a self-contained HTML report here")
    diff.add_argument("--bench", action="store_true", help="add CPU latency before and after")
    _add_output_options(diff)
    diff.set_defaults(run=_run_diff)

    bench = commands.add_parser("bench", help="latency, throughput and memory of a model")
    bench.add_argument("model", help="ONNX model")
    _add_providers(bench, "execution providers to time on", default=("cpu",))
    bench.add_argument("--batch", type=_positive_int, help="batch size (dynamic batch only)")
    _add_shapes(bench)
    bench.add_argument("--warmup", type=_positive_int, default=10)
    bench.add_argument("--runs", type=_positive_int, default=50)
    bench.add_argument("--threads", type=_count, default=0, help="intra-op threads (0: default)")
    _add_output_options(bench)
    bench.set_defaults(run=_run_bench)
    return parser


def _add_providers(parser, what: str, default: tuple[str, ...] = ("cpu", "cuda")) -> None:
    parser.add_argument(
        "--providers",
        type=_providers,
        default=default,
        help=f"{what} (default {','.join(default)})",
    )


def _add_shapes(parser) -> None:
    parser.add_argument(
        "--shape",
        action="append",
        type=_shape,
        default=[],
        metavar="NAME:D0xD1x...",
        help="input shape for dynamic dimensions",
    )


def _add_calibration(parser) -> None:
    data = parser.add_argument_group("calibration data (criteria and compensation that need it)")
    sources = data.add_mutually_exclusive_group()
    sources.add_argument("--calib", metavar="FILE.npz", help="samples keyed by input name")
    sources.add_argument("--calib-images", metavar="DIR", help="a folder of images")
    sources.add_argument("--calib-text", metavar="FILE", help="text (.txt, or .json strings)")
    sources.add_argument(
        "--data-free", action="store_true", help="synthetic inputs (see graphprune/data.py)"
    )
    data.add_argument(
        "--preprocess",
        default="",
        metavar="SPEC",
        help="for --calib-images, e.g. size=224,resize=256,mean=0.485/0.456/0.406,"
        "std=0.229/0.224/0.225,layout=nchw,color=rgb,scale=255",
    )
    data.add_argument("--tokenizer", metavar="DIR", help="for --calib-text: a tokenizer folder")
    data.add_argument("--seq-len", type=_positive_int, default=128, help="tokens per window")
    data.add_argument("--calib-batch", type=_positive_int, default=8, help="samples per batch")
    data.add_argument(
        "--calib-samples",
        type=_positive_int,
        help="at most this many samples (default: all of an npz, else 128)",
    )
    data.add_argument(
        "--gram-budget",
        type=_gram_budget,
        default=2.0,
        metavar="GIB",
        help="Gram matrices held at once, in GiB; more means one pass per chunk (default 2)",
    )
    data.add_argument(
        "--compensation",
        choices=("none", "own"),
        default="own",
        help="own: the criterion's compensation (fluctuation: bias, obspa: OBS update, "
        "condition: mask tuning); default own",
    )
    data.add_argument(
        "--reconstruct",
        action="store_true",
        help="also reconstruct each consumer's kept weights by least squares",
    )


def _calibration_source(args: argparse.Namespace):
    """The data source the flags name, or None."""
    from graphprune.data import CalibrationSource

    common = {
        "batch": args.calib_batch,
        "samples": args.calib_samples,
        "seq_len": args.seq_len,
        "seed": args.seed,
    }
    if args.calib:
        return CalibrationSource("npz", path=args.calib, **common)
    if args.calib_images:
        return CalibrationSource(
            "images", path=args.calib_images, preprocess=args.preprocess, **common
        )
    if args.calib_text:
        return CalibrationSource("text", path=args.calib_text, tokenizer=args.tokenizer, **common)
    if args.data_free:
        return CalibrationSource("data-free", **common)
    return None


def _add_output_options(parser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout and nothing else there",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# -- argument types ------------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _ratio(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), e.g. 0.5; not {text}")
    return value


def _tolerance(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, e.g. 1e-4; not {text}")
    return value


def _gram_budget(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB, e.g. 2; not {text}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be an integer in 0..{MAX_SEED - 1}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= MAX_DIM:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{MAX_DIM}, not {text}")
    return value


def _count(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= MAX_DIM:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{MAX_DIM}, not {text}")
    return value


def _scopes(text: str) -> tuple[str, ...]:
    from graphprune.allocate import SCOPES

    names = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    known = (*SCOPES, *EXPERT_SCOPES)
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scopes are {', '.join(known)}; not {text!r}")
    if set(names) & set(EXPERT_SCOPES) and set(names) - set(EXPERT_SCOPES):
        raise argparse.ArgumentTypeError(
            "experts and expert-mlp run on their own: prune experts first, then channels and "
            "heads of the result"
        )
    return names


def _providers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in ("cpu", "cuda")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"providers are cpu and cuda, not {','.join(unknown)}")
    return names


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, colon, dims = text.rpartition(":")
    if not colon or not name:
        raise argparse.ArgumentTypeError(
            f"shape must be an input name, a colon and sizes, e.g. x:1x3x224x224; not {text!r}"
        )
    try:
        sizes = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        sizes = ()
    if not sizes or any(not 1 <= d <= MAX_DIM for d in sizes):
        raise argparse.ArgumentTypeError(
            f"sizes in {text!r} must be integers in 1..{MAX_DIM} separated by x, "
            "e.g. x:1x3x224x224"
        )
    return name, sizes


# -- commands --------------------------------------------------------------------------------


def _run_prune(args: argparse.Namespace) -> int:
    from graphprune.passes import IMPORTANCE
    from graphprune.pipeline import prune
    from graphprune.plan import Plan

    if set(args.scope) & set(EXPERT_SCOPES):
        return _run_prune_experts(args)
    if args.remove_blocks:
        return _run_remove_blocks(args)
    if args.criterion not in IMPORTANCE:
        raise BadInput(
            f"unknown criterion '{args.criterion}' (known: {', '.join(sorted(IMPORTANCE))})"
        )
    from graphprune.values import read_npz

    _check_prune_paths(args)
    plan = Plan.load(args.plan) if args.plan else None
    inputs = read_npz(args.inputs, "--inputs") if args.inputs else None
    result = prune(
        args.input,
        args.output,
        ratio=args.ratio,
        criterion=args.criterion,
        allocation=args.allocation,
        scopes=args.scope,
        round_to=args.round_to,
        plan=plan,
        verify=not args.no_verify,
        providers=args.providers,
        seed=args.seed,
        input_shapes=dict(args.shape),
        inputs=inputs,
        calib=_calibration_source(args),
        compensation=args.compensation,
        reconstruct=args.reconstruct,
        gram_budget=int(args.gram_budget * 2**30),
    )
    if args.plan_out and result.written:  # a failed prune writes nothing
        result.plan.save(args.plan_out)
    if args.report and result.written:
        from graphprune.diff import diff
        from graphprune.html import write_html

        write_html(diff(args.input, args.output, dict(args.shape)), args.report)
    if args.json:
        print(json.dumps(_prune_json(result), indent=1))
    else:
        _print_prune(result, args)
    return EXIT_OK if result.passed else EXIT_VERIFY


def _run_prune_experts(args: argparse.Namespace) -> int:
    """`prune --scope experts[,expert-mlp]`: whole experts (the -inf router oracle) and each
    expert's own intermediate channels (zero-then-prune)."""
    from graphprune.moe_prune import prune_experts
    from graphprune.values import read_npz

    _check_prune_paths(args)
    ratio = args.ratio if args.expert_ratio is None else args.expert_ratio
    inputs = read_npz(args.inputs, "--inputs") if args.inputs else None
    calib = read_npz(args.calib, "--calib") if args.calib else None
    _check_values(args.input, args.shape, inputs)
    _check_values(args.input, [], calib, "--calib")  # one batch of router inputs
    result = prune_experts(
        args.input,
        args.output,
        expert_ratio=ratio if "experts" in args.scope else 0.0,
        criterion=args.criterion,
        calib_inputs=calib,
        verify=not args.no_verify,
        providers=args.providers,
        seed=args.seed,
        input_shapes=dict(args.shape),
        inputs=inputs,
        expert_mlp_ratio=args.ratio if "expert-mlp" in args.scope else 0.0,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=1, default=str))
    else:
        from graphprune.report import table

        print(table(result.before, result.after))
        print("\n".join(result.lines()))
        print(f"wrote {args.output}" if result.written else f"not written ({args.output})")
    return EXIT_OK if result.passed else EXIT_VERIFY


def _run_remove_blocks(args: argparse.Namespace) -> int:
    """`prune --remove-blocks N`: COMP's coarse stage on its own (see passes/remove_blocks)."""
    from graphprune.block_prune import prune_blocks

    _check_prune_paths(args)
    calib = _calibration_source(args)
    _check_values(args.input, args.shape, calib=calib)
    result = prune_blocks(
        args.input,
        args.output,
        args.remove_blocks,
        calib,
        providers=args.providers,
        input_shapes=dict(args.shape),
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for block in result["removed"]:
            print(f"removed {block['kind']} block {block['id']} (1 - cos = {block['score']:.4f})")
        print(result["check"])
        print(f"wrote {args.output}" if result["written"] else f"not written ({args.output})")
    return EXIT_OK if result["passed"] else EXIT_VERIFY


def _check_prune_paths(args: argparse.Namespace) -> None:
    """Every output of `prune` against every file it reads and against each other, before
    anything runs (graphprune.outputs)."""
    outputs.check_paths(
        {
            outputs.MODEL_OUTPUT: args.output,
            "--plan-out": getattr(args, "plan_out", None),
            "--report": getattr(args, "report", None),
        },
        models={"the input model": args.input},
        inputs={
            "--plan": getattr(args, "plan", None),
            "--inputs": getattr(args, "inputs", None),
            "--calib": getattr(args, "calib", None),
            "--calib-text": getattr(args, "calib_text", None),
        },
    )


def _check_values(
    model: str,
    shapes: list[tuple[str, tuple[int, ...]]],
    feeds: dict | None = None,
    label: str = "--inputs",
    calib=None,
) -> None:
    """`--shape`, `--inputs`/`--calib` arrays against `model`'s declared inputs, before any
    session runs (graphprune.values; `prune` itself checks inside pipeline.prune)."""
    from graphprune import values

    if shapes or feeds is not None or calib is not None:
        values.check_values(values.signature(model), dict(shapes), feeds, label, calib)


def _prune_json(result) -> dict:
    return {
        "written": result.written,
        "passed": result.passed,
        "state": _verdict(result.checks),
        "groups": result.groups,
        "prunable_groups": result.prunable_groups,
        "pruned_groups": len(result.plan.groups),
        "before": result.before.as_dict(),
        "after": result.after.as_dict(),
        "checks": [c.as_dict() for c in result.checks],
        "seconds": result.seconds,
        "plan": asdict(result.plan),
        "calibration": result.calibration,
        "compensation": result.compensation,
        "peak_rss_bytes": result.peak_rss_bytes,
    }


def _print_prune(result, args) -> None:
    from graphprune.report import table

    print(
        f"groups: {result.groups} ({result.prunable_groups} prunable), "
        f"pruned: {len(result.plan.groups)}, criterion {result.plan.criterion}, "
        f"ratio {result.plan.ratio}, allocation {result.plan.allocation}"
    )
    print(table(result.before, result.after))
    if result.calibration:
        c = result.calibration
        print(
            f"calibration: {c['source']}, {c['samples']} samples in {c['batches']} batches, "
            f"{c['consumers']} layers, {c['passes']} pass(es), {c['seconds']:.2f} s"
            + (f", Gram matrices {c['gram_bytes'] / 2**20:.1f} MiB" if c["gram_bytes"] else "")
        )
    if result.compensation:
        print(_compensation_line(result.compensation))
    for check in result.checks:
        print(check.line())
    if result.written:
        print(f"wrote {args.output}")
    else:
        print(f"not written: verification {_verdict(result.checks)} ({args.output})")


def _verdict(checks) -> str:
    """One word for the oracle's checks: failed when any failed, else inconclusive when any
    could not judge (outputs dead at every input tried), else passed."""
    states = {check.state for check in checks}
    for verdict in ("failed", "inconclusive"):
        if verdict in states:
            return verdict
    return "passed"


def _compensation_line(moved: dict) -> str:
    """Worst output of the pruned model against the dense one, with and without compensation."""

    def worst(rows: list[dict]) -> str:
        row = max(rows, key=lambda r: r["max_abs"])
        cosine = "-" if row["cosine"] is None else f"{row['cosine']:.6f}"
        return f"max abs {row['max_abs']:.3e}, cosine {cosine}"

    return (
        f"compensation {'+'.join(moved['passes'])} ({moved['updated_weights']} weights, "
        f"{moved['bias_deltas']} biases, {moved['new_adds']} new Adds): pruned vs dense "
        f"{worst(moved['with'])}; without compensation {worst(moved['without'])}"
    )


def _run_inspect(args: argparse.Namespace) -> int:
    from graphprune.pipeline import analyze
    from graphprune.report import params_text

    analysis = analyze(args.input)
    report = inspect_report(analysis)
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    params = params_text(
        report["params"], report["params_by_dtype"], report["params_in_subgraphs"]
    )
    print(
        f"{args.input}: {params}, {len(report['groups'])} groups, "
        f"{report['prunable_groups']} prunable, "
        f"{report['prunable_params_share']:.1%} of parameters prunable"
    )
    print(f"{'group':<48}{'kind':<9}{'units':>7}{'spaces':>8}  status")
    for g in report["groups"]:
        status = "prunable" if g["prunable"] else "blocked: " + g["blocked"][0]
        status += "" if g["exact"] else f" ({NOT_EXACT_UNDER_ORACLE})"
        print(f"{g['id'][:47]:<48}{g['kind']:<9}{g['units']:>7}{g['spaces']:>8}  {status}")
    if report["barriers"]:
        print(
            "ops without a rule (barriers): "
            + ", ".join(f"{op} x{n}" for op, n in report["barriers"].items())
        )
    if report["layers"]:
        print(f"\n{'layer':<56}{'what':<13}{'size':>14}  prunable")
        for row in report["layers"]:
            size = (
                (
                    f"{row['heads']} heads"
                    + (f" / {row['kv_heads']} kv" if row.get("kv_heads") else "")
                )
                if row["what"] == "attention"
                else f"{row['width']}"
            )
            note = f" ({row['note']})" if "note" in row else ""
            print(f"{row['layer'][-55:]:<56}{row['what']:<13}{size:>14}  {row['prunable']}{note}")
    if report["experts"]:
        print(f"\n{'MoE layer':<40}{'experts':>8}{'top-k':>7}  {'form':<12}prunable")
        for row in report["experts"]:
            status = "yes" if row["prunable"] else f"no: {row['blocked']}"
            print(
                f"{row['name'][-39:]:<40}{row['experts']:>8}{row['top_k']:>7}  "
                f"{row['form']:<12}{status}"
            )
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from graphprune.values import read_npz
    from graphprune.verify import verify

    inputs = read_npz(args.inputs, "--inputs") if args.inputs else None
    for model in (args.a, args.b):
        _check_values(model, args.shape, inputs)
    report = verify(
        args.a, args.b, args.providers, inputs, dict(args.shape), args.rtol, args.atol, args.seed
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK if report.passed else EXIT_VERIFY


def _run_diff(args: argparse.Namespace) -> int:
    from graphprune.diff import diff
    from graphprune.html import write_html

    outputs.check_paths({"--html": args.html}, models={"model A": args.a, "model B": args.b})
    _check_values(args.a, args.shape)
    report = diff(args.a, args.b, dict(args.shape), bench=args.bench)
    if args.html:
        write_html(report, args.html)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return EXIT_OK


def _run_bench(args: argparse.Namespace) -> int:
    from graphprune.bench import bench

    _check_values(args.model, args.shape)
    results = [
        bench(
            args.model, provider, dict(args.shape), args.batch, args.warmup, args.runs, args.threads
        )
        for provider in args.providers
    ]
    if args.json:
        print(
            json.dumps({"model": args.model, "results": [r.as_dict() for r in results]}, indent=1)
        )
    else:
        for result in results:
            print(result.line())
    return EXIT_OK


def inspect_report(analysis) -> dict:
    """What `inspect` shows, as plain data."""
    from graphprune.report import count_params

    dep, constants = analysis.dep, analysis.dep.index.constants
    # the share is taken on the analysed (prepared) graph, whose tensor names the groups use,
    # with the same notion of a parameter as the counts of the model as loaded
    work = count_params(analysis.work)
    prunable_tensors = {s.tensor for g in dep.groups if g.prunable for s in g.roles}
    prunable = sum(constants.size(name) for name in work.counted & prunable_tensors)
    return {
        "params": analysis.original.params,
        "params_by_dtype": analysis.original.params_by_dtype,
        "params_in_subgraphs": analysis.original.params_in_subgraphs,
        "prunable_params_share": prunable / work.total if work.total else 0.0,
        "prunable_groups": sum(g.prunable for g in dep.groups),
        "groups": [
            {
                "id": g.id,
                "kind": g.kind,
                "units": g.n_units,
                "spaces": len(g.sizes),
                "constants": sorted(f"{s.tensor}:{s.axis}:{r.value}" for s, r in g.roles.items()),
                "prunable": g.prunable,
                "blocked": g.blocked,
                "exact": g.exact,
            }
            for g in dep.groups
        ],
        "barriers": dict(Counter(dep.missing_rules).most_common()),
        "layers": _transformer_layers(dep),
        "experts": _expert_layers(dep),
    }


def _expert_layers(dep) -> list[dict]:
    """Per MoE layer: experts, top-k, form, and whether experts can be removed."""
    from graphprune.moe import find_layers
    from graphprune.moe_prune import describe

    return [layer.as_dict() for layer in describe(find_layers(dep))]


def _transformer_layers(dep) -> list[dict]:
    """Per layer of a model with attention: heads and key/value heads, MLP width, hidden size
    (the residual width, blocked by the normalizations). Empty for models without attention."""
    if not any(g.kind in ("head", "kv-group") for g in dep.all_groups):
        return []
    rows = []
    for group in dep.all_groups:
        if group.kind in ("head", "kv-group"):
            heads, kv = dep.attention_counts(group)
            row = {"what": "attention", "heads": heads, "kv_heads": kv}
        elif group.kind == "hidden" or any(
            "normalizes" in r or "reduces over" in r for r in group.blocked
        ):
            # LayerNorm, or RMSNorm spelled out as Pow/ReduceMean: the residual width
            row = {"what": "hidden size", "width": group.n_units}
            if not group.exact:
                row |= {"exact": False, "note": NOT_EXACT_UNDER_ORACLE}
        elif len(group.roles) >= 2 and group.n_units >= 2:
            row = {"what": "mlp", "width": group.n_units}
        else:
            continue
        rows.append({"layer": _module(dep, group), **row, "prunable": group.prunable})
    return sorted(rows, key=lambda r: (r["layer"], r["what"]))


def _module(dep, group) -> str:
    """The module path a group's weights share: from weight names (dynamo keeps parameter
    names), else from the modules of the nodes reading them (TorchScript node names, dynamo's
    name-scope metadata)."""
    weights = sorted(s.tensor for s in group.roles)
    readers = sorted(
        _module_of(dep.index.node(p)) for w in weights for p in dep.index.consumers.get(w, [])
    )
    # character prefixes on purpose: these are dotted or slashed names, not file paths
    candidates = [commonprefix(names) for names in (weights, readers) if names]  # noqa: RUF071
    best = max(candidates, key=lambda c: c.count(".") + c.count("/"), default="")
    return best.rstrip("./_") or weights[0]


def _module_of(node) -> str:
    """The torch module a node came from: dynamo's name scopes, else the node's name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in ast.literal_eval(prop.value) if "." in s]
            if scopes:
                return scopes[-1]
    return node.name


if __name__ == "__main__":
    sys.exit(main())
