"""The command line: exit codes, one-line errors, plans, JSON, and that inputs are never touched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.cli import main
from graphprune.verify import compare, random_inputs, run
from tests.graphs import model, node, weight

X = {"x": (1, 3, 8, 8)}


def small_cnn(opset: int = 17) -> onnx.ModelProto:
    consts = {
        "c1.w": weight(8, 3, 3, 3),
        "c1.b": weight(8),
        "c2.w": weight(8, 8, 3, 3),
        "c2.b": weight(8),
        "fc.w": weight(8, 5),
    }
    nodes = [
        node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("GlobalAveragePool", ["r2"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("MatMul", ["f", "fc.w"], ["y"]),
    ]
    return model(nodes, X, ["y"], consts, opset=opset)


@pytest.fixture
def cnn_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_prune_writes_a_smaller_verified_model_and_leaves_the_input_alone(
    cnn_path, tmp_path, capsys
):
    before = digest(cnn_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(cnn_path), str(out), "--ratio", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "PASSED  zero-then-prune oracle on cpu" in text
    assert "SKIPPED" in text or "PASSED  zero-then-prune oracle on cuda" in text
    assert digest(cnn_path) == before
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    widths = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert widths["c1.w"] == (4, 3, 3, 3) and widths["c2.w"] == (4, 4, 3, 3)
    assert widths["fc.w"] == (4, 5)
    assert [i.name for i in pruned.graph.input] == ["x"]
    assert [o.name for o in pruned.graph.output] == ["y"]
    assert not list(tmp_path.glob(".graphprune-*"))  # no temporary left behind


def test_ratio_zero_reproduces_the_original_outputs(cnn_path, tmp_path):
    out = tmp_path / "same.onnx"
    assert main(["prune", str(cnn_path), str(out), "--ratio", "0", "--no-verify"]) == 0
    original, same = onnx.load(cnn_path), onnx.load(out)
    inputs = random_inputs(original, seed=3)
    checks = compare(run(original, inputs), run(same, inputs), rtol=0, atol=0)
    assert all(c.passed for c in checks)


def test_json_prints_one_document(cnn_path, tmp_path, capsys):
    assert main(["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["written"]
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert {g["group"] for g in report["plan"]["groups"]} == {"c1.w:0", "c2.w:0"}


def test_plan_replay_gives_the_same_model(cnn_path, tmp_path):
    plan, first, second = tmp_path / "plan.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert (
        main(
            [
                "prune",
                str(cnn_path),
                str(first),
                "--ratio",
                "0.25",
                "--criterion",
                "l1",
                "--plan-out",
                str(plan),
            ]
        )
        == 0
    )
    saved = json.loads(plan.read_text())
    assert saved["criterion"] == "l1" and all(len(g["removed"]) == 2 for g in saved["groups"])
    # replay ignores --ratio and --criterion: the plan decides
    assert (
        main(
            [
                "prune",
                str(cnn_path),
                str(second),
                "--plan",
                str(plan),
                "--ratio",
                "0.9",
                "--criterion",
                "random",
            ]
        )
        == 0
    )
    a, b = onnx.load(first), onnx.load(second)
    for ta, tb in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(ta), numpy_helper.to_array(tb))


def test_plan_for_another_model_is_refused(cnn_path, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert main(["prune", str(cnn_path), str(tmp_path / "a.onnx"), "--plan-out", str(plan)]) == 0
    data = json.loads(plan.read_text())
    data["model"] = "0" * 16
    plan.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["prune", str(cnn_path), str(tmp_path / "b.onnx"), "--plan", str(plan)]) == 2
    assert "another graph" in one_error_line(capsys)


def test_inspect_lists_groups_share_and_barriers(cnn_path, capsys):
    assert main(["inspect", str(cnn_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    prunable = {g["id"] for g in report["groups"] if g["prunable"]}
    assert prunable == {"c1.w:0", "c2.w:0"}
    assert 0.5 < report["prunable_params_share"] <= 1.0
    assert main(["inspect", str(cnn_path)]) == 0
    assert "prunable" in capsys.readouterr().out


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "not_onnx",
        "truncated",
        "missing",
        "opset",
        "same_path",
        "external_missing",
        "external_outside",
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, cnn_path, tmp_path, capsys):
    target = tmp_path / "out.onnx"
    if case == "not_onnx":
        source = write(tmp_path / "x.onnx", b"this is not a protobuf at all \xff\xfe")
    elif case == "truncated":
        source = write(tmp_path / "t.onnx", cnn_path.read_bytes()[:200])
    elif case == "missing":
        source = tmp_path / "nope.onnx"
    elif case == "opset":
        old = small_cnn()
        old.opset_import[0].version = 9
        source = tmp_path / "old.onnx"
        onnx.save(old, source)
    elif case == "same_path":
        source = target = cnn_path
    else:
        external = small_cnn()
        source = tmp_path / "ext" / "m.onnx"
        source.parent.mkdir()
        onnx.save(external, source, save_as_external_data=True, location="m.data", size_threshold=0)
        if case == "external_missing":
            (source.parent / "m.data").unlink()
        else:
            loaded = onnx.load(source, load_external_data=False)
            for tensor in loaded.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = "../../etc/passwd"
            onnx.save(loaded, source)
    before = digest(source) if source.exists() else None
    assert main(["prune", str(source), str(target)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("graphprune: error: ")
    expected = {
        "not_onnx": "not a valid ONNX model",
        "truncated": "not a valid ONNX model",
        "missing": "no such model file",
        "opset": "opset 9 is not supported",
        "same_path": "never overwrites its input",
        "external_missing": "external data file missing",
        "external_outside": "outside the model's folder",
    }[case]
    assert expected in line
    if before is not None:
        assert digest(source) == before


def test_external_data_model_prunes(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(
        small_cnn(), source, save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    assert main(["prune", str(source), str(tmp_path / "p.onnx")]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_weights_as_constant_nodes_prune_like_initializers(tmp_path, capsys):
    """paddle2onnx style: every weight is a Constant node."""
    made = small_cnn()
    constants = [
        onnx.helper.make_node("Constant", [], [t.name], value=t) for t in made.graph.initializer
    ]
    nodes = constants + list(made.graph.node)
    del made.graph.initializer[:]
    del made.graph.node[:]
    made.graph.node.extend(nodes)
    source = tmp_path / "const.onnx"
    onnx.save(made, source)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(source), str(out)]) == 0
    pruned = onnx.load(out)
    conv = next(n for n in pruned.graph.node if n.op_type == "Constant" and n.output[0] == "c1.w")
    assert tuple(conv.attribute[0].t.dims) == (4, 3, 3, 3)


def test_bad_usage_exits_2(cnn_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--ratio", "1.5"])
    assert stop.value.code == 2
    assert "ratio must be in [0, 1)" in one_error_line(capsys)
    assert main(["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--criterion", "nope"]) == 2
    assert "unknown criterion" in one_error_line(capsys)


def test_console_script_runs(cnn_path, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "graphprune.cli", "inspect", str(cnn_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "groups" in done.stdout


def test_symbolic_batch_stays_symbolic_and_runs_at_other_batch_sizes(tmp_path):
    made = small_cnn()
    for value in [*made.graph.input, *made.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    source, out = tmp_path / "dyn.onnx", tmp_path / "dyn.pruned.onnx"
    onnx.save(made, source)
    assert main(["prune", str(source), str(out), "--providers", "cpu"]) == 0
    pruned = onnx.load(out)
    for value in [*pruned.graph.input, *pruned.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outputs = run(pruned, random_inputs(pruned, shapes={"x": (3, 3, 8, 8)}))
    assert outputs["y"].shape == (3, 5)


def test_declared_output_shapes_are_kept_even_where_inference_knows_better(tmp_path):
    """TorchScript declares outputs like [Gemmoutput_dim_0, 1000] for a batch-1 model."""
    made = small_cnn()
    made.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "out_batch"
    source, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(made, source)
    assert main(["prune", str(source), str(out), "--providers", "cpu"]) == 0
    declared = onnx.load(out).graph.output[0].type.tensor_type.shape.dim
    assert declared[0].dim_param == "out_batch" and declared[1].dim_value == 5


# -- calibration data, data-driven criteria and compensation ------------------------------------


@pytest.mark.parametrize("criterion", ["fluctuation", "wanda"])
def test_a_criterion_that_needs_data_without_data_is_one_line_exit_2(
    criterion, cnn_path, tmp_path, capsys
):
    out = tmp_path / "o.onnx"
    assert main(["prune", str(cnn_path), str(out), "--criterion", criterion]) == 2
    line = one_error_line(capsys)
    assert f"criterion '{criterion}' needs calibration data" in line
    assert "--calib" in line and "--data-free" in line
    assert not out.exists()


def test_reconstruct_without_data_is_one_line_exit_2(cnn_path, tmp_path, capsys):
    assert main(["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--reconstruct"]) == 2
    assert "compensation reconstruct needs calibration data" in one_error_line(capsys)


@pytest.fixture
def calib_npz(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "cannot read calibration data"),
        ("wrong_key", "has keys ['image'] that are not model inputs"),
        ("wrong_shape", "expects 8 on axis 2"),
        ("two_sources", "not allowed with argument"),
    ],
)
def test_bad_calibration_data_is_one_line_exit_2(case, message, cnn_path, tmp_path, capsys):
    path = tmp_path / "c.npz"
    extra = []
    if case == "wrong_key":
        np.savez(path, image=np.zeros((2, 3, 8, 8), np.float32))
    elif case == "wrong_shape":
        np.savez(path, x=np.zeros((2, 3, 7, 8), np.float32))
    elif case == "two_sources":
        np.savez(path, x=np.zeros((2, 3, 8, 8), np.float32))
        extra = ["--data-free"]
    argv = ["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--criterion", "fluctuation"]
    try:
        code = main([*argv, "--calib", str(path), *extra])
    except SystemExit as stop:  # usage errors leave through argparse
        code = stop.code
    assert code == 2
    assert message in one_error_line(capsys)


def test_fluctuation_with_data_reports_calibration_and_compensation_in_valid_json(
    cnn_path, calib_npz, tmp_path, capsys
):
    from tests.test_commands import validate

    out = tmp_path / "o.onnx"
    argv = ["prune", str(cnn_path), str(out), "--criterion", "fluctuation", "--json"]
    assert main([*argv, "--calib", str(calib_npz), "--allocation", "adaptive"]) == 0
    document = json.loads(capsys.readouterr().out)
    validate(document, "prune.schema.json")
    assert document["calibration"]["source"] == f"npz:{calib_npz}"
    assert document["calibration"]["samples"] == 12  # static batch 1: 12 batches
    assert document["calibration"]["batches"] == 12 and document["calibration"]["gram_bytes"] == 0
    assert document["compensation"]["passes"] == ["bias"]
    assert document["plan"]["criterion"] == "fluctuation"
    assert document["plan"]["allocation"] == "adaptive"
    assert "calibrate" in document["seconds"] and document["peak_rss_bytes"] > 0
    with_, without = document["compensation"]["with"][0], document["compensation"]["without"][0]
    assert with_["name"] == without["name"] == "y"
    assert with_["max_abs"] != without["max_abs"]  # compensation did change the outputs


def test_data_free_reconstruct_and_no_compensation_in_text_output(cnn_path, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    argv = ["prune", str(cnn_path), str(out), "--criterion", "l2", "--data-free"]
    assert main([*argv, "--reconstruct", "--calib-samples", "8"]) == 0
    text = capsys.readouterr().out
    assert "calibration: data-free, 8 samples in 8 batches" in text
    assert "compensation reconstruct" in text and "PASSED  zero-then-prune oracle on cpu" in text
    argv = ["prune", str(cnn_path), str(out), "--criterion", "fluctuation", "--data-free"]
    assert main([*argv, "--compensation", "none", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["compensation"] is None and document["calibration"]["samples"] == 128


def test_an_unregistered_compensation_is_one_line_exit_2(cnn_path, tmp_path, capsys, monkeypatch):
    from graphprune.passes import COMPENSATION

    monkeypatch.delitem(COMPENSATION, "bias")
    argv = ["prune", str(cnn_path), str(tmp_path / "o.onnx"), "--criterion", "fluctuation"]
    assert main([*argv, "--data-free"]) == 2
    assert "compensation 'bias' is not registered" in one_error_line(capsys)


def test_a_replayed_fluctuation_plan_applies_the_same_compensation(
    cnn_path, calib_npz, tmp_path, capsys
):
    first, again, plan = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "plan.json"
    argv = ["prune", str(cnn_path), str(first), "--criterion", "fluctuation", "--quiet"]
    assert main([*argv, "--calib", str(calib_npz), "--plan-out", str(plan)]) == 0
    replay = ["prune", str(cnn_path), str(again), "--plan", str(plan), "--quiet"]
    assert main(replay) == 2  # the plan's criterion brings its compensation, which needs data
    assert "compensation bias needs calibration data" in one_error_line(capsys)
    assert main([*replay, "--calib", str(calib_npz)]) == 0
    weights = [
        {t.name: numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer}
        for p in (first, again)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        np.testing.assert_array_equal(weights[1][name], value)
