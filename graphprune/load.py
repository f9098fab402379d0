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

from graphprune import validate
from graphprune.edit import copy_structure, set_dim, unknown_dynamic_sizes
from graphprune.errors import BadInput

MIN_OPSET = 11
MAX_OPSET = 23
# protobuf refuses to serialize a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read `path` with its external data, checked: a valid ModelProto with opset 11-23."""
    return load_sized(path)[0]


def load_sized(path: str | os.PathLike) -> tuple[onnx.ModelProto, int]:
    """`load`, and the bytes the model occupies on disk, external data files included."""
    path = Path(path)
    try:
        present, regular = path.exists(), path.is_file()
    except (OSError, ValueError) as err:  # a NUL byte or a name too long
        raise BadInput(f"cannot use {str(path)[:80]!r} as a model path ({err})") from None
    if not present:
        raise BadInput(f"no such model file: {path}")
    if not regular:
        raise BadInput(f"{path} is not a regular file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise BadInput(f"{path} is not a valid ONNX model ({_first_line(err)})") from None
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror or err}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise BadInput(f"{path} is not a valid ONNX model (no graph or no nodes)")
    _check_opset(model, path)
    validate.check_model(model, path)
    unknown_dynamic_sizes(model)
    data_files = _load_external_data(model, path)
    return model, path.stat().st_size + sum(f.stat().st_size for f in data_files)


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


def _load_external_data(model: onnx.ModelProto, path: Path) -> set[Path]:
    """Load the external data of `model`, read from `path` (its entries were checked by
    `validate.check_model`: inside the model's folder, present, long enough), scan the loaded
    weights for non-finite values, and return the data files."""
    base = path.parent.resolve()
    tensors = list(_external_tensors(model))
    files = {(base / validate.external_entries(t)["location"]).resolve() for t in tensors}
    if tensors:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError, onnx.checker.ValidationError) as err:  # onnx's own checks
            raise BadInput(f"{path}: cannot read its external data ({_first_line(err)})") from None
        validate.check_finite(model, path, {t.name for t in tensors})
    return files


def infer_shapes(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """`model` with a type and shape for every tensor it can infer (a copy, or `model` itself
    when `in_place`): onnx's inference, then onnxruntime's symbolic one where onnx left gaps.

    Inference runs on a skeleton whose large initializers are typed graph inputs instead, so
    models over protobuf's 2 GB limit work and weights are never serialized; small integer
    constants stay, so shape arithmetic (data propagation) still sees their values.
    """
    skeleton = weightless(model)
    try:
        inferred = _onnx_inference(skeleton)
        anchors: set[str] = set()
        for _ in range(BROADCAST_ROUNDS):
            refined = _refine_broadcasts(inferred)
            if not refined:
                break
            # keep the refined types as anchors and let onnx recompute everything after them
            anchors |= refined
            kept = [v for v in inferred.graph.value_info if v.name in anchors]
            del inferred.graph.value_info[:]
            inferred.graph.value_info.extend(kept)
            inferred = _onnx_inference(inferred)
    except Exception:  # onnx raises C++ errors of several types; the fallback below decides
        inferred = skeleton
    shapes = _typed(inferred)
    if _missing_shapes(inferred):
        for name, value in _typed(_symbolic(inferred)).items():
            if _known_dims(value) > _known_dims(shapes.get(name)):
                shapes[name] = value  # fill onnx's gaps, never overwrite what it knew better
    result = model
    if not in_place:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    del result.graph.value_info[:]
    # Inferred types of graph outputs go to value_info too (analysis reads it, rewriting drops
    # it): the declared outputs, symbolic names included, must stay as they are.
    inputs = {v.name for v in model.graph.input}
    result.graph.value_info.extend(v for name, v in shapes.items() if name not in inputs)
    return result


BROADCAST_ROUNDS = 3
BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "And", "Or"}


def _refine_broadcasts(model: onnx.ModelProto) -> set[str]:
    """Fill output dims of broadcasting ops that inference left unknown, in place; returns the
    outputs refined.

    Sound by the broadcasting rule: on an output axis where some input has a size other than 1
    (a number or a symbol), every other input is 1 or that size, so the output has it. onnx
    gives up instead when one operand's size is unknown, which is how an attention mask built
    at run time hides batch and sequence from everything after `scores + mask`.
    """
    typed = {v.name: v for v in [*model.graph.input, *model.graph.value_info]}
    changed: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in BROADCAST_OPS or node.domain not in ("", "ai.onnx"):
            continue
        output = typed.get(node.output[0])
        inputs = [typed.get(name) for name in node.input if name]
        if output is None or None in inputs or not output.type.tensor_type.HasField("shape"):
            continue
        dims = output.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") or (dim.dim_param and not dim.dim_param.startswith("unk")):
                continue
            known = _broadcast_size(inputs, axis - len(dims))
            if known is not None and known != dim.dim_param:
                set_dim(dim, known)
                changed.add(node.output[0])
    return changed


