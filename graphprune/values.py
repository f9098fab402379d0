"""Values given on the command line, checked against the model before any session runs.

`--shape` sizes, the arrays of `--inputs` and the calibration samples of `--calib` must fit the
model's declared inputs: a name the model does not have, a wrong rank, a size that contradicts
a static one or a symbol another input already fixed, a dtype onnxruntime would refuse, a NaN
or an infinity would otherwise surface as an onnxruntime error about a temporary file, as
"verification failed, max abs nan", or as an allocation the machine cannot hold. Each is
refused here in one line that names the value and says what would fit (exit 2).

Bounds: every dimension at most MAX_DIM, and all inputs together at most MAX_ELEMENTS elements
(8 GiB of float32), so that a typo cannot allocate absurd memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from graphprune.errors import BadInput

MAX_DIM = 2**24
MAX_ELEMENTS = 2**31
MAX_SEED = 2**32  # numpy's legacy seeds and onnxruntime's accept [0, 2**32)
DEFAULT_DYNAMIC_DIM = 64  # verify.random_inputs' size for a free non-batch symbol


def free_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (those an initializer backs have defaults)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def signature(path: str | os.PathLike) -> list[onnx.ValueInfoProto] | None:
    """The free inputs of the model at `path`, read without its external data; None when it
    cannot be read (the loader then refuses it with its own line)."""
    try:
        return free_inputs(onnx.load(str(path), load_external_data=False))
    except Exception:  # any parse failure: the loader's message is the one the user gets
        return None


def check_values(
    inputs: list[onnx.ValueInfoProto] | None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    feeds_label: str = "--inputs",
    calib: object = None,
) -> None:
    """Check `--shape` sizes, `feeds` (one run's arrays) and `calib` (stacked samples: an .npz
    path, a mapping, or a graphprune.data.CalibrationSource) against `inputs`. Nothing to
    check against (None) checks nothing."""
    if inputs is None:
        return
    if shapes:
        check_shapes(inputs, shapes)
    if feeds is not None:
        check_feeds(inputs, feeds, feeds_label)
    samples, label = _calibration_arrays(calib)
    if samples is not None:
        check_samples(inputs, samples, label)


def check_shapes(inputs: list[onnx.ValueInfoProto], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """`--shape` values: names of inputs, their rank, positive bounded sizes that agree with
    static sizes and with each other on shared symbols, and a bounded total."""
    declared = {v.name: v for v in inputs}
    for name, dims in shapes.items():
        if name not in declared:
            raise BadInput(
                f"--shape names '{name}', which is not an input of the model "
                f"(inputs: {_signature_text(inputs)})"
            )
        if any(not 1 <= d <= MAX_DIM for d in dims):
            raise BadInput(f"--shape {_shape_text(name, dims)}: sizes must lie in 1..{MAX_DIM}")
        _check_dims(declared[name], dims, "--shape", f"--shape {_shape_text(name, dims)}")
    _check_symbols(inputs, shapes, "--shape")
    symbols = _given_symbols(inputs, shapes)
    total = sum(math.prod(_resolved(v, shapes, symbols)) for v in inputs)
    if total > MAX_ELEMENTS:
        raise BadInput(
            f"--shape asks for {total:,} input elements in all, more than {MAX_ELEMENTS:,}: "
            "use smaller sizes"
        )


def check_feeds(
    inputs: list[onnx.ValueInfoProto], feeds: Mapping[str, np.ndarray], label: str
) -> None:
    """One run's arrays: exactly the model's inputs, declared dtypes and ranks, static sizes
    and shared symbols respected, finite floats."""
    _check_names(inputs, feeds, label)
    for value in inputs:
        array = np.asarray(feeds[value.name])
        where = f"{label}: input '{value.name}'"
        expected = _dtype(value)
        if expected is not None and array.dtype != expected:
            raise BadInput(
                f"{where} is {array.dtype}, the model expects {expected}: save it as {expected}"
            )
        _check_dims(value, array.shape, label, where)
        _check_finite(array, where)
    _check_symbols(inputs, {name: np.shape(a) for name, a in feeds.items()}, label)


def check_samples(
    inputs: list[onnx.ValueInfoProto], samples: Mapping[str, np.ndarray], label: str
) -> None:
    """Calibration samples stacked on axis 0 (graphprune.data's convention): the model's
    inputs, their ranks and static sizes past axis 0, no float data for an integer input,
    finite floats."""
    _check_names(inputs, samples, label)
    for value in inputs:
        array = np.asarray(samples[value.name])
        where = f"{label}: input '{value.name}'"
        _check_dims(value, array.shape, label, where, skip_axis0=True)
        expected = _dtype(value)
        floating = np.issubdtype(array.dtype, np.floating)
        if expected is not None and floating and not np.issubdtype(expected, np.floating):
            raise BadInput(f"{where} is {array.dtype}, the model expects {expected} (integers)")
        if not floating and not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
            raise BadInput(f"{where} is {array.dtype}, not numbers")
        _check_finite(array, where)


# -- pieces ------------------------------------------------------------------------------------


def _check_names(inputs: list[onnx.ValueInfoProto], arrays: Mapping, label: str) -> None:
    names = [v.name for v in inputs]
    extra = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    problems = [f"has keys {extra} that are not model inputs"] if extra else []
    problems += [f"needs inputs {missing} that were not given"] if missing else []
    if problems:
        raise BadInput(f"{label} {' and '.join(problems)} (inputs: {_signature_text(inputs)})")


def _check_dims(
    value: onnx.ValueInfoProto,
    shape: tuple[int, ...],
    label: str,
    where: str,
    skip_axis0: bool = False,
) -> None:
    dims = _declared_dims(value)
    if dims is None:
        return  # no declared shape: nothing to hold it to
    if len(shape) != len(dims):
        raise BadInput(
            f"{where} has rank {len(shape)}, the model's input is {_dims_text(dims)} "
            f"(rank {len(dims)})"
        )
    for axis, (size, dim) in enumerate(zip(shape, dims, strict=True)):
        if isinstance(dim, int) and dim > 0 and size != dim and not (skip_axis0 and axis == 0):
            raise BadInput(
                f"{where} has size {size} on axis {axis}, the model expects {dim} on axis "
                f"{axis} (input {_dims_text(dims)})"
            )


def _check_symbols(
    inputs: list[onnx.ValueInfoProto], shapes: Mapping[str, tuple[int, ...]], label: str
) -> None:
    """One symbol (batch, sequence) takes one size across the inputs given."""
    seen: dict[str, tuple[int, str]] = {}
    for value in inputs:
        given, dims = shapes.get(value.name), _declared_dims(value)
        if given is None or dims is None or len(given) != len(dims):
            continue
        for size, dim in zip(given, dims, strict=True):
            if not isinstance(dim, str) or not dim:
                continue
            first = seen.setdefault(dim, (size, value.name))
            if first[0] != size:
                raise BadInput(
                    f"{label}: inputs '{first[1]}' and '{value.name}' share dimension '{dim}' "
                    f"but are given sizes {first[0]} and {size}: give them the same size"
                )


def _check_finite(array: np.ndarray, where: str) -> None:
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise BadInput(
                f"{where} holds {int(bad.sum())} non-finite value(s) (first {array[index]} at "
                f"{list(index)}): give finite numbers"
            )


def _resolved(
    value: onnx.ValueInfoProto, shapes: Mapping[str, tuple[int, ...]], symbols: dict[str, int]
) -> list[int]:
    """The sizes `verify.random_inputs` gives `value` at `shapes`: given, else static, else the
    size another given input fixes for the symbol, else 1 (axis 0) or DEFAULT_DYNAMIC_DIM."""
    if value.name in shapes:
        return list(shapes[value.name])
    return [
        d
        if isinstance(d, int) and d > 0
        else symbols.get(d, 1 if axis == 0 else DEFAULT_DYNAMIC_DIM)
        for axis, d in enumerate(_declared_dims(value) or [])
    ]


def _given_symbols(
    inputs: list[onnx.ValueInfoProto], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    symbols: dict[str, int] = {}
    for value in inputs:
        for size, dim in zip(shapes.get(value.name, ()), _declared_dims(value) or [], strict=False):
            if isinstance(dim, str) and dim:
                symbols.setdefault(dim, size)
    return symbols


def _declared_dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]


def _dtype(value: onnx.ValueInfoProto) -> np.dtype | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None  # undefined or exotic element types: the loader's checks decide


def _dims_text(dims: list[int | str]) -> str:
    return "[" + ", ".join(str(d) if d != "" else "?" for d in dims) + "]"


def _shape_text(name: str, dims: tuple[int, ...]) -> str:
    return f"{name}:{'x'.join(str(d) for d in dims)}"


def _signature_text(inputs: list[onnx.ValueInfoProto]) -> str:
    return ", ".join(f"{v.name} {_dims_text(_declared_dims(v) or [])} {_dtype(v)}" for v in inputs)


def _calibration_arrays(calib: object) -> tuple[Mapping[str, np.ndarray] | None, str]:
    """The stacked samples `calib` holds, read when it is an .npz file; (None, "") when it
    holds none (images, text and data-free sources are checked by graphprune.data)."""
    from graphprune.data import CalibrationSource

    if isinstance(calib, CalibrationSource):
        if calib.kind == "arrays":
            return calib.arrays, "calibration arrays"
        calib = calib.path if calib.kind == "npz" else None
    if isinstance(calib, Mapping):
        return calib, "calibration arrays"
    if isinstance(calib, (str, Path)) and calib != "data-free":
        return read_npz(calib, "--calib"), f"--calib {calib}"
    return None, ""


def read_npz(path: str | os.PathLike, label: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (pickled objects refused), or one line saying why not;
    `label` is the flag that named the file."""
    what = "calibration data" if label == "--calib" else f"{label} arrays"
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single .npy array, not an .npz archive of named arrays")
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise BadInput(f"cannot read {what} from {path}: no such file") from None
    except Exception as err:  # zipfile, pickle and format errors all mean the same thing here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"cannot read {what} from {path} as .npz: {reason}") from None
