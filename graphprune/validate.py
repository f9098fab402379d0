"""Validate: refuse a malformed model up front, in one line naming the user's file and the tensor
or node, before onnxruntime or any rewrite sees it.

onnxruntime and the onnx checker refuse the same models, but later and in the wrong words: a
message about a temporary session file, a MemoryError for a dim of 2**40, or "verification
failed, max abs nan" for one NaN weight. Everything here reads the model as parsed, weights one
tensor at a time (a view, never a second copy of the whole model), and the checker runs on the
weightless structure so models past protobuf's 2 GB limit are checked too.

`check_model` runs right after parsing, before external data is read (its entries are checked
against the data files first); `check_finite` scans the external weights once they are loaded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from graphprune.edit import unknown_dynamic_sizes
from graphprune.errors import BadInput
from graphprune.graph import all_inputs

# A graph input dim past int32 is no real model's; random test inputs of more than 2 GiB would
# exhaust memory in the oracle (the kernel kills the process) instead of failing cleanly.
MAX_INPUT_DIM = 2**31 - 1
MAX_INPUT_BYTES = 2**31
# The checker serializes the model; past this size (weights in Constant nodes) it cannot.
CHECKER_MAX_BYTES = 1_800_000_000
# Ops whose constant inputs are multiplied into every output: an infinity there is a broken
# weight. Elsewhere -inf is a legitimate additive mask (among zeros) or fill value.
WEIGHT_READERS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
PACKED_4BIT = {TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1}
PACKED_2BIT = {getattr(TensorProto, name, -1) for name in ("INT2", "UINT2")}
COMPLEX_TYPES = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}
DECIMAL = re.compile(r"[0-9]+")


def check_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse `model`, read from `path`, with BadInput if onnxruntime or the checker would choke
    on it: undecodable names, bad tensors or external-data entries, a graph that is not in
    topological order, dangling or duplicated names, absurd input dims, non-finite weights,
    what the checker refuses, op inputs of the wrong type, declared outputs that contradict
    the graph."""
    path = Path(path)
    _check_text(model, "model", path)
    graph = model.graph
    _check_sparse(graph, path)
    weights = _weight_names(graph)
    for tensor, where in _constant_tensors(graph, "graph"):
        _check_tensor(tensor, where, path, weights)
    _check_graph_inputs(graph, path)
    _check_graph_outputs(graph, path)
    _check_node_order(graph, path)
    _check_with_onnx(model, path)


def check_finite(model: onnx.ModelProto, path: str | os.PathLike, names: set[str]) -> None:
    """The non-finite scan of `check_model` for the tensors `names` (external data, loaded now)."""
    weights = _weight_names(model.graph)
    for tensor, where in _constant_tensors(model.graph, "graph"):
        if tensor.name in names:
            _check_values(tensor, where, Path(path), weights)


# -- text -------------------------------------------------------------------------------------


def _check_text(message, where: str, path: Path) -> None:
    """Every string field is text: protobuf hands invalid UTF-8 back as bytes, which no name
    comparison matches and onnxruntime refuses. Tensor data is not walked (it would be copied)."""
    if isinstance(message, TensorProto):
        _check_tensor_text(message, where, path)
        return
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue  # numbers and bytes: nothing to decode
        values = list(value) if field.is_repeated else [value]
        for i, item in enumerate(values):
            place = f"{where}.{field.name}" + (f"[{i}]" if field.is_repeated else "")
            if field.type == field.TYPE_STRING and not isinstance(item, str):
                raise BadInput(f"{path}: {place} is not valid UTF-8 text ({bytes(item)[:40]!r})")
            if field.type == field.TYPE_MESSAGE:
                _check_text(item, place, path)


def _check_tensor_text(tensor: TensorProto, where: str, path: Path) -> None:
    texts = [("name", tensor.name), ("doc_string", tensor.doc_string)]
    for i, entry in enumerate(tensor.external_data):
        texts += [
            (f"external_data[{i}].key", entry.key),
            (f"external_data[{i}].value", entry.value),
        ]
    for field, text in texts:
        if not isinstance(text, str):
            raise BadInput(f"{path}: {where}.{field} is not valid UTF-8 text ({text[:40]!r})")


# -- tensors ----------------------------------------------------------------------------------


