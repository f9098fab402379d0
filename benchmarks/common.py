"""Shared pieces: the run configuration, the cache folder, building and exporting the model."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SEED = 0
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# A torch.library.Library that is garbage collected unregisters its ops: keep a reference.
_FALLBACK_LIB: Any = None


@dataclass(frozen=True)
class Config:
    """What one benchmark run measures and how often."""

    model: str  # a torchvision.models constructor name
    size: int  # input is 1x3xSIZExSIZE
    ratio: float
    latency_runs: int  # timed runs per model and thread count (the median is reported)
    warmup: int  # untimed runs per model before timing
    repeats: int  # repetitions of each prune (the first is cold; medians are reported)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.size, self.size)


FULL = Config("resnet50", 224, 0.5, latency_runs=50, warmup=10, repeats=5)
QUICK = Config("resnet18", 64, 0.5, latency_runs=10, warmup=3, repeats=2)


def cache_dir() -> Path:
    """``$GRAPHPRUNE_CACHE/bench`` (default ``~/.cache/graphprune/bench``), created."""
    root = Path(os.environ.get("GRAPHPRUNE_CACHE", "~/.cache/graphprune")).expanduser()
    path = root / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def import_torchvision() -> ModuleType:
    """torchvision, via the zoo's shim when present (its ``_C`` may not load on CPU torch)."""
    try:
        from models._torchvision import import_torchvision as shim
    except ImportError:
        return _import_torchvision_fallback()
    return shim()


def _import_torchvision_fallback() -> ModuleType:
    """Define torchvision's nms/qnms schemas (no kernels) so its import cannot crash."""
    global _FALLBACK_LIB
    import torch

    if _FALLBACK_LIB is None and not hasattr(torch.ops.torchvision, "nms"):
        schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        _FALLBACK_LIB = torch.library.Library("torchvision", "DEF")
        _FALLBACK_LIB.define("nms" + schema)
        _FALLBACK_LIB.define("qnms" + schema)
    import torchvision

    return torchvision


def build_model(config: Config) -> Any:
    """A random-init torchvision model in eval mode; the same weights every call (fixed seed)."""
    import torch

    torchvision = import_torchvision()
    torch.manual_seed(SEED)
    return getattr(torchvision.models, config.model)(weights=None).eval()


def example_input(config: Config) -> Any:
    """A fixed random torch input of the configured shape."""
    import torch

    return torch.randn(config.shape, generator=torch.Generator().manual_seed(SEED))


def dense_onnx(config: Config) -> Path:
    """The exported dense model, from the cache when already there.

    TorchScript exporter (``dynamo=False``, ``do_constant_folding=True``): BatchNorm is folded
    into the Conv weights, so initializers are named ``onnx::Conv_NNN``, but every Conv node keeps
    a scope name such as ``/layer1/layer1.0/conv1/Conv`` that maps back to the torch module.
    """
    import torch

    name = f"{config.model}_{config.size}_seed{SEED}_torch{torch.__version__}.onnx"
    path = cache_dir() / name.replace("+", "_")
    if path.exists():
        return path
    model = build_model(config)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example_input(config),),
            str(partial),
            dynamo=False,
            do_constant_folding=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )
    os.replace(partial, path)
    return path


def write_section(report: Path, begin: str, end: str, section: str) -> None:
    """Replace the part of `report` between the markers `begin` and `end` (they are part of
    `section`), or append `section` when the report has none yet."""
    text = report.read_text() if report.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.write_text(text)
