"""Attention as the torch exporters emit it: heads and GQA key/value groups found, pruned exactly,
shape constants rewritten wherever they live, and dynamic batch/sequence kept dynamic.

The block is written like HF attention (view -> transpose, QK^T / sqrt(d) -> softmax -> @V,
repeat_kv by expand + reshape) so both exporters produce their usual patterns: TorchScript builds
every target as Concat(Unsqueeze(Gather(Shape)), [heads], [head_dim]) and spells expand's -1 as
Where(Equal(t, -1), 1, t); dynamo shares one target Concat between q/k/v and deduplicates equal
constants across unrelated uses (the KV count, the repeat factor and an Unsqueeze axis).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.cli import main
from graphprune.errors import BadInput
from graphprune.pipeline import analyze, prune
from graphprune.verify import run

torch = pytest.importorskip("torch")

HIDDEN, HEADS, HEAD_DIM = 64, 4, 16


class Block(torch.nn.Module):
    def __init__(self, kv_heads: int):
        super().__init__()
        self.kv = kv_heads
        self.q = torch.nn.Linear(HIDDEN, HEADS * HEAD_DIM)
        self.k = torch.nn.Linear(HIDDEN, kv_heads * HEAD_DIM)
        self.v = torch.nn.Linear(HIDDEN, kv_heads * HEAD_DIM)
        self.o = torch.nn.Linear(HEADS * HEAD_DIM, HIDDEN)
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.up = torch.nn.Linear(HIDDEN, 4 * HIDDEN)
        self.down = torch.nn.Linear(4 * HIDDEN, HIDDEN)

    def split(self, x, heads: int):
        batch, seq, _ = x.shape
        return x.view(batch, seq, heads, HEAD_DIM).transpose(1, 2)

    def repeat_kv(self, x):
        if self.kv == HEADS:
            return x
        batch, _, seq, _ = x.shape
        group = HEADS // self.kv
        x = x[:, :, None].expand(batch, self.kv, group, seq, HEAD_DIM)
        return x.reshape(batch, HEADS, seq, HEAD_DIM)

    def forward(self, x):
        batch, seq, _ = x.shape
        q = self.split(self.q(x), HEADS)
        k = self.repeat_kv(self.split(self.k(x), self.kv))
        v = self.repeat_kv(self.split(self.v(x), self.kv))
        scores = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
        x = x + self.o((scores @ v).transpose(1, 2).reshape(batch, seq, HEADS * HEAD_DIM))
        return x + self.down(torch.relu(self.up(self.norm(x))))


def export(path, kv_heads: int, exporter: str) -> None:
    torch.manual_seed(0)
    export_module(Block(kv_heads).eval(), path, exporter)


def export_module(block, path, exporter: str, dynamic_sequence: bool = True) -> None:
    x = torch.randn(2, 8, HIDDEN)
    if exporter == "torchscript":
        torch.onnx.export(
            block,
            (x,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b", 1: "s"} if dynamic_sequence else {0: "b"}},
        )
    else:
        dims = {"x": {0: torch.export.Dim("b")}}
        if dynamic_sequence:
            dims["x"][1] = torch.export.Dim("s")
        torch.onnx.export(
            block,
            (x,),
            path,
            dynamo=True,
            opset_version=18,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=dims,
            verbose=False,
            external_data=False,  # else data files with random names land in the cwd
        )


CASES = [(kv, exporter) for kv in (HEADS, 2) for exporter in ("torchscript", "dynamo")]


@pytest.mark.parametrize(
    ("kv_heads", "exporter"),
    CASES,
    ids=[f"{'mha' if kv == HEADS else 'gqa'}-{e}" for kv, e in CASES],
)
def test_heads_and_kv_groups_prune_exactly_and_stay_dynamic(kv_heads, exporter, tmp_path):
    source, out = tmp_path / "block.onnx", tmp_path / "pruned.onnx"
    export(source, kv_heads, exporter)
    groups = analyze(source).dep.groups
    attention = [g for g in groups if g.kind in ("head", "kv-group")]
    assert len(attention) == 1
    group = attention[0]
    assert group.prunable, group.blocked
    assert group.kind == ("head" if kv_heads == HEADS else "kv-group")
    assert group.n_units == kv_heads  # MHA: one unit per head; GQA: one per key/value head
    mlp = [g for g in groups if g.kind == "channel" and g.prunable]
    assert [g.n_units for g in mlp] == [4 * HIDDEN]  # the hidden size stays (LayerNorm)

    assert (
        main(
            [
                "prune",
                str(source),
                str(out),
                "--ratio",
                "0.5",
                "--providers",
                "cpu",
                "--shape",
                "x:2x8x64",
                "--scope",
                "heads",
                "--quiet",
            ]
        )
        == 0
    )
    pruned = onnx.load(out)
    weights = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    q_width = HEADS * HEAD_DIM // 2
    assert any(dims == (HIDDEN, q_width) for dims in weights.values())  # q projection halved
    assert any(dims == (q_width, HIDDEN) for dims in weights.values())  # o projection reads it
    assert any(dims == (HIDDEN, 4 * HIDDEN) for dims in weights.values())  # MLP untouched
    batch_and_sequence = pruned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in batch_and_sequence[:2]] == ["b", "s"]
    outputs = run(
        pruned, {"x": np.random.default_rng(1).standard_normal((3, 5, HIDDEN), np.float32)}
    )
    assert outputs["y"].shape == (3, 5, HIDDEN)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_heads_and_mlp_together_at_25_and_50_percent(exporter, tmp_path):
    source = tmp_path / "block.onnx"
    export(source, 2, exporter)
    for ratio in (0.25, 0.5):
        result = prune(
            source,
            tmp_path / f"{ratio}.onnx",
            ratio=ratio,
            providers=("cpu",),
            input_shapes={"x": (2, 8, HIDDEN)},
        )
        assert result.passed, [c.line() for c in result.checks]
        assert result.after.params < result.before.params


def test_diff_reports_heads_and_kv_groups_before_and_after(tmp_path):
    from graphprune.diff import diff

    for kv_heads, exporter in ((HEADS, "dynamo"), (2, "torchscript")):
        source, out = tmp_path / f"{kv_heads}.onnx", tmp_path / f"{kv_heads}.p.onnx"
        export(source, kv_heads, exporter)
        prune(source, out, ratio=0.5, providers=("cpu",), input_shapes={"x": (2, 8, HIDDEN)})
        rows = diff(source, out).as_dict()["layers"]
        q_projection = rows[0]
        assert q_projection["a"]["heads"] == HEADS
        if kv_heads == HEADS:
            assert q_projection["b"]["heads"] == HEADS // 2
        else:
            assert q_projection["a"]["kv_groups"] == 2
            assert q_projection["b"]["heads"] == HEADS // 2  # one key/value head, 2 query heads


def test_inspect_lists_attention_mlp_and_hidden_size_per_layer(tmp_path, capsys):
    import json

    source = tmp_path / "gqa.onnx"
    export(source, 2, "dynamo")
    assert main(["inspect", str(source), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    by_what = {row["what"]: row for row in layers}
    assert by_what["attention"]["heads"] == HEADS and by_what["attention"]["kv_heads"] == 2
    assert by_what["attention"]["prunable"]
    assert by_what["mlp"]["width"] == 4 * HIDDEN and by_what["mlp"]["prunable"]
    assert by_what["hidden size"]["width"] == HIDDEN and not by_what["hidden size"]["prunable"]
    assert main(["inspect", str(source)]) == 0
    assert "4 heads / 2 kv" in capsys.readouterr().out


class HFBlock(torch.nn.Module):
    """Attention as transformers writes it, in the three styles whose exports needed more than
    the Block above: `llama` (GQA; repeat_kv and rotate_half read sizes from `x.shape` at run
    time, so the head count and head_dim come out of Shape -> Gather), `gpt2` (Conv1D: the
    projection flattens [b, s, E] to [b*s, E], addmm, views back, then splits q/k/v) and `sdpa`
    (F.scaled_dot_product_attention, which dynamo writes with k^T as Reshape-Transpose-Reshape
    through a merged batch*heads axis). kv_heads=1 is MQA."""

    def __init__(self, style: str, kv_heads: int = HEADS):
        super().__init__()
        self.style, self.kv = style, kv_heads
        kv_width = kv_heads * HEAD_DIM
        if style == "gpt2":
            self.qkv = torch.nn.Parameter(torch.randn(HIDDEN, 3 * HIDDEN) * 0.1)
            self.qkv_bias = torch.nn.Parameter(torch.randn(3 * HIDDEN) * 0.1)
        else:
            self.q = torch.nn.Linear(HIDDEN, HEADS * HEAD_DIM)
            self.k = torch.nn.Linear(HIDDEN, kv_width)
            self.v = torch.nn.Linear(HIDDEN, kv_width)
        self.o = torch.nn.Linear(HEADS * HEAD_DIM, HIDDEN)

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    @staticmethod
    def repeat_kv(x, n_rep: int):
        batch, kv_heads, seq, head_dim = x.shape  # read at run time, as transformers does
        x = x[:, :, None, :, :].expand(batch, kv_heads, n_rep, seq, head_dim)
        return x.reshape(batch, kv_heads * n_rep, seq, head_dim)

    def project(self, x):
        batch, seq, _ = x.shape
        if self.style == "gpt2":
            size_out = x.size()[:-1] + (3 * HIDDEN,)  # noqa: RUF005 (as GPT-2 writes it)
            qkv = torch.addmm(self.qkv_bias, x.view(-1, x.size(-1)), self.qkv).view(size_out)
            return [t.view(batch, seq, -1, HEAD_DIM).transpose(1, 2) for t in qkv.split(HIDDEN, 2)]
        q = self.q(x).view(batch, seq, -1, HEAD_DIM).transpose(1, 2)
        k = self.k(x).view(batch, seq, -1, HEAD_DIM).transpose(1, 2)
        v = self.v(x).view(batch, seq, -1, HEAD_DIM).transpose(1, 2)
        if self.style == "llama":
            angle = torch.arange(HEAD_DIM, dtype=torch.float32) / HEAD_DIM
            q = q * angle.cos() + self.rotate_half(q) * angle.sin()
            k = k * angle.cos() + self.rotate_half(k) * angle.sin()
        return q, k, v

    def forward(self, x):
        batch, seq, _ = x.shape
        q, k, v = self.project(x)
        if self.style == "sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, enable_gqa=self.kv != HEADS
            )
        else:
            k, v = self.repeat_kv(k, HEADS // self.kv), self.repeat_kv(v, HEADS // self.kv)
            scores = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
            out = scores @ v
        return x + self.o(out.transpose(1, 2).reshape(batch, seq, HEADS * HEAD_DIM))


HF_CASES = [
    ("llama", 2, "torchscript", "kv-group", 2),
    ("llama", 2, "dynamo", "kv-group", 2),
    ("llama", 1, "torchscript", "head", HEADS),  # MQA: the query heads go one by one
    ("llama", 1, "dynamo", "head", HEADS),
    ("gpt2", HEADS, "torchscript", "head", HEADS),
    ("gpt2", HEADS, "dynamo", "head", HEADS),
    ("sdpa", HEADS, "dynamo", "head", HEADS),
]


@pytest.mark.parametrize(
    ("style", "kv_heads", "exporter", "kind", "units"),
    HF_CASES,
    ids=[f"{s}-{kv}kv-{e}" for s, kv, e, _, _ in HF_CASES],
)
def test_transformers_style_attention_prunes_exactly_and_stays_dynamic(
    style, kv_heads, exporter, kind, units, tmp_path
):
    source = tmp_path / "block.onnx"
    torch.manual_seed(0)
    export_module(HFBlock(style, kv_heads).eval(), source, exporter)
    attention = [g for g in analyze(source).dep.groups if g.kind != "channel"]
    assert [(g.kind, g.n_units) for g in attention] == [(kind, units)]
    assert attention[0].prunable, attention[0].blocked
    result, _ = prune_heads_and_run_elsewhere(source, tmp_path, sequence=5)
    assert result.after.params < result.before.params


class TorchMHABlock(torch.nn.Module):
    """torch.nn.MultiheadAttention (torchvision's ViT uses it): one packed [E, 3E] in-projection
    picked apart by Reshape/Unsqueeze/Transpose/Squeeze/Gather, and heads folded into the batch
    (sequence first: [s, b, E] -> [s, b*h, d] -> transpose -> [b, h, s, d]). Run with the fast
    path off, as the zoo does, so that both exporters export it."""

    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        with torch.no_grad():
            self.attention.in_proj_bias.normal_()
            self.attention.out_proj.bias.normal_()

    def forward(self, x):
        previous = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return x + self.attention(x, x, x, need_weights=False)[0]
        finally:
            torch.backends.mha.set_fastpath_enabled(previous)


# TorchScript traces the key/value length of nn.MultiheadAttention as a constant (its export is
# not dynamic in the sequence, dense or pruned): dynamic batch only there, as in torchvision's ViT
MHA_CASES = [("torchscript", False), ("dynamo", False), ("dynamo", True)]


@pytest.mark.parametrize(
    ("exporter", "dynamic_sequence"),
    MHA_CASES,
    ids=[f"{e}-{'batch+sequence' if d else 'batch'}" for e, d in MHA_CASES],
)
def test_torch_multihead_attention_heads_prune_exactly_and_stay_dynamic(
    exporter, dynamic_sequence, tmp_path
):
    source = tmp_path / "mha.onnx"
    torch.manual_seed(0)
    export_module(TorchMHABlock().eval(), source, exporter, dynamic_sequence)
    analysis = analyze(source)
    (group,) = [g for g in analysis.dep.groups if g.kind == "head"]
    assert group.prunable and group.n_units == HEADS, group.blocked
    unpacked = [n for n in analysis.work.graph.node if n.name.endswith("_unpacked")]
    assert [n.op_type for n in unpacked] == ["Slice"] * 3  # q, k, v: slices of the packed output
    assert len({n.input[0] for n in unpacked}) == 1
    _, out = prune_heads_and_run_elsewhere(source, tmp_path, 5 if dynamic_sequence else 8)
    weights = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer}
    assert [HIDDEN, 3 * HIDDEN // 2] in weights.values() or [3 * HIDDEN // 2, HIDDEN] in (
        weights.values()
    )  # the packed in-projection lost half of each of its q, k and v blocks


def prune_heads_and_run_elsewhere(source, tmp_path, sequence: int):
    """Heads-only pruning at 25% and 50% (traced at batch 2, sequence 8) passes the oracle, and
    each pruned model runs at batch 3 and `sequence`; the last result and its path."""
    for ratio in (0.25, 0.5):
        out = tmp_path / f"{ratio}.onnx"
        try:
            result = prune(
                source,
                out,
                ratio=ratio,
                scopes=("heads",),
                providers=("cpu",),
                input_shapes={"x": (2, 8, HIDDEN)},
            )
        except BadInput as refused:  # 2 key/value groups lose none at 25%: refused, not copied
            assert ratio == 0.25 and "rounds to zero units" in str(refused), refused
            assert "the smallest ratio that removes a unit is 0.5" in str(refused)
            continue
        assert result.passed, [c.line() for c in result.checks]
        x = np.random.default_rng(1).standard_normal((3, sequence, HIDDEN), np.float32)
        assert run(onnx.load(out), {"x": x})["y"].shape == (3, sequence, HIDDEN)
    return result, out
