"""Import torchvision even where its compiled ops library cannot load.

Why: the torchvision wheel next to a CPU-only torch may ship a ``_C.so`` linked
against libtorch_cuda. torchvision swallows that load failure, so the operators
``torchvision::nms`` / ``torchvision::qnms`` are never defined, and then
``torchvision/_meta_registrations.py`` crashes the import while registering
fake kernels for them. The zoo needs only the model classes (no detection
ops), so in that case we define the two schemas ourselves (no kernels) first.

Where ``_C`` loads fine we load it exactly as torchvision would and define
nothing, because a second definition of ``torchvision::nms`` would clash.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

import torch

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"

# Module-level reference: a Library that is garbage collected unregisters its ops.
_FALLBACK_LIB: torch.library.Library | None = None


def _has_nms() -> bool:
    """Return True when the ``torchvision::nms`` operator is registered."""
    try:
        return hasattr(torch.ops.torchvision, "nms")
    except (AttributeError, RuntimeError):
        return False


def _load_native_ops() -> bool:
    """Try to load torchvision's ``_C`` extension the way torchvision does; True on success."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for root in spec.submodule_search_locations:
        ext = importlib.machinery.FileFinder(root, loader).find_spec("_C")
        if ext is None or ext.origin is None:
            continue
        try:
            torch.ops.load_library(ext.origin)
        except (ImportError, OSError):
            return False
        return _has_nms()
    return False


def _define_fallback_ops() -> None:
    """Define the nms/qnms schemas so torchvision's fake registrations succeed."""
    global _FALLBACK_LIB
    if _FALLBACK_LIB is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms" + _SCHEMA)
    lib.define("qnms" + _SCHEMA)
    _FALLBACK_LIB = lib


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, working around a ``_C`` extension that cannot load."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not _has_nms() and not _load_native_ops():
        _define_fallback_ops()
    return importlib.import_module("torchvision")
