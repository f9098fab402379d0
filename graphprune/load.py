"""Load: read a model safely, refuse bad input in one clear line, infer shapes, save atomically.

Never modifies the input file. External data is resolved relative to the model's folder and
must stay inside it (a location that climbs out of the folder is refused, as onnx itself does
since CVE-2024-27318).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from graphprune.errors import BadInput

MIN_OPSET = 11
MAX_OPSET = 23
# protobuf refuses to serialize a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read `path` with its external data, checked: a valid ModelProto with opset 11-23."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such model file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise BadInput(f"{path} is not a valid ONNX model ({_first_line(err)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise BadInput(f"{path} is not a valid ONNX model (no graph or no nodes)")
    _check_opset(model, path)
    _load_external_data(model, path.parent.resolve())
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    versions = {o.domain: o.version for o in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise BadInput(f"{path}: the model imports no default-domain opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BadInput(
            f"{path}: opset {opset} is not supported (supported: {MIN_OPSET}-{MAX_OPSET}); "
            "convert it with onnx.version_converter first"
        )


def _external_tensors(model: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Check every external location (inside `base`, present, long enough), then load it."""
    tensors = list(_external_tensors(model))
    for tensor in tensors:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise BadInput(
                f"external data of tensor '{tensor.name}' points outside the model's folder: "
                f"{location!r}"
            )
        if not target.is_file():
            raise BadInput(f"external data file missing for tensor '{tensor.name}': {target}")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > target.stat().st_size:
            raise BadInput(f"external data file {target} is truncated (tensor '{tensor.name}')")
    if tensors:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with a type and shape for every tensor it can infer: onnx's inference,
    then onnxruntime's symbolic inference where onnx left gaps.

    Inference runs on a skeleton whose large initializers are typed graph inputs instead, so
    models over protobuf's 2 GB limit work and weights are never serialized; small integer
    constants stay, so shape arithmetic (data propagation) still sees their values.
    """
    skeleton = _skeleton(model)
    try:
        inferred = _onnx_inference(skeleton)
    except Exception:  # onnx raises C++ errors of several types; the fallback below decides
        inferred = skeleton
    if _missing_shapes(inferred):
        inferred = _symbolic(inferred)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.graph.value_info)
    del result.graph.output[:]
    result.graph.output.extend(inferred.graph.output)
    return result


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


SKELETON_MAX_ELEMENTS = 1024


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the data of its large initializers, which become typed graph inputs."""
    graph = model.graph
    skeleton = onnx.ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions
    )
    skeleton.graph.CopyFrom(
        onnx.GraphProto(
            name=graph.name,
            node=graph.node,
            input=graph.input,
            output=graph.output,
            value_info=graph.value_info,
        )
    )
    listed = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if np.prod(tensor.dims) <= SKELETON_MAX_ELEMENTS:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in listed:
            skeleton.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # best effort: rules block whatever stays unknown
        return model
    return symbolic if symbolic is not None else model


def _missing_shapes(model: onnx.ModelProto) -> bool:
    known = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.output}
    known |= {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    return any(out and out not in known for node in model.graph.node for out in node.output)


def tensor_nbytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers and Constant-node tensors."""
    total = sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += len(attr.t.raw_data)
    return total


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` atomically: into a temporary folder beside `path`, then renamed into place.

    Models too large for one protobuf get their weights in `<name>.data` beside the model;
    the data file is moved first and the model last, so a reader never sees a model whose data
    is missing.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    external = tensor_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graphprune-") as tmp:
        tmp_model = Path(tmp) / path.name
        if external:
            detached = onnx.ModelProto()
            detached.CopyFrom(model)  # onnx moves tensor data out of the proto it saves
            onnx.save_model(
                detached,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            if (Path(tmp) / data_name).exists():  # absent when every tensor is tiny
                os.replace(Path(tmp) / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)


def file_size(path: str | os.PathLike) -> int:
    """Size of a model file plus every external data file it references."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        {e.key: e.value for e in t.external_data}.get("location") for t in _external_tensors(model)
    }
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations if loc)
