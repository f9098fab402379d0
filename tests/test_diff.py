"""`graphprune.diff`: a model against itself, known prunes (exact channels per layer), matching
across renamed and reordered graphs and across exporters, bypassed and removed layers,
unrelated models, and the JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphprune.bench
from graphprune.diff import diff
from graphprune.errors import BadInput
from graphprune.pipeline import analyze, prune
from tests.graphs import model, node, positive, weight
from tests.test_cli import small_cnn

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "diff.schema.json"


# --------------------------------------------------------------------------- helpers


def save(made: onnx.ModelProto, path: Path) -> Path:
    onnx.save(made, path)
    return path


def pruned_pair(source: Path, tmp: Path, ratio: float = 0.5, **kwargs):
    """(source, pruned path, plan, widths): `widths` maps (tensor, axis) of the source's prepared
    graph to the size the plan leaves on it, for every space of every pruned group."""
    destination = tmp / (source.stem + ".pruned.onnx")
    result = prune(source, destination, ratio=ratio, providers=("cpu",), **kwargs)
    assert result.written
    return source, destination, result, kept_widths(source, result.plan)


def kept_widths(source: Path, plan) -> dict[tuple[str, int], int]:
    dep = analyze(source).dep
    widths = {}
    for group_id, units in plan.removals(dep).items():
        group = dep.group(group_id)
        for space, labels in group.labels.items():
            widths[(space.tensor, space.axis)] = int((~np.isin(labels, units)).sum())
    return widths


def weight_axes(op: str) -> tuple[int, int]:
    """(in axis, out axis) of the weight of a layer in these test models."""
    return {"Conv": (1, 0), "Gemm": (1, 0), "MatMul": (0, 1)}[op]


def expected_in_out(row: dict, widths: dict) -> tuple[int, int]:
    """What B's in/out must be for the A layer of `row`, from the plan's kept widths."""
    a = row["a"]
    in_axis, out_axis = weight_axes(row["op"])
    return (
        widths.get((a["weight"], in_axis), a["in"]),
        widths.get((a["weight"], out_axis), a["out"]),
    )


def rename_everything(source: Path, target: Path, keep_io: bool = False) -> Path:
    """A copy whose every node, initializer and tensor (graph inputs and outputs too, unless
    `keep_io`) has a new meaningless name: nothing but structure is left to match by."""
    made = onnx.load(str(source))
    graph = made.graph
    io = {v.name for v in [*graph.input, *graph.output]} if keep_io else set()
    names: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in io:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for k, n in enumerate(graph.node):
        n.name = f"renamed_{k}"
        n.input[:] = [new(i) for i in n.input]
        n.output[:] = [new(o) for o in n.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = new(value.name)
    onnx.checker.check_model(made)
    onnx.save(made, target)
    return target


def hoist_pointwise_convs(source: Path, target: Path) -> Path:
    """A copy where every 1x1 Conv (ResNet's downsample) moves to just after the producer of its
    input: still topologically sorted, but layer order differs from the source."""
    made = onnx.load(str(source))
    graph = made.graph
    kernels = {t.name: list(t.dims[2:]) for t in graph.initializer}
    nodes = list(graph.node)
    for n in list(nodes):
        if n.op_type == "Conv" and kernels.get(n.input[1]) == [1, 1]:
            nodes.remove(n)
            k = next(i for i, p in enumerate(nodes) if n.input[0] in p.output)
            nodes.insert(k + 1, n)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(made)
    onnx.save(made, target)
    return target


def validator():
    """A function that raises ValueError on a document the schema refuses: jsonschema's
    Draft 2020-12 validator when installed, else the small one below."""
    schema = json.loads(SCHEMA.read_text())
    try:
        import jsonschema
    except ImportError:
        return lambda doc: _validate(doc, schema, schema, "$")
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator(schema)

    def validate(doc) -> None:
        error = jsonschema.exceptions.best_match(checker.iter_errors(doc))
        if error is not None:
            raise ValueError(f"{list(error.absolute_path)}: {error.message}")

    return validate


TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def _is(value, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[kind])


def _validate(doc, schema: dict, root: dict, where: str) -> None:
    """The subset of JSON Schema that diff.schema.json uses; raises ValueError."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        _validate(doc, target, root, where)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(doc, k) for k in kinds):
            raise ValueError(f"{where}: {doc!r} is not {kinds}")
    if "const" in schema and doc != schema["const"]:
        raise ValueError(f"{where}: {doc!r} != {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        raise ValueError(f"{where}: {doc!r} not in {schema['enum']}")
    if "minimum" in schema and _is(doc, "number") and doc < schema["minimum"]:
        raise ValueError(f"{where}: {doc} < {schema['minimum']}")
    if "oneOf" in schema:
        passed = sum(_passes(doc, s, root, where) for s in schema["oneOf"])
        if passed != 1:
            raise ValueError(f"{where}: {passed} of oneOf match")
    for rule in schema.get("allOf", []):
        if "if" in rule and _passes(doc, rule["if"], root, where):
            _validate(doc, rule["then"], root, where)
    if isinstance(doc, dict):
        _validate_object(doc, schema, root, where)
    if isinstance(doc, list) and "items" in schema:
        for k, item in enumerate(doc):
            _validate(item, schema["items"], root, f"{where}[{k}]")


def _validate_object(doc: dict, schema: dict, root: dict, where: str) -> None:
    for key in schema.get("required", []):
        if key not in doc:
            raise ValueError(f"{where}: missing {key!r}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in doc.items():
        if key in properties:
            _validate(value, properties[key], root, f"{where}.{key}")
        elif extra is False:
            raise ValueError(f"{where}: unexpected {key!r}")
        elif isinstance(extra, dict):
            _validate(value, extra, root, f"{where}.{key}")


def _passes(doc, schema: dict, root: dict, where: str) -> bool:
    try:
        _validate(doc, schema, root, where)
    except ValueError:
        return False
    return True


def as_json(report) -> dict:
    """`as_dict()` through a JSON round trip: it must be plain JSON data."""
    return json.loads(json.dumps(report.as_dict(), allow_nan=False))


def rows_with(data: dict, status: str) -> list[dict]:
    return [row for row in data["layers"] if row["status"] == status]


def zoo_path(name: str, exporter: str) -> Path:
    from models.zoo import ZOO, export

    if not ZOO[name].available():
        pytest.skip(f"{name} needs {', '.join(ZOO[name].missing_modules())}")
    return Path(export(name, exporter))


@pytest.fixture(scope="module")
def cnn_prune(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    return pruned_pair(save(small_cnn(), tmp / "cnn.onnx"), tmp)


@pytest.fixture(scope="module")
def resnet_prune(tmp_path_factory):
    source = zoo_path("resnet18", "dynamo")
    return pruned_pair(source, tmp_path_factory.mktemp("resnet18"))


# --------------------------------------------------------------------------- itself


def assert_unchanged(data: dict) -> None:
    assert data["layers"] and all(row["status"] == "same" for row in data["layers"])
    assert all(row["kept_ratio"] == 1.0 for row in data["layers"])
    assert all(row["matched_by"] == "weight" for row in data["layers"])
    for key in ("params", "macs", "bytes", "nodes", "layers"):
        assert data["delta"][key] == 0
        assert data["delta"][f"{key}_ratio"] == 1.0
    assert data["delta"]["ops"] == {} and data["delta"]["macs_by_op"] == {}
    assert not data["signatures"]["differ"]
    assert data["matching"]["unmatched_a"] == data["matching"]["unmatched_b"] == 0
    assert data["matching"]["not_matched"] == []
    assert all(
        b["params_a"] == b["params_b"] and b["macs_a"] == b["macs_b"] for b in data["blocks"]
    )


def test_a_model_against_itself_shows_no_change(tmp_path):
    path = save(small_cnn(), tmp_path / "cnn.onnx")
    data = as_json(diff(path, path))
    assert_unchanged(data)
    assert [(r["a"]["name"], r["a"]["in"], r["a"]["out"]) for r in data["layers"]] == [
        ("c1", 3, 8),
        ("c2", 8, 8),
        ("y", 8, 5),
    ]


@pytest.mark.zoo
def test_a_zoo_model_against_itself_shows_no_change():
    path = zoo_path("resnet18", "dynamo")
    data = as_json(diff(path, path))
    assert_unchanged(data)
    assert data["a"]["layers"] == 21  # 20 convs (BatchNorm folded) and the classifier
    assert data["block_grouping"] == "name"
    assert [b["name"] for b in data["blocks"]][:3] == ["conv1", "layer1.0", "layer1.1"]


# --------------------------------------------------------------------------- known prunes


def assert_matches_plan(data: dict, plan, widths: dict) -> None:
    """Every pruned group's anchor layer keeps exactly units - removed out channels, and every
    layer's in and out channels in B are what the plan leaves on its weight's axes."""
    by_weight = {row["a"]["weight"]: row for row in data["layers"] if row["a"]}
    anchors = 0
    for entry in plan.groups:
        tensor, axis = entry.group.rsplit(":", 1)
        row = by_weight.get(tensor)
        if row is None or weight_axes(row["op"])[1] != int(axis):
            continue
        anchors += 1
        assert row["b"]["out"] == entry.units - len(entry.removed), row
    assert anchors, "no pruned group is anchored on a layer's output axis"
    for row in data["layers"]:
        assert row["status"] in ("pruned", "same"), row
        assert (row["b"]["in"], row["b"]["out"]) == expected_in_out(row, widths), row
        assert row["kept_ratio"] == pytest.approx(row["b"]["out"] / row["a"]["out"])


def test_known_prune_reports_exactly_the_removed_channels(cnn_prune):
    source, pruned, result, widths = cnn_prune
    data = as_json(diff(source, pruned))
    assert_matches_plan(data, result.plan, widths)
    kept = {g.group: g.units - len(g.removed) for g in result.plan.groups}
    c1, c2, fc = data["layers"]
    assert (c1["b"]["in"], c1["b"]["out"]) == (3, kept["c1.w:0"])
    assert (c2["b"]["in"], c2["b"]["out"]) == (kept["c1.w:0"], kept["c2.w:0"])
    assert (fc["b"]["in"], fc["b"]["out"]) == (kept["c2.w:0"], 5)
    # the same MACs and parameters as the pipeline reports
    assert (data["a"]["macs"], data["b"]["macs"]) == (result.before.macs, result.after.macs)
    assert (data["a"]["params"], data["b"]["params"]) == (result.before.params, result.after.params)
    assert data["b"]["bytes"] == pruned.stat().st_size
    assert data["delta"]["params"] == result.after.params - result.before.params


@pytest.mark.zoo
def test_known_zoo_prune_reports_exactly_the_removed_channels(resnet_prune):
    source, pruned, result, widths = resnet_prune
    data = as_json(diff(source, pruned))
    assert_matches_plan(data, result.plan, widths)
    assert all(row["matched_by"] == "weight" for row in data["layers"])
    assert (data["a"]["macs"], data["b"]["macs"]) == (result.before.macs, result.after.macs)
    assert data["a"]["macs_by_op"]["Conv"] + data["a"]["macs_by_op"]["Gemm"] == data["a"]["macs"]
    blocks = {b["name"]: b for b in data["blocks"]}
    assert sum(b["params_b"] for b in blocks.values()) < sum(b["params_a"] for b in blocks.values())


# --------------------------------------------------------------------------- names changed


def test_layers_pair_by_position_when_every_name_changed(cnn_prune, tmp_path):
    source, pruned, result, widths = cnn_prune
    renamed = rename_everything(pruned, tmp_path / "renamed.onnx")
    data = as_json(diff(source, renamed))
    assert data["matching"]["by"]["weight"] == data["matching"]["by"]["name"] == 0
    assert data["matching"]["matched"] == 3
    assert_matches_plan(data, result.plan, widths)
    assert data["signatures"]["differ"]  # the graph input and output were renamed too
    assert any("share no weight or node names" in note for note in data["notes"])


@pytest.mark.zoo
def test_zoo_layers_pair_when_renamed_and_reordered(resnet_prune, tmp_path):
    source, pruned, result, widths = resnet_prune
    renamed = rename_everything(pruned, tmp_path / "renamed.onnx")
    for candidate in (renamed, hoist_pointwise_convs(renamed, tmp_path / "reordered.onnx")):
        data = as_json(diff(source, candidate))
        assert data["matching"]["matched"] == 21, data["matching"]["summary"]
        assert data["matching"]["by"]["weight"] == data["matching"]["by"]["name"] == 0
        assert_matches_plan(data, result.plan, widths)
    assert data["matching"]["by"]["neighbours"] == 3  # the three downsample convs moved


@pytest.mark.zoo
def test_torchscript_export_pairs_with_a_pruned_dynamo_export(resnet_prune):
    """Other exporter, other names (onnx::Conv_193 vs layer1.0.conv1.weight): every layer
    pairs with the same module, and B's widths are the plan's."""
    _, pruned, _, widths = resnet_prune
    data = as_json(diff(zoo_path("resnet18", "torchscript"), pruned))
    assert data["matching"]["matched"] == 21
    for row in data["layers"]:
        assert row["status"] == "pruned"
        assert row["a"]["module"] == row["b"]["module"]  # '/layer1/layer1.0/conv1/Conv'
        in_axis, out_axis = weight_axes(row["op"])
        b = row["b"]
        assert b["in"] == widths.get((b["weight"], in_axis), row["a"]["in"])
        assert b["out"] == widths.get((b["weight"], out_axis), row["a"]["out"])


def test_diff_read_backwards_pairs_every_layer_as_resized(cnn_prune, tmp_path):
    source, pruned, _, _ = cnn_prune
    renamed = rename_everything(source, tmp_path / "original-renamed.onnx", keep_io=True)
    data = as_json(diff(pruned, renamed))
    assert data["matching"]["matched"] == 3
    assert {row["status"] for row in data["layers"]} == {"resized"}
    assert data["delta"]["params"] > 0


# --------------------------------------------------------------------------- bypassed, removed


def residual(variant: str) -> onnx.ModelProto:
    """x → c1 → c2 → (+ c4(c1)) → c3; `skip_c2` replaces c2 by its input, `drop_c4` removes
    the c4 branch."""
    consts = {f"c{i}.w": weight(8, 8, 3, 3) for i in (1, 2, 3, 4)}
    pads = [1, 1, 1, 1]
    nodes = [node("Conv", ["x", "c1.w"], ["c1"], pads=pads), node("Relu", ["c1"], ["r1"])]
    if variant == "skip_c2":
        nodes.append(node("Identity", ["r1"], ["r2"]))
        del consts["c2.w"]
    else:
        nodes += [node("Conv", ["r1", "c2.w"], ["c2"], pads=pads), node("Relu", ["c2"], ["r2"])]
    if variant == "drop_c4":
        nodes.append(node("Identity", ["r2"], ["s"]))
        del consts["c4.w"]
    else:
        nodes += [node("Conv", ["r1", "c4.w"], ["c4"], pads=pads), node("Add", ["r2", "c4"], ["s"])]
    nodes.append(node("Conv", ["s", "c3.w"], ["y"], pads=pads))
    return model(nodes, {"x": (1, 8, 8, 8)}, ["y"], consts)


def test_a_layer_whose_output_is_replaced_by_its_input_is_bypassed(tmp_path):
    a = save(residual("full"), tmp_path / "full.onnx")
    b = save(residual("skip_c2"), tmp_path / "skip.onnx")
    data = as_json(diff(a, b))
    statuses = {row["a"]["name"]: row["status"] for row in data["layers"]}
    assert statuses == {"c1": "same", "c2": "bypassed", "c4": "same", "y": "same"}
    (bypassed,) = rows_with(data, "bypassed")
    assert bypassed["b"] is None and bypassed["kept_ratio"] == 0.0
    assert "c1 feeds y directly" in bypassed["reason"]
    assert data["matching"]["not_matched"][0]["status"] == "bypassed"


def test_a_removed_branch_is_removed_not_bypassed(tmp_path):
    a = save(residual("full"), tmp_path / "full.onnx")
    b = save(residual("drop_c4"), tmp_path / "drop.onnx")
    data = as_json(diff(a, b))
    statuses = {row["a"]["name"]: row["status"] for row in data["layers"]}
    assert statuses == {"c1": "same", "c2": "same", "c4": "removed", "y": "same"}
    assert data["delta"]["layers"] == -1 and data["delta"]["ops"] == {
        "Add": -1,
        "Conv": -1,
        "Identity": 1,
    }


def test_a_layer_only_in_b_is_added(tmp_path):
    a = save(residual("drop_c4"), tmp_path / "drop.onnx")
    b = save(residual("full"), tmp_path / "full.onnx")
    data = as_json(diff(a, b))
    (added,) = rows_with(data, "added")
    assert added["a"] is None and added["b"]["name"] == "c4"
    assert [row["b"]["name"] for row in data["layers"]] == ["c1", "c2", "c4", "y"]


# --------------------------------------------------------------------------- unrelated


@pytest.mark.zoo
def test_unrelated_models_say_what_could_not_be_matched(tmp_path):
    cnn = save(small_cnn(), tmp_path / "cnn.onnx")
    resnet = zoo_path("resnet18", "torchscript")
    for a, b in ((cnn, resnet), (resnet, cnn)):
        data = as_json(diff(a, b))
        matching = data["matching"]
        assert matching["unmatched_a"] + matching["unmatched_b"] >= 18
        assert len(matching["not_matched"]) == matching["unmatched_a"] + matching["unmatched_b"]
        assert all(entry["reason"] for entry in matching["not_matched"])
        assert "left unpaired" in matching["summary"]
        assert data["signatures"]["differ"]
        validator()(data)
    conv1 = next(r for r in data["layers"] if r["a"] and r["a"]["name"] == "/conv1/Conv")
    assert conv1["b"] is None
    assert "no Conv in B has the same kernel 7x7, strides 2x2" in conv1["reason"]


def test_models_without_layers_in_common_still_diff(tmp_path):
    linear = model([node("MatMul", ["x", "w"], ["y"])], {"x": (2, 4)}, ["y"], {"w": weight(4, 3)})
    data = as_json(diff(save(small_cnn(), tmp_path / "a.onnx"), save(linear, tmp_path / "b.onnx")))
    convs = [row for row in data["layers"] if row["op"] == "Conv"]
    assert convs and all(row["b"] is None for row in convs)
    assert all("B has no Conv layer" in row["reason"] for row in convs)


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BadInput, match="not a valid ONNX model"):
        diff(bad, save(small_cnn(), tmp_path / "a.onnx"))


# --------------------------------------------------------------------------- layer kinds


def transformer_bits() -> onnx.ModelProto:
    """An embedding, LayerNorm, a MatMul with a transposed weight, an Einsum, a Gemm."""
    consts = {
        "emb": weight(10, 6),
        "ln.s": positive(6),
        "ln.b": weight(6),
        "w_t": weight(5, 6),
        "e.w": weight(5, 4),
        "g.w": weight(3, 4),
    }
    nodes = [
        node("Gather", ["emb", "ids"], ["h"]),
        node("LayerNormalization", ["h", "ln.s", "ln.b"], ["n"], axis=-1),
        node("Transpose", ["w_t"], ["w"], perm=[1, 0]),
        node("MatMul", ["n", "w"], ["m"]),
        node("Einsum", ["m", "e.w"], ["e"], equation="bsi,io->bso"),
        node("Reshape", ["e", "shape"], ["flat"]),
        node("Gemm", ["flat", "g.w"], ["y"], transB=1),
    ]
    consts["shape"] = np.array([-1, 4], dtype=np.int64)
    graph = helper.make_graph(
        nodes,
        "bits",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 3])],
        [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    onnx.checker.check_model(made)
    return made


def test_layer_kinds_widths_and_symbolic_signature(tmp_path):
    path = save(transformer_bits(), tmp_path / "bits.onnx")
    data = as_json(diff(path, path))
    layers = [(r["op"], r["a"]["weight"], r["a"]["in"], r["a"]["out"]) for r in data["layers"]]
    assert layers == [
        ("Gather", "emb", 10, 6),  # vocabulary → embedding width
        ("LayerNormalization", "ln.s", 6, 6),
        ("MatMul", "w_t", 6, 5),  # weight provenance through the Transpose
        ("Einsum", "e.w", 5, 4),
        ("Gemm", "g.w", 4, 3),
    ]
    assert data["signatures"]["inputs"][0]["a"] == {
        "name": "ids",
        "dtype": "int64",
        "shape": ["batch", 7],
    }
    assert data["a"]["input_shapes"] == {"ids": [1, 7]}  # symbolic batch counted as 1
    assert data["a"]["macs_by_op"] == {"Gemm": 7 * 3 * 4, "MatMul": 7 * 5 * 6}
    for row in data["layers"]:
        assert {"heads", "kv_groups", "mlp_width", "experts"} <= set(row["a"])
        assert row["a"]["heads"] is None  # filled by attention analysis, never guessed here


def test_input_shapes_set_the_shapes_macs_are_counted_at(tmp_path):
    path = save(transformer_bits(), tmp_path / "bits.onnx")
    data = as_json(diff(path, path, input_shapes={"ids": (2, 7)}))
    assert data["a"]["input_shapes"] == {"ids": [2, 7]}
    assert data["a"]["macs_by_op"]["MatMul"] == 2 * 7 * 5 * 6


# --------------------------------------------------------------------------- latency, schema


def test_latency_given_or_measured_through_the_bench_api(cnn_prune, monkeypatch):
    source, pruned, _, _ = cnn_prune
    assert diff(source, pruned).latency is None
    given = as_json(diff(source, pruned, latency=(10.0, 4.0)))["latency"]
    assert given == {"source": "given", "before_ms": 10.0, "after_ms": 4.0, "speedup": 2.5}

    calls = []

    def fake_bench(path, provider="cpu", input_shapes=None, **_):
        calls.append((Path(path), provider))
        ms = 3.0 if Path(path) == Path(source) else 1.5
        return SimpleNamespace(median_ms=ms, p90_ms=ms * 1.1, throughput=1000 / ms)

    monkeypatch.setattr(graphprune.bench, "bench", fake_bench)
    measured = as_json(diff(source, pruned, bench=True))["latency"]
    assert calls == [(Path(source), "cpu"), (Path(pruned), "cpu")]
    assert measured["source"] == "bench:cpu" and measured["speedup"] == pytest.approx(2.0)
    assert measured["before_p90_ms"] == pytest.approx(3.3)


def test_json_output_validates_against_the_schema(cnn_prune, tmp_path):
    source, pruned, _, _ = cnn_prune
    validate = validator()
    reports = [
        diff(source, source),
        diff(source, pruned, latency=(2.0, 1.0)),
        diff(pruned, source),
        diff(
            save(residual("full"), tmp_path / "f.onnx"),
            save(residual("skip_c2"), tmp_path / "s.onnx"),
        ),
        diff(tmp_path / "s.onnx", tmp_path / "f.onnx"),
        diff(save(transformer_bits(), tmp_path / "t.onnx"), source),
    ]
    for report in reports:
        validate(as_json(report))


def test_the_schema_rejects_what_is_not_a_diff(cnn_prune):
    source, pruned, _, _ = cnn_prune
    validate = validator()
    good = as_json(diff(source, pruned))
    broken = [
        {**good, "format": "graphprune.plan/1"},
        {k: v for k, v in good.items() if k != "layers"},
        {**good, "layers": [{**good["layers"][0], "status": "shrunk"}]},
        {**good, "layers": [{**good["layers"][0], "b": None}]},  # pruned but no B side
        {**good, "a": {**good["a"], "params": -1}},
        {**good, "extra": 1},
    ]
    for doc in broken:
        with pytest.raises(ValueError):
            validate(doc)


def test_gemm_and_matmul_pair_as_linear_layers(tmp_path):
    """Exporters write nn.Linear as Gemm(transB) or MatMul: they pair, by position."""
    w = weight(6, 4)
    gemm = model([node("Gemm", ["x", "g"], ["y"], transB=1)], {"x": (2, 4)}, ["y"], {"g": w})
    matmul = model([node("MatMul", ["x", "m"], ["z"])], {"x": (2, 4)}, ["z"], {"m": w[:3].T.copy()})
    data = as_json(diff(save(gemm, tmp_path / "g.onnx"), save(matmul, tmp_path / "m.onnx")))
    (row,) = data["layers"]
    assert (row["op"], row["status"], row["matched_by"]) == ("Gemm/MatMul", "pruned", "position")
    assert (row["a"]["in"], row["a"]["out"], row["b"]["in"], row["b"]["out"]) == (4, 6, 4, 3)
    assert row["kept_ratio"] == 0.5


def test_text_output_lists_the_summary_and_every_layer(tmp_path):
    a = save(residual("full"), tmp_path / "full.onnx")
    b = save(residual("skip_c2"), tmp_path / "skip.onnx")
    lines = diff(a, b, latency=(2.0, 1.0)).text().splitlines()
    assert lines[1].split() == ["params", "2,304", "1,728", "0.750"]
    assert lines[6].split() == ["latency", "ms", "2.000", "1.000", "0.500"]
    assert lines[7].startswith("paired 3 of 4 layers of A")
    assert "bypassed" in lines[9] and "c1 feeds y directly" in lines[9]
    assert len(lines) == 12  # header, 5 counts, latency, matching, 4 layers
