"""Calibration data: the batches of model inputs that `graphprune.calibrate` runs.

A `CalibrationSource` says where samples come from; `batches(source, model)` turns it into a
re-iterable `Batches` of feed dicts for that model (calibration may pass over the data several
times when Gram matrices are processed in chunks). When the model's inputs have a static batch
dimension, batches have exactly that size; otherwise `batch` samples each.

Sources:

- `npz`: an .npz file whose keys are the model's input names, samples stacked on axis 0 (all
  keys the same count). Keys that are not inputs, missing inputs, a wrong rank, a wrong static
  size or a float array for an integer input are refused in one line. `samples` keeps the first
  N (default: all). `arrays` is the same from a Python mapping.
- `images`: a folder of image files (.png .jpg .jpeg .bmp .gif .tif .tiff .webp, sorted by
  name, the first `samples`) for a model with one float image input, read with Pillow and
  preprocessed by a spec of comma-separated `key=value` pairs, lists separated by `/`:

      size=224 | size=224x160   output height x width (default: the input's static size)
      resize=256                resize the shorter side to 256 first, then center-crop `size`
                                (default: resize straight to `size`)
      color=rgb|bgr|gray        channel order (default: gray for 1 channel, else rgb)
      scale=255                 pixel values are divided by this first (default 255)
      mean=0.485/0.456/0.406    then (value - mean) / std per channel (defaults 0 and 1)
      std=0.229/0.224/0.225
      layout=nchw|nhwc          (default: nchw unless axis 1 cannot be channels)

- `text`: a text file through a Hugging Face tokenizer read from a local folder (nothing is
  downloaded). A `.json` file contributes every string it holds, in order. The token stream is
  cut into consecutive windows of `seq_len` tokens (no special tokens added), the first
  `samples` windows; `attention_mask` is all ones, `token_type_ids` zeros, `position_ids`
  0..seq_len-1.
- `data-free`: synthetic inputs, no data at all, deterministic in `seed`. Integer inputs are
  drawn as the oracle's default inputs are (`graphprune.inputs`: one mechanism for both):
  masks ones, position ids a range, ids uniform within the table they index (token ids within
  the vocabulary, type ids within their table, bytes over all 256), a scalar compared before
  an If its constant. A float input that feeds a Conv whose output goes straight into a
  BatchNormalization (the first such pair on that input) gets independent Gaussian pixels
  with a mean mu_c and a standard deviation sigma_c per input channel chosen so that the
  conv's output statistics match the BatchNorm's running statistics as closely as least
  squares allows. With
  S[o, c] = sum_p W[o, c, p] and Q[o, c] = sum_p W[o, c, p]^2 (kernel positions p; zero where
  a grouped conv's output o does not read channel c), conv bias b, running mean m and var v:

      E[y_o]   = sum_c S[o, c] mu_c + b_o        -> mu      = argmin ||S mu - (m - b)||
      Var[y_o] = sum_c Q[o, c] sigma_c^2         -> sigma^2 = argmin ||Q s - v||, s >= 0

  (non-negative least squares, then each sigma_c^2 raised to at least 1% of the largest one,
  so that no input channel is constant; zero padding at the borders is ignored). Any other
  float input is N(0, 1). Symbolic (and `-1` or `0`) sizes are `seq_len` for integer inputs,
  64 for float ones, unless `input_shapes` gives them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from graphprune.errors import BadInput
from graphprune.graph import GraphIndex, attribute
from graphprune.inputs import (
    DYNAMIC_DIM,
    FLOAT_DRAWS,
    FloatDraw,
    declared_dims,
    draw,
    input_dtype,
    refuse_selectors,
    roles,
)
from graphprune.inputs import input_shapes as shapes_for

KINDS = ("npz", "arrays", "images", "text", "data-free")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_SAMPLES = 128  # for sources that could produce more (images, text, data-free)
VARIANCE_FLOOR = 0.01  # data-free: least variance of an input channel, relative to the largest


@dataclass(frozen=True)
class CalibrationSource:
    kind: str  # one of KINDS
    path: str | None = None  # npz file, image folder or text file
    arrays: Mapping[str, np.ndarray] | None = None
    preprocess: str = ""  # image preprocessing spec (see the module docstring)
    tokenizer: str | None = None  # folder of a Hugging Face tokenizer
    seq_len: int = 128
    batch: int = 8
    samples: int | None = None  # at most this many samples (None: all of an npz, else 128)
    seed: int = 0

    def describe(self) -> str:
        if self.kind in ("npz", "images", "text"):
            return f"{self.kind}:{self.path}"
        return self.kind

    @classmethod
    def of(cls, value) -> CalibrationSource:
        """A source from what the Python API accepts: a CalibrationSource, "data-free", a path
        to an .npz file, or a mapping of input name -> stacked samples."""
        if isinstance(value, CalibrationSource):
            return value
        if isinstance(value, Mapping):
            return cls("arrays", arrays=value)
        if isinstance(value, str) and value == "data-free":
            return cls("data-free")
        if isinstance(value, (str, Path)):
            return cls("npz", path=str(value))
        raise TypeError(f"cannot calibrate on {type(value).__name__}")


class Batches:
    """Re-iterable batches of feed dicts, with a length and a source name."""

    def __init__(self, make: Callable[[], Iterator[dict]], count: int, source: str):
        self._make = make
        self.count = count
        self.source = source

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._make())

    def __len__(self) -> int:
        return self.count


def batches(
    source: CalibrationSource,
    model: onnx.ModelProto,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Batches:
    """The batches `source` gives for `model`."""
    inputs = _free_inputs(model)
    static = _static_batch(inputs)
    size = static or source.batch
    if source.kind == "npz":
        samples = _checked(_read_npz(source.path), inputs, source.path)
    elif source.kind == "arrays":
        samples = _checked(dict(source.arrays or {}), inputs, "calibration arrays")
    elif source.kind == "images":
        samples = _images(source, inputs)
    elif source.kind == "text":
        samples = _text(source, inputs)
    elif source.kind == "data-free":
        return _data_free(source, model, inputs, size, input_shapes or {})
    else:
        raise BadInput(f"unknown calibration source '{source.kind}' (known: {', '.join(KINDS)})")
    return _stacked(samples, size, static is not None, source)


# -- stacked samples ----------------------------------------------------------------------------


def _stacked(
    samples: dict[str, np.ndarray], size: int, fixed: bool, source: CalibrationSource
) -> Batches:
    """Batches of `size` samples; with a `fixed` (static) batch size a short last one is
    dropped."""
    total = len(next(iter(samples.values())))
    if source.samples is not None:
        total = min(total, source.samples)
    if fixed and size > total:
        raise BadInput(
            f"calibration data has {total} samples, fewer than one batch of {size} "
            "(the model's static batch size)"
        )
    starts = range(0, total - size + 1, size) if fixed else range(0, total, size)

    def make() -> Iterator[dict]:
        for start in starts:
            yield {name: array[start : start + size] for name, array in samples.items()}

    return Batches(make, len(starts), source.describe())


def _read_npz(path: str | None) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, TypeError) as err:
        raise BadInput(f"cannot read calibration data from {path}: {err}") from None


def _checked(
    samples: dict[str, np.ndarray], inputs: list[onnx.ValueInfoProto], where
) -> dict[str, np.ndarray]:
    """`samples` checked against the model's inputs and cast to their dtypes."""
    names = [v.name for v in inputs]
    if extra := sorted(samples.keys() - set(names)):
        raise BadInput(f"{where} has keys {extra} that are not model inputs (inputs: {names})")
    if missing := [n for n in names if n not in samples]:
        raise BadInput(f"{where} lacks model inputs {missing}")
    counts = {name: np.asarray(a).shape[0] if np.ndim(a) else 0 for name, a in samples.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise BadInput(f"{where}: every input needs the same number of samples on axis 0: {counts}")
    checked = {}
    for value in inputs:
        array = np.asarray(samples[value.name])
        dims = _dims(value)
        if array.ndim != len(dims):
            raise BadInput(
                f"{where}: input '{value.name}' has rank {array.ndim}, the model expects "
                f"{len(dims)}"
            )
        for axis, dim in enumerate(dims):
            if axis and isinstance(dim, int) and array.shape[axis] != dim:
                raise BadInput(
                    f"{where}: input '{value.name}' has shape {list(array.shape)}, the model "
                    f"expects {dim} on axis {axis}"
                )
        dtype = _dtype(value)
        if np.issubdtype(array.dtype, np.floating) and not np.issubdtype(dtype, np.floating):
            raise BadInput(f"{where}: input '{value.name}' is {dtype}, the data is {array.dtype}")
        checked[value.name] = array.astype(dtype, copy=False)
    return checked


# -- images -----------------------------------------------------------------------------------


def _images(source: CalibrationSource, inputs: list[onnx.ValueInfoProto]) -> dict:
    folder = Path(source.path or "")
    if not folder.is_dir():
        raise BadInput(f"no such image folder: {folder}")
    floats = [v for v in inputs if np.issubdtype(_dtype(v), np.floating)]
    if len(inputs) != 1 or len(floats) != 1 or len(_dims(floats[0])) != 4:
        raise BadInput("--calib-images needs a model with a single 4-D float image input")
    value = floats[0]
    spec = parse_preprocess(source.preprocess, _dims(value))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[: source.samples or DEFAULT_SAMPLES]
    if not files:
        raise BadInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = np.stack([_image(path, spec) for path in files])
    return {value.name: images.astype(_dtype(value))}


def parse_preprocess(text: str, dims: list) -> dict:
    """The preprocessing spec (see the module docstring) with defaults from the input's dims."""
    spec: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in ("size", "resize", "color", "scale", "mean", "std", "layout") or not value:
            raise BadInput(
                f"bad preprocessing item '{item}' (keys: size, resize, color, scale, mean, "
                "std, layout; lists separated by /)"
            )
        spec[key] = value.strip().lower()
    try:
        nhwc = dims[1] not in (1, 3) and dims[3] in (1, 3)
        layout = spec.get("layout") or ("nhwc" if nhwc else "nchw")
        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"layout {layout}")
        channel_axis, spatial = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
        channels = dims[channel_axis] if isinstance(dims[channel_axis], int) else 3
        if "size" in spec:
            sizes = [int(s) for s in spec["size"].split("x")]
            height, width = sizes if len(sizes) == 2 else sizes * 2
        else:
            height, width = (dims[a] for a in spatial)
            if not isinstance(height, int) or not isinstance(width, int):
                raise ValueError("the input has no static size: give size=")
        color = spec.get("color") or ("gray" if channels == 1 else "rgb")
        if color not in ("rgb", "bgr", "gray") or (color == "gray") != (channels == 1):
            raise ValueError(f"color {color} for {channels} channels")
        mean, std = (
            np.array([float(v) for v in spec.get(k, d).split("/")])
            for k, d in (("mean", "0"), ("std", "1"))
        )
        return {
            "layout": layout,
            "height": height,
            "width": width,
            "resize": int(spec["resize"]) if "resize" in spec else None,
            "color": color,
            "scale": float(spec.get("scale", 255)),
            "mean": mean,
            "std": std,
        }
    except ValueError as err:
        raise BadInput(f"bad preprocessing spec '{text}': {err}") from None


