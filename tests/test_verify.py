"""The oracle can fail: a rewrite that keeps the wrong channels or forgets a reader is caught,
with or without the fp32-noise judgement."""

from __future__ import annotations

import numpy as np
import pytest
from graphprune.passes.slice_channels import slice_channels

from graphprune.verify import Check, OutputCheck, compare, oracle, random_inputs
from tests.graphs import analyze
from tests.test_cli import small_cnn


def test_removing_other_channels_than_the_plan_says_fails_the_oracle():
    work, dep = analyze(small_cnn())
    planned = {"c1.w:0": np.array([0, 1, 2, 3])}
    wrong = slice_channels(work, dep, {"c1.w:0": np.array([4, 5, 6, 7])})
    checks = oracle(work, wrong, dep, planned, random_inputs(work, 0), ("cpu",))
    assert not checks[0].passed
    assert checks[0].outputs[0].noise is not None  # the noise was measured, and is far below
    assert checks[0].outputs[0].max_abs > 100 * checks[0].outputs[0].noise
    assert checks[0].line().startswith("FAILED")


def test_the_right_rewrite_passes_without_measuring_noise():
    work, dep = analyze(small_cnn())
    removals = {"c1.w:0": np.array([0, 1, 2, 3]), "c2.w:0": np.array([1, 3])}
    pruned = slice_channels(work, dep, removals)
    checks = oracle(work, pruned, dep, removals, random_inputs(work, 0), ("cpu", "cuda"))
    assert checks[0].passed and checks[0].outputs[0].noise is None
    assert checks[1].passed  # CUDA: compared when present, reported as skipped otherwise


def test_compare_scales_atol_with_the_output_magnitude_at_every_scale():
    small = {"y": np.array([1e-3, 0.5], np.float32)}
    assert not compare(small, {"y": small["y"] + 2e-5})[0].passed
    large = {"y": np.array([1e-3, 40.0], np.float32)}
    assert compare(large, {"y": large["y"] + np.array([3e-5, 0], np.float32)})[0].passed
    assert not compare(large, {"y": large["y"] + np.array([1e-3, 0], np.float32)})[0].passed
    # below 1 there is no absolute floor: 1e-6 on logits of 2e-7 is five times the output
    tiny = {"y": np.array([[1e-7, 2e-7, -1e-7]], np.float32)}
    assert not compare(tiny, {"y": tiny["y"] + np.float32(1e-6)})[0].passed
    assert compare(tiny, {"y": tiny["y"] * np.float32(1 + 1e-6)})[0].passed


def test_cosine_and_top1_hold_under_tolerances_loosened_by_hand():
    logits = {"y": np.array([[10.0, 9.5, 1.0]] + [[3.0, 0.0, -3.0]] * 200, np.float32)}
    negated = {"y": -logits["y"]}
    [check] = compare(logits, negated, rtol=0, atol=2.0)  # elementwise: |d| <= 2 * scale
    assert not check.passed and check.cosine == pytest.approx(-1.0)
    swapped = {"y": logits["y"].copy()}
    swapped["y"][0, :2] = [9.5, 10.0]  # row 0's top two trade places, within rtol 6%
    [check] = compare(logits, swapped, rtol=0.06, atol=0)
    assert check.cosine > 1 - 1e-4 and check.top1 == pytest.approx(200 / 201)
    assert not check.passed
    assert compare(logits, logits, rtol=0.06, atol=0)[0].passed


def test_compare_does_not_judge_dead_references():
    from graphprune.verify import dead_reason

    for dead, why in (
        (np.zeros((2, 3), np.float32), "all zero"),
        (np.full((2, 3), 7.0, np.float32), "constant (7.0)"),
        (np.array([1.0, np.nan], np.float32), "not finite (NaN/inf)"),
        (np.zeros((0, 3), np.float32), "empty"),
    ):
        [check] = compare({"y": dead}, {"y": dead.copy()})
        assert check.dead == why and not check.passed
        assert not Check("oracle", "cpu", [check], inconclusive="dead").passed
    assert dead_reason(np.array([3], np.int64)) == ""  # one class index is data
    assert dead_reason(np.array([[0.1, 0.2]], np.float32)) == ""


def test_a_shape_mismatch_fails():
    checks = compare({"y": np.zeros((1, 4))}, {"y": np.zeros((1, 3))})
    assert not checks[0].passed
    assert not Check("oracle", "cpu", [OutputCheck("y", 1.0, 1.0, False)]).passed


