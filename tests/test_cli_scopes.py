"""The command line for the MoE scopes (experts, expert-mlp) and COMP's block removal
(--remove-blocks): exit codes, what is written, JSON against the schemas, inputs untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphprune.blocks import find_blocks
from graphprune.cli import main
from graphprune.moe_prune import expert_counts
from graphprune.verify import random_inputs, run
from tests.test_blocks import transformer
from tests.test_cli import digest, one_error_line
from tests.test_commands import validate
from tests.test_moe import E, routed_block


def test_prune_scope_experts_removes_experts_under_the_minus_inf_oracle(tmp_path, capsys):
    source, out = tmp_path / "moe.onnx", tmp_path / "out.onnx"
    onnx.save(routed_block(), source)
    before = digest(source)
    argv = ["prune", str(source), str(out), "--scope", "experts", "--expert-ratio", "0.5"]
    assert main([*argv, "--criterion", "l2", "--providers", "cpu", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] and document["written"]
    [layer] = document["layers"]
    assert (layer["before"], layer["after"]) == (E, E // 2)
    assert [x.experts for x in expert_counts(out)] == [E // 2]
    assert digest(source) == before


def test_inspect_lists_experts_per_moe_layer_and_validates(tmp_path, capsys):
    source = tmp_path / "moe.onnx"
    onnx.save(routed_block(), source)
    assert main(["inspect", str(source), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    validate(document, "inspect.schema.json")
    [layer] = document["experts"]
    assert (layer["experts"], layer["top_k"], layer["prunable"]) == (E, 2, True)


def test_expert_scopes_do_not_mix_with_channel_scopes(tmp_path, capsys):
    source = tmp_path / "moe.onnx"
    onnx.save(routed_block(), source)
    argv = ["prune", str(source), str(tmp_path / "o.onnx"), "--scope", "experts,heads"]
    with pytest.raises(SystemExit) as stop:  # a usage error leaves through argparse
        main(argv)
    assert stop.value.code == 2
    assert "run on their own" in one_error_line(capsys)
    assert not (tmp_path / "o.onnx").exists()


def test_remove_blocks_drops_the_least_important_sub_blocks_exactly(tmp_path, capsys):
    made = transformer(layers=2)
    source, out = tmp_path / "t.onnx", tmp_path / "out.onnx"
    onnx.save(made, source)
    feeds = random_inputs(made, 0, {"x": (1, 7, 16)})
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([feeds["x"]] * 4))
    argv = ["prune", str(source), str(out), "--remove-blocks", "2", "--calib", str(calib)]
    assert main([*argv, "--providers", "cpu", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] and document["written"] and document["blocks"] == 4
    scores = [b["score"] for b in document["removed"]]
    assert len(scores) == 2 and scores == sorted(scores)
    assert len(find_blocks(onnx.load(out))) == 2
    assert run(onnx.load(out), feeds)["y"].shape == (1, 7, 16)


def test_remove_blocks_refuses_more_blocks_than_the_model_has(tmp_path, capsys):
    source = tmp_path / "t.onnx"
    onnx.save(transformer(layers=1), source)
    assert main(["prune", str(source), str(tmp_path / "o.onnx"), "--remove-blocks", "5"]) == 2
    assert "has 2 residual sub-blocks" in one_error_line(capsys)