def _image(path: Path, spec: dict) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if spec["color"] == "gray" else "RGB")
    except OSError as err:
        raise BadInput(f"cannot read image {path}: {err}") from None
    height, width = spec["height"], spec["width"]
    if spec["resize"]:
        ratio = spec["resize"] / min(image.size)
        image = image.resize((round(image.width * ratio), round(image.height * ratio)))
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height))
    pixels = np.asarray(image, dtype=np.float64).reshape(height, width, -1)
    if spec["color"] == "bgr":
        pixels = pixels[..., ::-1]
    pixels = (pixels / spec["scale"] - spec["mean"]) / spec["std"]
    return pixels if spec["layout"] == "nhwc" else pixels.transpose(2, 0, 1)


# -- text -------------------------------------------------------------------------------------


def _text(source: CalibrationSource, inputs: list[onnx.ValueInfoProto]) -> dict:
    path, folder = Path(source.path or ""), Path(source.tokenizer or "")
    if not path.is_file():
        raise BadInput(f"no such text file: {path}")
    if not source.tokenizer or not folder.is_dir():
        raise BadInput(f"--calib-text needs --tokenizer DIR, a local tokenizer folder ({folder})")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"cannot load a tokenizer from {folder}: {message}") from None
    windows = source.samples or DEFAULT_SAMPLES
    wanted = windows * source.seq_len
    tokens: list[int] = []
    for passage in _passages(path):
        tokens.extend(tokenizer(passage, add_special_tokens=False)["input_ids"])
        if len(tokens) >= wanted:
            break
    count = min(windows, len(tokens) // source.seq_len)
    if count == 0:
        raise BadInput(f"{path} holds {len(tokens)} tokens, fewer than --seq-len {source.seq_len}")
    ids = np.array(tokens[: count * source.seq_len], dtype=np.int64).reshape(count, -1)
    return {value.name: _token_feed(value, ids) for value in inputs}


def _passages(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"cannot read text from {path}: {err}") from None
    if path.suffix.lower() != ".json":
        yield from (p for p in text.split("\n\n") if p.strip())
        return
    try:
        yield from _strings(json.loads(text))
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not JSON: {err}") from None


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _token_feed(value: onnx.ValueInfoProto, ids: np.ndarray) -> np.ndarray:
    """The feed of a text model's input, given the token ids [samples, seq_len]."""
    role = _int_role(value.name)
    if role == "ids":
        feed = ids
    elif role == "mask":
        feed = np.ones_like(ids)
    elif role == "types":
        feed = np.zeros_like(ids)
    else:
        feed = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    if len(_dims(value)) != 2:
        raise BadInput(f"text calibration expects 2-D [batch, sequence] inputs; '{value.name}'")
    return np.ascontiguousarray(feed).astype(_dtype(value))


def _int_role(name: str) -> str:
    lowered = name.lower()
    if "mask" in lowered:
        return "mask"
    if "token_type" in lowered or "segment" in lowered:
        return "types"
    if "position" in lowered:
        return "positions"
    return "ids"


# -- data-free --------------------------------------------------------------------------------


def _data_free(
    source: CalibrationSource,
    model: onnx.ModelProto,
    inputs: list[onnx.ValueInfoProto],
    size: int,
    given_shapes: Mapping[str, tuple[int, ...]],
) -> Batches:
    index = GraphIndex.build(model)
    found = roles(model, index)
    refuse_selectors(found)
    shapes = shapes_for(model, given_shapes, size, source.seq_len, DYNAMIC_DIM, found)
    total = source.samples or DEFAULT_SAMPLES
    count = max(1, total // size)
    floats = {name: _float_draw(index, name) for name, r in found.items() if r.kind == "float"}

    def make() -> Iterator[dict]:
        for number in range(count):
            rng = np.random.default_rng([source.seed, number])
            yield {
                value.name: np.asarray(
                    draw(
                        found[value.name],
                        value.name,
                        rng,
                        shapes[value.name],
                        floats.get(value.name, FLOAT_DRAWS["N(0,1)"]),
                    )
                ).astype(_dtype(value))
                for value in inputs
            }

    return Batches(make, count, source.describe())


def _float_draw(index: GraphIndex, name: str) -> FloatDraw:
    """Gaussian pixels matched to the first Conv -> BatchNorm after `name`, else N(0, 1)."""
    matched = batchnorm_matched(index, name)
    if matched is None:
        return FLOAT_DRAWS["N(0,1)"]
    mean, std = matched
    # per input channel on axis 1 (NCHW, as the conv reads it)
    return lambda rng, shape: (
        rng.standard_normal(shape) * _channels(std, shape) + _channels(mean, shape)
    )


def _channels(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return values.reshape(1, -1, *([1] * (len(shape) - 2)))


def batchnorm_matched(index: GraphIndex, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) per input channel of float input `name` that bring the first Conv -> BN
    after it to the BN's running statistics (see the module docstring), or None."""
    for position in index.consumers.get(name, []):
        conv = index.node(position)
        if conv.op_type != "Conv" or conv.input[0] != name or not index.is_constant(conv.input[1]):
            continue
        bn = _only_batchnorm_after(index, conv.output[0])
        if bn is None:
            continue
        weight = np.asarray(index.constants[conv.input[1]], dtype=np.float64)
        bias = (
            np.asarray(index.constants[conv.input[2]], dtype=np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0])
        )
        running_mean, running_var = (
            np.asarray(index.constants[n], dtype=np.float64) for n in bn.input[3:5]
        )
        sums, squares = _per_channel(weight, attribute(conv, "group", 1))
        mean = np.linalg.lstsq(sums, running_mean - bias, rcond=None)[0]
        variance = _nonnegative_least_squares(squares, running_var)
        # a channel the fit silences (variance 0) would make that input constant: keep at
        # least 1% of the largest channel's variance
        floor = VARIANCE_FLOOR * max(float(variance.max()), 1e-12)
        return mean, np.sqrt(np.maximum(variance, floor))
    return None


def _only_batchnorm_after(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    readers = index.consumers.get(tensor, [])
    if len(readers) != 1:
        return None
    node = index.node(readers[0])
    constant = node.op_type == "BatchNormalization" and all(
        index.is_constant(n) for n in node.input[1:5]
    )
    return node if constant and node.input[0] == tensor else None


def _per_channel(weight: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """S[o, c] = sum_p W[o, c, p] and Q[o, c] = sum_p W[o, c, p]^2 over the full input
    channels (a grouped conv's output reads only its group's channels)."""
    outputs, per_group = weight.shape[0], weight.shape[1]
    flat = weight.reshape(outputs, per_group, -1)
    sums = np.zeros((outputs, per_group * group))
    squares = np.zeros_like(sums)
    outputs_per_group = outputs // group
    for o in range(outputs):
        first = (o // outputs_per_group) * per_group
        sums[o, first : first + per_group] = flat[o].sum(axis=1)
        squares[o, first : first + per_group] = (flat[o] ** 2).sum(axis=1)
    return sums, squares


def _nonnegative_least_squares(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    try:
        from scipy.optimize import nnls
    except ImportError:  # scipy is optional: unconstrained least squares, clipped at zero
        return np.maximum(np.linalg.lstsq(matrix, target, rcond=None)[0], 0.0)
    return nnls(matrix, target)[0]


# -- model inputs ------------------------------------------------------------------------------


def _free_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> list:
    """Static sizes as ints; symbolic, -1 and 0 sizes as their symbol ("" when unnamed)."""
    return declared_dims(value)


def _dtype(value: onnx.ValueInfoProto) -> np.dtype:
    return input_dtype(value)


def _static_batch(inputs: list[onnx.ValueInfoProto]) -> int | None:
    """The batch size every input fixes, if one does (static axis 0)."""
    for value in inputs:
        dims = _dims(value)
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
    return None