def _check_sparse(graph: onnx.GraphProto, path: Path) -> None:
    if graph.sparse_initializer:
        name = graph.sparse_initializer[0].values.name
        raise BadInput(
            f"{path}: sparse initializer '{name}' is not supported; store it as a dense "
            "initializer (onnx.numpy_helper.from_array of the dense array)"
        )
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("sparse_tensor") or attribute.sparse_tensors:
                raise BadInput(
                    f"{path}: {_node_label(node)} holds a sparse tensor; "
                    "store it as a dense Constant"
                )
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                _check_sparse(sub, path)


def _constant_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    """Initializers and tensor attributes (Constant values), subgraphs included."""
    for tensor in graph.initializer:
        yield tensor, f"initializer '{tensor.name}'"
    for node in graph.node:
        label = _node_label(node)
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t, f"tensor '{attribute.t.name}' of {label}"
            for tensor in attribute.tensors:
                yield tensor, f"tensor '{tensor.name}' of {label}"
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _constant_tensors(sub, f"{where} > {label}")


def _node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name or (node.output[0] if node.output else node.op_type)}'"


def _weight_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors read by an op that multiplies them into its output (`WEIGHT_READERS`); Constant
    nodes are named by their output."""
    names = {name for n in graph.node if n.op_type in WEIGHT_READERS for name in n.input}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in names:
            names.update(a.t.name for a in node.attribute if a.HasField("t"))
    return names


def _check_tensor(tensor: TensorProto, where: str, path: Path, weights: set[str]) -> None:
    """Known type, non-negative dims, and data whose size the dims and type explain."""
    if not _known_type(tensor.data_type):
        raise BadInput(f"{path}: {where} has no valid data type ({tensor.data_type})")
    negative = [d for d in tensor.dims if d < 0]
    if negative:
        raise BadInput(f"{path}: {where} has a negative dim {negative[0]} in {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL:
        _check_external(tensor, where, path, _expected_bytes(tensor.data_type, count))
        return
    if tensor.HasField("raw_data"):
        if tensor.data_type == TensorProto.STRING:
            raise BadInput(f"{path}: {where} is a string tensor stored as raw bytes")
        held = len(tensor.raw_data)
        expected = _expected_bytes(tensor.data_type, count)
        if held != expected:
            raise BadInput(
                f"{path}: {where} holds {held} bytes of data, its dims {list(tensor.dims)} "
                f"and type need {expected}"
            )
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        held, expected = len(getattr(tensor, field)), _expected_values(tensor.data_type, count)
        if held != expected:
            raise BadInput(
                f"{path}: {where} holds {held} values, its dims {list(tensor.dims)} "
                f"and type need {expected}"
            )
    _check_values(tensor, where, path, weights)


def _expected_bytes(data_type: int, count: int) -> int:
    if data_type in PACKED_4BIT:
        return (count + 1) // 2
    if data_type in PACKED_2BIT:
        return (count + 3) // 4
    return count * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize


def _expected_values(data_type: int, count: int) -> int:
    """Entries of the typed field (`float_data`, `int32_data`...) that hold `count` elements."""
    if data_type in COMPLEX_TYPES:
        return 2 * count
    if data_type in PACKED_4BIT:
        return (count + 1) // 2
    if data_type in PACKED_2BIT:
        return (count + 3) // 4
    return count


def _check_values(tensor: TensorProto, where: str, path: Path, weights: set[str]) -> None:
    """No NaN in a float constant; an infinity only in a mask (infinities among zeros, read by
    no op of `WEIGHT_READERS`) or a single-value constant (a fill value or clip bound)."""
    if tensor.data_type not in FLOAT_TYPES or tensor.data_location == TensorProto.EXTERNAL:
        return
    values = _float_values(tensor)
    if bool(np.isfinite(values).all()):
        return
    if bool(np.isnan(values).any()):
        raise BadInput(f"{path}: {where} contains NaN; a model with NaN weights cannot be pruned")
    finite = values[np.isfinite(values)]
    is_mask = bool((finite == 0).all()) and tensor.name not in weights
    if values.size > 1 and not is_mask:
        raise BadInput(f"{path}: weight {where} contains an infinite value")


def _float_values(tensor: TensorProto) -> np.ndarray:
    """The tensor's values as stored (a view of `raw_data` where it is used); bfloat16 widened
    to float32 by its bits, which keeps NaN and infinities."""
    if tensor.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        if tensor.HasField("raw_data"):
            bits = np.frombuffer(tensor.raw_data, dtype="<u2")
        else:
            bits = np.asarray(tensor.int32_data, dtype=np.int64).astype(np.uint16)
        if tensor.data_type == TensorProto.FLOAT16:
            return bits.view(np.float16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if tensor.HasField("raw_data"):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.frombuffer(tensor.raw_data, dtype=dtype.newbyteorder("<"))
    if tensor.data_type == TensorProto.DOUBLE:
        return np.asarray(tensor.double_data, dtype=np.float64)
    return np.asarray(tensor.float_data, dtype=np.float32)


# -- external data ----------------------------------------------------------------------------


def external_entries(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _check_external(tensor: TensorProto, where: str, path: Path, expected: int) -> None:
    """The entry names a regular file inside the model's folder, with integer offset and length
    whose range lies inside the file and holds exactly the tensor's bytes."""
    info = external_entries(tensor)
    location = info.get("location", "")
    base = path.parent.resolve()
    try:
        target = (base / location).resolve()
        regular = target.is_file()
        present = regular or target.exists()
    except (OSError, ValueError, RuntimeError) as err:  # NUL byte, name too long, link loop
        raise BadInput(
            f"{path}: external data location of {where} cannot be used: {location[:80]!r} "
            f"({getattr(err, 'strerror', None) or err})"
        ) from None
    if not location or os.path.isabs(location) or not target.is_relative_to(base):
        raise BadInput(
            f"{path}: external data of {where} points outside the model's folder: {location!r}"
        )
    if not present:
        raise BadInput(f"{path}: external data file missing for {where}: {target}")
    if not regular or location.endswith(("/", os.sep)):
        raise BadInput(f"{path}: external data of {where} is not a regular file: {location!r}")
    for key in ("offset", "length"):
        if key in info and not DECIMAL.fullmatch(info[key].strip()):
            raise BadInput(
                f"{path}: external data {key} of {where} is {info[key]!r}, "
                "not a non-negative integer"
            )
    size = target.stat().st_size
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else size - offset
    if length != expected:
        raise BadInput(
            f"{path}: external data of {where} is {length} bytes long, its dims "
            f"{list(tensor.dims)} and type need {expected}"
        )
    if offset + length > size:
        raise BadInput(
            f"{path}: external data of {where} ends at byte {offset + length}, past the end "
            f"of {target.name} ({size} bytes)"
        )


