"""graphprune command line.

Exit codes: 0 success, 1 verification failed, 2 bad usage or bad input, 3 internal error.
Errors are one line on stderr; set GRAPHPRUNE_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections import Counter
from dataclasses import asdict
from os.path import commonprefix

from graphprune import progress
from graphprune.allocate import DEFAULT_SCOPES, SCOPES
from graphprune.errors import BadInput, GraphpruneError

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
NOT_EXACT_UNDER_ORACLE = "hidden scope: not exact under the oracle, normalization statistics change"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    progress.enable(not (args.quiet or args.json))
    try:
        return args.run(args)
    except GraphpruneError as err:
        print(f"graphprune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line, never a traceback, unless asked for
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"graphprune: internal error: {type(err).__name__}: {message} "
            "(set GRAPHPRUNE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse prints the whole usage)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
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
        type=int,
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
    prune.add_argument("--seed", type=int, default=0)
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
    verify.add_argument("--rtol", type=float, help="default 1e-4 (fp16 models: 1e-2)")
    verify.add_argument("--atol", type=float, help="default 1e-5 (fp16 models: 1e-3)")
    verify.add_argument("--seed", type=int, default=0)
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
    bench.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
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
        type=float,
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


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("ratio must be in [0, 1)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


EXPERT_SCOPES = ("experts", "expert-mlp")


def _scopes(text: str) -> tuple[str, ...]:
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
    name, _, dims = text.rpartition(":")
    try:
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like name:1x3x224x224, not {text}"
        ) from None


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
    from graphprune.verify import load_inputs

    plan = Plan.load(args.plan) if args.plan else None
    inputs = load_inputs(args.inputs) if args.inputs else None
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
    if args.plan_out:
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
    from graphprune.verify import load_inputs

    ratio = args.ratio if args.expert_ratio is None else args.expert_ratio
    inputs = load_inputs(args.inputs) if args.inputs else None
    calib = load_inputs(args.calib) if getattr(args, "calib", None) else None
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

    result = prune_blocks(
        args.input,
        args.output,
        args.remove_blocks,
        _calibration_source(args),
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


def _prune_json(result) -> dict:
    return {
        "written": result.written,
        "passed": result.passed,
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
        print(f"not written: verification failed ({args.output})")


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

    analysis = analyze(args.input)
    report = inspect_report(analysis)
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    print(
        f"{args.input}: {report['params']:,} parameters, {len(report['groups'])} groups, "
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
    from graphprune.verify import load_inputs, verify

    inputs = load_inputs(args.inputs) if args.inputs else None
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

    report = diff(args.a, args.b, dict(args.shape), bench=args.bench)
    if args.html:
        write_html(report, args.html)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return EXIT_OK


def _run_bench(args: argparse.Namespace) -> int:
    from graphprune.bench import bench

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
    dep, index = analysis.dep, analysis.dep.index
    constants = index.constants
    float_constants = {name: constants.size(name) for name in constants if constants.is_float(name)}
    prunable_tensors = {s.tensor for g in dep.groups if g.prunable for s in g.roles}
    total = sum(float_constants.values())
    prunable = sum(n for name, n in float_constants.items() if name in prunable_tensors)
    return {
        "params": total,
        "prunable_params_share": prunable / total if total else 0.0,
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
