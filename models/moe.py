"""Mixture-of-experts models of our own, written to export with both torch exporters.

A small decoder (token embedding, ``LAYERS`` x [RMSNorm, causal multi-head attention, residual,
RMSNorm, MoE, residual], RMSNorm, LM head) whose MoE block is one of:

- ``MixtralMoE`` (Mixtral-8x7B, Jiang et al. 2024): router Linear -> softmax -> top-k ->
  renormalize -> per-expert SwiGLU MLPs (one module per expert) -> weighted sum. ``dispatch``
  picks how tokens reach their experts:
  ``"gather"`` is the sparse form: each expert gathers its tokens (``torch.where(idx == e)``),
  runs on them only, and scatters its output back with ``index_add``; ``"mask"`` runs every
  expert on every token and multiplies by the expert's gate ``sum_k w_k [idx_k == e]``.
- ``QwenMoE`` (Qwen2-MoE / DeepSeek-MoE): the same routed experts (top-k weights not
  renormalized, as in Qwen2-MoE's default ``norm_topk_prob=False``) plus a shared expert that
  sees every token, scaled by ``sigmoid(shared_expert_gate(x))``.
- ``DenseMoE`` (dense dispatch): expert weights stacked as ``[E, in, out]`` tensors, every expert
  computes every token (one batched MatMul per projection), and the gate is the top-k-masked
  softmax ``g = p * [p >= p_(k)] / sum(...)`` (no indices at all), summed over the expert axis.

How each exports is recorded in ``models/MOE.md`` and in the zoo entries' notes. Random init
gives experts with no specialisation; ``benchmarks/moe.py`` trains one briefly on real text.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

VOCAB = 512
HIDDEN = 64
HEADS = 4
LAYERS = 2
EXPERTS = 4
TOP_K = 2
EXPERT_WIDTH = 96  # each expert's intermediate size
SHARED_WIDTH = 128  # Qwen2-MoE's shared expert is wider than a routed one
SEED = 0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, written out (TorchScript opset 17 has no RMSNorm)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """One expert: down(silu(gate(x)) * up(x)), no biases (Mixtral, Qwen2-MoE, DeepSeek)."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(logits: torch.Tensor, k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts, then the top-k weights (renormalized to sum 1) and expert ids."""
    probs = F.softmax(logits, dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class MixtralMoE(nn.Module):
    """Routed SwiGLU experts, one module each; `dispatch` is "gather" (sparse) or "mask"."""

    def __init__(
        self,
        hidden: int = HIDDEN,
        width: int = EXPERT_WIDTH,
        experts: int = EXPERTS,
        k: int = TOP_K,
        dispatch: str = "gather",
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        self.k, self.dispatch, self.renormalize = k, dispatch, renormalize
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden, width) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, seq, hidden] stays 3-D: a flatten to tokens and reshape back would build
        the same shape vector as attention's output reshape, which dynamo then shares between
        the two Reshapes (see models/MOE.md)."""
        weights, ids = route(self.gate(x), self.k, self.renormalize)  # [B, S, k] each
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            if self.dispatch == "gather":
                batch, seq, slot = torch.where(ids == e)
                routed = expert(x[batch, seq]) * weights[batch, seq, slot].unsqueeze(-1)
                out = out.index_put((batch, seq), routed, accumulate=True)
            else:
                gate = (weights * (ids == e).to(weights.dtype)).sum(dim=-1, keepdim=True)
                out = out + expert(x) * gate
        return out


class QwenMoE(MixtralMoE):
    """Qwen2-MoE: routed experts (weights not renormalized) + a sigmoid-gated shared expert."""

    def __init__(self, hidden: int = HIDDEN, shared_width: int = SHARED_WIDTH, **kwargs) -> None:
        kwargs.setdefault("renormalize", False)
        super().__init__(hidden, **kwargs)
        self.shared_expert = SwiGLU(hidden, shared_width)
        self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared_expert(x) * torch.sigmoid(self.shared_expert_gate(x))
        return super().forward(x) + shared


class DenseMoE(nn.Module):
    """Stacked [E, in, out] SwiGLU experts; every expert computes every token; the gate is the
    top-k-masked softmax, renormalized."""

    def __init__(
        self,
        hidden: int = HIDDEN,
        width: int = EXPERT_WIDTH,
        experts: int = EXPERTS,
        k: int = TOP_K,
    ) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(hidden, experts, bias=False)
        scale = 1 / math.sqrt(hidden)
        self.gate_proj = nn.Parameter(torch.randn(experts, hidden, width) * scale)
        self.up_proj = nn.Parameter(torch.randn(experts, hidden, width) * scale)
        self.down_proj = nn.Parameter(torch.randn(experts, width, hidden) / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1)  # [B, S, E]
        kth = torch.topk(probs, self.k, dim=-1).values[..., -1:]  # the k-th largest, [B, S, 1]
        gate = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        gate = gate / gate.sum(dim=-1, keepdim=True)
        tokens = x.unsqueeze(1)  # [B, 1, S, H]: broadcasts against the [E, H, I] weights
        hidden = F.silu(tokens @ self.gate_proj) * (tokens @ self.up_proj)  # [B, E, S, I]
        out = hidden @ self.down_proj  # [B, E, S, H]
        return (out * gate.transpose(1, 2).unsqueeze(-1)).sum(dim=1)


class EinsumMoE(DenseMoE):
    """`DenseMoE` written with einsum, as JAX/Flax ports and many research codebases write it:
    `bsh,ehi->bsei` per expert, `bsei,eih->bseh` back, `bseh,bse->bsh` for the gated sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1)  # [B, S, E]
        kth = torch.topk(probs, self.k, dim=-1).values[..., -1:]
        gate = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        gate = gate / gate.sum(dim=-1, keepdim=True)
        up = torch.einsum("bsh,ehi->bsei", x, self.up_proj)
        hidden = F.silu(torch.einsum("bsh,ehi->bsei", x, self.gate_proj)) * up
        out = torch.einsum("bsei,eih->bseh", hidden, self.down_proj)
        return torch.einsum("bseh,bse->bsh", out, gate)