# -- graph ------------------------------------------------------------------------------------


def _check_graph_outputs(graph: onnx.GraphProto, path: Path) -> None:
    """Declared output types are real types (onnxruntime refuses type 0 when it loads)."""
    for value in graph.output:
        if not value.name:
            raise BadInput(f"{path}: the graph has an output with an empty name")
        elem_type = value.type.tensor_type.elem_type
        if value.type.HasField("tensor_type") and not _known_type(elem_type):
            raise BadInput(f"{path}: graph output '{value.name}' has no valid type ({elem_type})")


def _known_type(data_type: int) -> bool:
    return data_type != TensorProto.UNDEFINED and data_type in TensorProto.DataType.values()


def _check_graph_inputs(graph: onnx.GraphProto, path: Path) -> None:
    """Names present and unique; dims -1 and 0 are dynamic (paddle2onnx and VAD exports write
    them so), other negatives and sizes that no memory holds are refused."""
    seen: set[str] = set()
    for value in graph.input:
        if not value.name or value.name in seen:
            kind = "an empty" if not value.name else f"a duplicate ('{value.name}')"
            raise BadInput(f"{path}: the graph has {kind} input name")
        seen.add(value.name)
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        if not _known_type(tensor_type.elem_type):
            raise BadInput(
                f"{path}: graph input '{value.name}' has no valid type ({tensor_type.elem_type})"
            )
        dims = [d.dim_value for d in tensor_type.shape.dim if d.HasField("dim_value")]
        for dim in dims:
            if dim < -1 or dim > MAX_INPUT_DIM:
                raise BadInput(
                    f"{path}: graph input '{value.name}' has dim {dim}; "
                    f"dims are -1 or 0 (dynamic) up to {MAX_INPUT_DIM}"
                )
        count = math.prod(max(dim, 1) for dim in dims)
        nbytes = _expected_bytes(tensor_type.elem_type, count)
        if nbytes > MAX_INPUT_BYTES:
            raise BadInput(
                f"{path}: graph input '{value.name}' would take {nbytes / 2**30:.0f} GiB "
                f"(dims {dims}); give it smaller dims with --shape"
            )


