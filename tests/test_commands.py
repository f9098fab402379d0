"""`verify` and `bench` behave as documented, and every --json document matches its schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.cli import main
from tests.test_cli import small_cnn

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.fixture
def models(tmp_path):
    """(dense, same model re-saved, perturbed copy, pruned copy) paths."""
    dense, same, perturbed, pruned = (tmp_path / f"{n}.onnx" for n in ("a", "b", "c", "p"))
    made = small_cnn()
    onnx.save(made, dense)
    onnx.save(made, same)
    changed = onnx.ModelProto()
    changed.CopyFrom(made)
    fc = next(t for t in changed.graph.initializer if t.name == "fc.w")
    fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc) * 1.01, "fc.w"))
    onnx.save(changed, perturbed)
    assert main(["prune", str(dense), str(pruned), "--quiet"]) == 0
    return dense, same, perturbed, pruned


def validate(document: dict, schema_name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry, Resource

    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / schema_name).read_text())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(document)


def test_verify_passes_equivalent_models_and_fails_a_perturbed_one(models, capsys):
    dense, same, perturbed, _ = models
    assert main(["verify", str(dense), str(same)]) == 0
    out = capsys.readouterr().out
    assert "PASSED | cpu (A vs B) | output 'y'" in out and "cosine 1.000000" in out
    assert main(["verify", str(dense), str(perturbed)]) == 1
    out = capsys.readouterr().out
    assert "FAILED | cpu (A vs B) | output 'y'" in out
    assert out.strip().splitlines()[-1].startswith("FAILED |")


def test_verify_uses_given_inputs_and_refuses_missing_ones(models, tmp_path, capsys):
    dense, same, _, _ = models
    data = tmp_path / "in.npz"
    np.savez(data, x=np.ones((1, 3, 8, 8), np.float32))
    assert main(["verify", str(dense), str(same), "--inputs", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shapes"] == {"x": [1, 3, 8, 8]}
    np.savez(data, other=np.ones(3, np.float32))
    assert main(["verify", str(dense), str(same), "--inputs", str(data)]) == 2
    assert "needs inputs ['x']" in capsys.readouterr().err


def test_verify_reports_cosine_and_topk_for_a_pruned_classifier(models):
    from graphprune.verify import verify

    dense, _, _, pruned = models
    report = verify(dense, pruned, providers=("cpu",))
    output = report.checks[0].outputs[0]
    assert not report.passed
    assert -1.0 <= output.cosine < 1.0 and 0.0 <= output.top1 <= 1.0 and output.top5 is not None


def test_fp16_models_get_fp16_tolerances(tmp_path):
    from onnx import TensorProto, helper

    from graphprune.verify import verify

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
    )
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = verify(path, path, providers=("cpu",))
    assert (report.rtol, report.atol) == (1e-2, 1e-3) and report.passed


def test_bench_times_a_model_and_reports_memory(models, capsys):
    dense, *_ = models
    assert main(["bench", str(dense), "--runs", "5", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["provider"] == "cpu" and result["runs"] == 5 and result["batch"] == 1
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["throughput"] == pytest.approx(1e3 / result["median_ms"])
    assert result["peak_rss_bytes"] > 10 * 2**20


def test_bench_batch_needs_a_dynamic_batch(models, capsys):
    dense, *_ = models
    assert main(["bench", str(dense), "--batch", "4", "--runs", "2"]) == 2
    assert "static batch of 1" in capsys.readouterr().err


def test_every_json_document_matches_its_schema(models, tmp_path, capsys):
    dense, same, _, _ = models
    runs = {
        "prune.schema.json": ["prune", str(dense), str(tmp_path / "o.onnx"), "--json"],
        "inspect.schema.json": ["inspect", str(dense), "--json"],
        "verify.schema.json": ["verify", str(dense), str(same), "--json"],
        "bench.schema.json": ["bench", str(dense), "--runs", "3", "--warmup", "1", "--json"],
    }
    for schema, argv in runs.items():
        assert main(argv) == 0
        validate(json.loads(capsys.readouterr().out), schema)


def test_diff_command_text_json_and_html(models, tmp_path, capsys):
    dense, same, _, pruned = models
    assert main(["diff", str(dense), str(same)]) == 0
    assert "paired 3 of 3 layers" in capsys.readouterr().out
    page = tmp_path / "diff.html"
    assert main(["diff", str(dense), str(pruned), "--json", "--html", str(page)]) == 0
    document = json.loads(capsys.readouterr().out)
    validate(document, "diff.schema.json")
    assert {row["status"] for row in document["layers"]} == {"pruned"}
    assert page.read_text().lower().startswith("<!doctype html>")


def test_prune_writes_its_html_report(models, tmp_path, capsys):
    dense, *_ = models
    out, page = tmp_path / "o.onnx", tmp_path / "report.html"
    assert main(["prune", str(dense), str(out), "--report", str(page), "--quiet"]) == 0
    html = page.read_text()
    assert f"{onnx_params(out):,}" in html and "http://" not in html


def onnx_params(path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer)