class Attention(nn.Module):
    """Causal multi-head self-attention, explicit MatMul/Softmax (no sdpa)."""

    def __init__(self, hidden: int = HIDDEN, heads: int = HEADS) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2) * (self.head_dim**-0.5) + mask
        out = F.softmax(scores, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class Layer(nn.Module):
    def __init__(self, moe: nn.Module, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(hidden), Attention(hidden)
        self.moe_norm, self.moe = RMSNorm(hidden), moe

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.moe(self.moe_norm(x))


class MoEDecoder(nn.Module):
    """input_ids [batch, sequence] -> logits [batch, sequence, vocab]."""

    def __init__(self, make_moe, layers: int = LAYERS, vocab: int = VOCAB, hidden: int = HIDDEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Layer(make_moe(), hidden) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        seq = input_ids.shape[1]
        causal = torch.full((seq, seq), float("-inf"), device=x.device).triu(1)
        for layer in self.layers:
            x = layer(x, causal)
        return self.lm_head(self.norm(x))


MOE_KINDS: dict[str, Any] = {
    "mixtral": functools.partial(MixtralMoE, dispatch="gather"),
    "mixtral_mask": functools.partial(MixtralMoE, dispatch="mask"),
    "qwen": functools.partial(QwenMoE, dispatch="gather"),
    "qwen_mask": functools.partial(QwenMoE, dispatch="mask"),
    "dense": DenseMoE,
    "einsum": EinsumMoE,
}


def build_decoder(kind: str, seed: int = SEED, **sizes: Any) -> MoEDecoder:
    """A random-init decoder with MoE blocks of `kind` (see MOE_KINDS), norms randomized."""
    make = functools.partial(MOE_KINDS[kind], **sizes.pop("moe", {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MoEDecoder(make, **sizes)
        with torch.no_grad():  # norms away from 1, so that slicing errors show
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.add_(torch.randn(param.shape) * 0.1)
    return model.eval()


# --------------------------------------------------------------------------- fused MoE op


def fuse_dense_moe(src: Path, dst: Path, k: int = TOP_K) -> None:
    """Write the `DenseMoE` export `src` with each MoE block replaced by one
    ``com.microsoft::MoE`` node (what onnxruntime's CPU and CUDA kernels run).

    The block is found by its stacked weights' names (``*.gate_proj``, ``*.up_proj``,
    ``*.down_proj``, [E, in, out], kept by both exporters): the hidden states x [B, S, H] feed
    (through an Unsqueeze) the MatMul reading ``gate_proj``; the router is the MatMul reading x
    with a constant [H, E] weight; the block's output is the ReduceSum over the expert axis.
    The op takes x and 2-D router *logits* [B*S, E] (it applies softmax, top-k and, with
    ``normalize_routing_weights=1``, renormalization itself), so the router is rewritten as
    Reshape(x, [-1, H]) -> MatMul. ``fc1`` = [E, 2I, H] holds gate and up rows interleaved
    (``swiglu_fusion=1``, the only SwiGLU layout onnxruntime's CPU kernel accepts;
    SwiGLU = g * sigmoid(alpha g) * (l + beta) with alpha 1, beta 0 is SiLU(g) * l) and
    ``fc2`` = [E, H, I].
    """
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(position)
        for name in node.output:
            producer[name] = position
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for name in [n for n in weights if n.endswith(".gate_proj")]:
        prefix = name[: -len("gate_proj")]
        gate, up, down = (weights[prefix + p] for p in ("gate_proj", "up_proj", "down_proj"))
        unsqueeze = graph.node[producer[graph.node[readers[name][0]].input[0]]]
        x = unsqueeze.input[0]
        router = _router(graph, readers, x, weights)
        experts, hidden, width = gate.shape
        fc1 = np.empty((experts, 2 * width, hidden), dtype=gate.dtype)
        fc1[:, 0::2], fc1[:, 1::2] = gate.transpose(0, 2, 1), up.transpose(0, 2, 1)
        fc2 = np.ascontiguousarray(down.transpose(0, 2, 1))
        new = {"fc1": fc1, "fc2": fc2, "router": router, "tokens_shape": np.array([-1, hidden])}
        for suffix, value in new.items():
            graph.initializer.append(numpy_helper.from_array(value, prefix + suffix))
        total = _expert_sum(graph, readers, prefix + "down_proj")
        replaced[total] = [
            helper.make_node("Reshape", [x, prefix + "tokens_shape"], [prefix + "tokens"]),
            helper.make_node("MatMul", [prefix + "tokens", prefix + "router"], [prefix + "logits"]),
            helper.make_node(
                "MoE",
                [x, prefix + "logits", prefix + "fc1", "", prefix + "fc2"],
                [graph.node[total].output[0]],
                name=prefix + "MoE",
                domain="com.microsoft",
                k=k,
                activation_type="swiglu",
                swiglu_fusion=1,
                normalize_routing_weights=1,
            ),
        ]
    nodes = [n for i, node in enumerate(graph.node) for n in replaced.get(i, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    _remove_dead(model)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


def _router(graph, readers, x: str, weights) -> np.ndarray:
    """The [H, E] weight of the MatMul/Gemm that reads `x` into a Softmax."""
    for position in readers[x]:
        node = graph.node[position]
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        following = [graph.node[p].op_type for p in readers.get(node.output[0], [])]
        if weight is None or weight.ndim != 2 or following != ["Softmax"]:
            continue
        if node.op_type == "MatMul":
            return weight
        if node.op_type == "Gemm":
            return weight.T if any(a.name == "transB" and a.i for a in node.attribute) else weight
    raise ValueError(f"no router reads {x}")


def _expert_sum(graph, readers, down: str) -> int:
    """Position of the ReduceSum over experts after MatMul(., down) -> Mul(gate)."""
    matmul = graph.node[readers[down][0]]
    mul = graph.node[readers[matmul.output[0]][0]]
    position = readers[mul.output[0]][0]
    if graph.node[position].op_type != "ReduceSum":
        raise ValueError(f"{down} does not end in a sum over experts")
    return position


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes nothing reads and initializers no node reads."""
    graph = model.graph
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        alive = [n for n in graph.node if used.intersection(n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