def _check_node_order(graph: onnx.GraphProto, path: Path) -> None:
    """Every node reads only names defined before it (graph inputs, initializers, earlier
    outputs), produces at least one name, and no name is defined twice."""
    defined = {value.name for value in graph.input}
    initializers: set[str] = set()
    for tensor in graph.initializer:
        if not tensor.name or tensor.name in initializers:
            kind = "an empty" if not tensor.name else f"a duplicate ('{tensor.name}')"
            raise BadInput(f"{path}: the graph has {kind} initializer name")
        initializers.add(tensor.name)  # an initializer may share a graph input's name (default)
    defined |= initializers
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    for i, node in enumerate(graph.node):
        label = f"node {i} ('{node.name or node.op_type}', {node.op_type})"
        for name in all_inputs(node):
            if name in defined:
                continue
            if producers.get(name, -1) > i:
                raise BadInput(
                    f"{path}: {label} reads '{name}' before node {producers[name]} produces it "
                    "(nodes are not in topological order)"
                )
            raise BadInput(f"{path}: {label} reads '{name}', which nothing produces")
        outputs = [out for out in node.output if out]
        if not outputs:
            raise BadInput(f"{path}: {label} has no outputs")
        for out in outputs:
            if out in defined:
                raise BadInput(f"{path}: {label} produces '{out}', which is already defined")
            defined.add(out)
    for value in graph.output:
        if value.name not in defined:
            raise BadInput(f"{path}: graph output '{value.name}' is produced by no node")


def _check_with_onnx(model: onnx.ModelProto, path: Path) -> None:
    """onnx's own structural checker, on the model without its weights (checked above)."""
    from graphprune.load import weightless

    skeleton = weightless(model)
    _external_as_inputs(skeleton)
    if skeleton.ByteSize() > CHECKER_MAX_BYTES:
        return  # weights held in Constant nodes: the checks above are what we can do
    try:
        onnx.checker.check_model(skeleton)
    except Exception as err:  # ValidationError, or C++ errors of other types for odd protos
        raise BadInput(f"{path} is not a valid ONNX model: {_one_line(err)}") from None
    _check_declared_outputs(skeleton, path)


# Strict inference's words for a declared type that contradicts the graph, and for an input
# of a type its op does not take (onnxruntime refuses both when it loads the model). Not its
# other errors: onnx's inference has gaps onnxruntime does not share, and one failed node
# leaves every consumer "expected to have type but instead is null".
CONTRADICTIONS = ("existing shape differ", "existing elem type", "existing type")
TYPE_ERRORS = (
    "has unsupported type",
    "has inconsistent type",
    "bound to different types",
)


def _check_declared_outputs(skeleton: onnx.ModelProto, path: Path) -> None:
    """Declared graph outputs agree with what the graph computes: a static size or type that
    contradicts inference fails onnx's full check on every model written from this one.

    Only the declarations are compared: the exporter's value_info is dropped (it is recomputed
    on the way anyway), input dims -1 and 0 count as dynamic, and inference failing for any
    other reason (ops it does not know, its own gaps) is left to the later fallbacks."""
    del skeleton.graph.value_info[:]
    unknown_dynamic_sizes(skeleton, outputs=False)
    try:
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except Exception as err:  # InferenceError, or C++ errors of other types
        words = str(err)
        for tag in ("[TypeInferenceError]", "[ShapeInferenceError]", "Inference error(s):"):
            words = words.replace(tag, "")
        if any(clue in str(err) for clue in TYPE_ERRORS):
            raise BadInput(
                f"{path}: an op gets a type it does not take: {_one_line(words)}"
            ) from None
        if any(clue in str(err) for clue in CONTRADICTIONS):
            raise BadInput(
                f"{path}: a declared graph output contradicts the graph: {_one_line(words)}"
            ) from None


def _one_line(err: BaseException | str, limit: int = 300) -> str:
    return (" ".join(str(err).split()) or type(err).__name__)[:limit]


def _external_as_inputs(model: onnx.ModelProto) -> None:
    """Small initializers whose data is still in a file become typed graph inputs, in place:
    the checker would look for the file beside a model that has no path."""
    listed = {value.name for value in model.graph.input}
    initializers = model.graph.initializer
    for i in reversed(range(len(initializers))):
        tensor = initializers[i]
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        if tensor.name not in listed:
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
        del initializers[i]
