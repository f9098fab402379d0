"""The oracle on CUDAExecutionProvider: runs where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import pytest

from graphprune.pipeline import prune
from graphprune.verify import cuda_available
from tests.test_cli import small_cnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_available(),
        reason="CUDAExecutionProvider not available (needs onnxruntime-gpu and an NVIDIA GPU)",
    ),
]


def test_oracle_passes_on_cuda_and_matches_cpu(tmp_path):
    import onnx

    source = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), source)
    result = prune(source, tmp_path / "out.onnx", ratio=0.5, providers=("cpu", "cuda"))
    by_provider = {c.provider: c for c in result.checks}
    assert by_provider["cuda"].passed and not by_provider["cuda"].skipped
    assert by_provider["cpu"].passed