def _broadcast_size(inputs: list[onnx.ValueInfoProto], axis: int) -> int | str | None:
    """The size some input has on `axis` (counted from the right) other than 1: a number, else
    a symbol (named ones first, then onnx's own consistent `unk__N` names)."""
    dims = [
        v.type.tensor_type.shape.dim[axis]
        for v in inputs
        if -axis <= len(v.type.tensor_type.shape.dim)
    ]
    numbers = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value != 1]
    named = [d.dim_param for d in dims if d.dim_param and not d.dim_param.startswith("unk")]
    unnamed = [d.dim_param for d in dims if d.dim_param.startswith("unk")]
    return (numbers or named or unnamed or [None])[0]


def _typed(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    return {v.name: v for v in [*model.graph.value_info, *model.graph.output]}


def _known_dims(value: onnx.ValueInfoProto | None) -> float:
    """How much a type says: no type < unknown rank < rank with unnamed or `unk__` dims <
    symbolic names < static sizes."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return 0.0
    dims = value.type.tensor_type.shape.dim
    score = 1.0
    for dim in dims:
        if dim.HasField("dim_value"):
            score += 3
        elif dim.dim_param and not dim.dim_param.startswith("unk__"):
            score += 2
    return score + 0.5 * len(dims)


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


SKELETON_MAX_ELEMENTS = 1024


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the data of its large initializers, which become typed graph inputs."""
    skeleton = copy_structure(model)
    listed = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if np.prod(tensor.dims) <= SKELETON_MAX_ELEMENTS:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in listed:
            skeleton.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference, keeping what it inferred even when it cannot
    finish. Its public entry point raises instead, after dumping `sym_shape_infer_temp.onnx`
    and data files into the current directory, which a tool must not do: we run its steps
    ourselves, and fall back to the public call inside a temporary directory if they change."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return model
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except AttributeError:  # internals moved: use the public call, away from the caller's cwd
        return _public_symbolic(model, SymbolicShapeInference)
    except Exception:  # best effort: rules block whatever stays unknown
        return model


def _public_symbolic(model: onnx.ModelProto, inference) -> onnx.ModelProto:
    from graphprune.outputs import scratch  # removed at exit and on SIGTERM

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        os.chdir(tmp)
        try:
            return inference.infer_shapes(model, auto_merge=True) or model
        except Exception:
            return model
        finally:
            os.chdir(cwd)


def _missing_shapes(model: onnx.ModelProto) -> bool:
    known = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.output}
    known |= {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    return any(out and out not in known for node in model.graph.node for out in node.output)


def tensor_nbytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers and Constant-node tensors, from their shapes and types
    (reading `raw_data` would copy every weight)."""
    tensors = list(model.graph.initializer)
    tensors += [
        a.t
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    return sum(_nbytes(t) for t in tensors)


def _nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def save(model: onnx.ModelProto, path: str | os.PathLike, check: bool = False) -> int:
    """Write `model` atomically: into a temporary folder beside `path`, then renamed into place.

    Models too large for one protobuf get their weights in `<name>.data` beside the model;
    the data file is moved first and the model last, so a reader never sees a model whose data
    is missing. With `check`, onnx's full checker (strict shape inference included) reads the
    temporary file first, so an invalid model never reaches `path`. Returns the bytes written.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    external = tensor_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"
    written = 0
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
        else:
            onnx.save_model(model, str(tmp_model))
        if check:
            onnx.checker.check_model(str(tmp_model), full_check=True)
        if external:
            written += _move_if_present(Path(tmp) / data_name, path.parent / data_name)
        written += _move_if_present(tmp_model, path)
    return written


def _move_if_present(source: Path, target: Path) -> int:
    """Rename `source` over `target` and return its size; 0 when there is no source (no tensor
    was large enough to go to an external data file)."""
    if not source.exists():
        return 0
    size = source.stat().st_size
    os.replace(source, target)
    return size