def test_one_symbol_one_size_across_inputs():
    from onnx import TensorProto, helper

    from graphprune.verify import random_inputs

    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "mask"], ["y"])], "g", [ids, mask], [out]
    )
    feeds = random_inputs(helper.make_model(graph), shapes={"ids": (3, 7)})
    assert feeds["ids"].shape == feeds["mask"].shape == (3, 7)
    assert feeds["ids"].dtype == np.int64 and 0 <= feeds["ids"].min() <= feeds["ids"].max() < 10


def test_prune_uses_given_inputs_for_its_oracle(tmp_path, capsys):
    import onnx

    from graphprune.cli import main

    source, data = tmp_path / "m.onnx", tmp_path / "in.npz"
    onnx.save(small_cnn(), source)
    np.savez(data, x=np.full((1, 3, 8, 8), 0.5, np.float32))
    assert (
        main(
            [
                "prune",
                str(source),
                str(tmp_path / "o.onnx"),
                "--inputs",
                str(data),
                "--json",
                "--providers",
                "cpu",
            ]
        )
        == 0
    )
    assert '"passed": true' in capsys.readouterr().out
    np.savez(data, wrong=np.ones(2, np.float32))
    assert main(["prune", str(source), str(tmp_path / "o2.onnx"), "--inputs", str(data)]) == 2
    assert "needs inputs ['x']" in capsys.readouterr().err


W = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)


def _cancelling(big: float):
    """y = (x * big + W) - x * big: W in exact arithmetic; float32's cancellation loses about
    big * 6e-8 of W, float64's about big * 1e-16."""
    from tests.graphs import model, node

    consts = {"big": np.array(big, np.float32), "w": W}
    nodes = [
        node("Mul", ["x", "big"], ["xb"]),
        node("Add", ["xb", "w"], ["s"]),
        node("Sub", ["s", "xb"], ["y"]),
    ]
    return model(nodes, {"x": (4, 8)}, ["y"], consts)


def _plain(shift: float):
    """y = x * 0 + W + shift."""
    from tests.graphs import model, node

    consts = {"w": W, "zero": np.array(0.0, np.float32), "shift": np.array(shift, np.float32)}
    nodes = [
        node("Mul", ["x", "zero"], ["x0"]),
        node("Add", ["x0", "w"], ["s"]),
        node("Add", ["s", "shift"], ["y"]),
    ]
    return model(nodes, {"x": (4, 8)}, ["y"], consts)


def test_float64_decides_a_round_off_failure_and_still_fails_a_wrong_model():
    from graphprune.verify import _judge_in_float64, run

    reference = _cancelling(1e4)  # float32 loses ~6e-4 of W here: past rtol 1e-4
    inputs = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 10}
    for shift, exact in ((0.0, True), (1e-3, False)):
        candidate = _plain(shift)
        check = Check("zero-then-prune oracle", "cpu")
        check.outputs = compare(run(reference, inputs), run(candidate, inputs))
        assert not check.passed  # float32 cannot tell
        _judge_in_float64(check, reference, candidate, inputs)
        gap = check.outputs[0].fp64_gap
        assert gap is not None
        assert check.passed == exact
        assert (gap < 1e-9) if exact else (gap > 1e-4)


def test_a_pruned_model_that_does_not_run_fails_the_oracle_instead_of_raising():
    from onnx import numpy_helper

    work, dep = analyze(small_cnn())
    removals = {"c1.w:0": np.array([0, 1, 2, 3])}
    broken = slice_channels(work, dep, removals)
    for tensor in broken.graph.initializer:  # c2 reads 4 channels again: its input has 4, not 2
        if tensor.name == "c2.w":
            wide = numpy_helper.to_array(tensor)[:, :2]
            tensor.CopyFrom(numpy_helper.from_array(wide, "c2.w"))
    [check] = oracle(work, broken, dep, removals, random_inputs(work, 0), ("cpu",))
    assert not check.passed
    assert check.line().startswith("FAILED") and "'*'" in check.line()


def test_verify_api_refuses_a_shape_for_an_input_the_model_does_not_have(tmp_path):
    """Python callers get the CLI's value checks, before any session runs."""
    import onnx

    from graphprune.errors import BadInput
    from graphprune.verify import verify

    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), str(path))
    assert verify(path, path, ("cpu",)).passed
    with pytest.raises(BadInput, match="nope"):
        verify(path, path, ("cpu",), input_shapes={"nope": (1, 3, 8, 8)})
