"""Coverage on real exported models: every zoo model, from each exporter that exports it, pruned at
30% and 50% with the zero-then-prune oracle; and a real accuracy check on the trained digits CNN.

Exports are cached under $GRAPHPRUNE_CACHE/zoo (CI points it into the clone), so each model is
exported once per run.
"""

from __future__ import annotations

import pytest

from graphprune.pipeline import prune
from models.zoo import ZOO, example_inputs, export

# Known gaps (issue 3, open), each a strict xfail: the test fails when a gap closes, so this
# list can only shrink. Every other case must prune, shrink and pass the oracle.
KNOWN_GAPS = {
    ("gpt2_tiny", exporter): "no prunable group: GPT-2's Conv1D is Reshape [b, s, E] -> [b*s, E], "
    "Gemm, Reshape back; a merged symbolic dim (b*s) is not factorized, so the reshapes block"
    for exporter in ("torchscript", "dynamo")
}
CASES = [
    pytest.param(
        name,
        exporter,
        id=f"{name}-{exporter}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[name, exporter])]
        if (name, exporter) in KNOWN_GAPS
        else [],
    )
    for name, entry in ZOO.items()
    for exporter in entry.exporters
]


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_zoo_model_prunes_exactly_at_30_and_50_percent(name, exporter, tmp_path):
    entry = ZOO[name]
    if not entry.available():
        pytest.skip(f"{name} needs {', '.join(entry.missing_modules())}")
    source = export(name, exporter)
    inputs = example_inputs(entry)  # valid token ids and all-ones masks for text models
    for ratio in (0.3, 0.5):
        result = prune(
            source, tmp_path / f"{ratio}.onnx", ratio=ratio, providers=("cpu",), inputs=inputs
        )
        assert result.passed, [c.line() for c in result.checks]
        assert result.written
        assert result.prunable_groups >= 1
        assert result.after.params < result.before.params
        assert result.after.macs < result.before.macs


# Thresholds for the digits CNN (dense accuracy 0.993 on the 447-image test split). Pruning
# without fine-tuning or compensation, measured: at 30% L1 keeps 0.642 and L2 0.271 (both
# exporters, deterministic training). A model corrupted by a bad rewrite falls to chance (0.10).
# The bounds sit about 30% below the measured values, to absorb training differences across
# CPUs, and well above chance, so they separate "pruned correctly" from "broken".
DIGITS_BOUNDS = {"l1": 0.45, "l2": 0.19}


@pytest.mark.zoo
@pytest.mark.parametrize("exporter", ZOO["digits_cnn"].exporters)
def test_digits_cnn_keeps_accuracy_when_pruned_30_percent(exporter, tmp_path):
    from models.digits import accuracy_onnx, load_split

    _, _, x_test, y_test = load_split()
    source = export("digits_cnn", exporter)
    assert accuracy_onnx(source, x_test, y_test) >= 0.97
    for criterion, bound in DIGITS_BOUNDS.items():
        out = tmp_path / f"{criterion}.onnx"
        result = prune(source, out, ratio=0.3, criterion=criterion, providers=("cpu",))
        assert result.passed
        assert accuracy_onnx(out, x_test, y_test) >= bound, criterion
