"""Mixture-of-experts entries of the zoo (torch is imported only when one is built).

Our own decoders (``models/moe.py``: 2 layers, hidden 64, 4 heads, 4 SwiGLU experts of width
96, top-2, vocab 512) in each MoE form, a fused com.microsoft::MoE copy, and Hugging Face
Mixtral / Qwen2-MoE tiny configs. Input ``input_ids`` (HF: plus ``attention_mask``), dynamic
batch and sequence in both exporters. What each export looks like is in the notes and in
``models/MOE.md``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models.entry import EXPORTERS, InputSpec, ZooEntry

VOCAB = 512
_TOKENS = ("batch", "sequence")
_LOGITS = {"logits": ("batch", "sequence", None)}
_OURS = "our own models/moe.py, random init (norm weights randomized)"


def build_ours(kind: str) -> Any:
    from models.moe import build_decoder

    return build_decoder(kind)


def fuse(src: Path, dst: Path) -> None:
    from models.moe import fuse_dense_moe

    fuse_dense_moe(src, dst)


def build_hf_moe(config: str, model: str, **kwargs: Any) -> Any:
    """A tiny HF MoE decoder with ``experts_implementation="batched_mm"`` (the one that
    exports), eager attention, called with an explicit attention_mask and no cache."""
    from models.transformers_zoo import build_hf

    sizes = dict(
        vocab_size=VOCAB,
        max_position_embeddings=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,  # 4 heads: 30% of 2 KV groups would prune nothing
        intermediate_size=96,
        num_experts_per_tok=2,
        experts_implementation="batched_mm",
    )
    return build_hf(config, model, "logits", call={"use_cache": False}, **sizes, **kwargs)


_IDS = {"input_ids": InputSpec((1, 16), "int64", 0, VOCAB, _TOKENS)}
_HF_INPUTS = {
    **_IDS,
    "attention_mask": InputSpec((1, 16), "int64", 1, 2, _TOKENS),
}
_SPARSE = (
    "per-expert token gathering: torchscript Equal(ids, e) -> NonZero -> Transpose/Split/Squeeze "
    "-> Gather tokens -> 3 MatMul (SwiGLU) -> Mul weight -> ScatterElements into zeros + Add "
    "(index_add); dynamo NonZero -> Slice/Squeeze -> GatherND -> 3 Gemm -> ScatterND(add). "
)
_DYNAMIC = "Dynamic batch and sequence in both exporters. "


def _ours(name: str, kind: str, notes: str) -> ZooEntry:
    return ZooEntry(
        name=name,
        family="moe",
        builder=functools.partial(build_ours, kind),
        input_shape=(1, 16),
        exporters=EXPORTERS,
        real_weights=False,
        notes=notes + _DYNAMIC,
        source=_OURS,
        requires=("torch",),
        inputs=_IDS,
        outputs=_LOGITS,
    )


def _hf(name: str, config: str, model: str, notes: str, **kwargs: Any) -> ZooEntry:
    return ZooEntry(
        name=name,
        family="moe",
        builder=functools.partial(build_hf_moe, config, model, **kwargs),
        input_shape=(1, 16),
        exporters=EXPORTERS,
        real_weights=False,
        notes=notes + _DYNAMIC,
        source="transformers/random-init",
        requires=("transformers",),
        inputs=_HF_INPUTS,
        outputs=_LOGITS,
    )


_HF_NOTE = (
    "experts_implementation='batched_mm': experts stacked [E, 2I, H] / [E, H, I], tokens "
    "repeated k times, Gather/GatherND of the stacked weights by the top-k ids, batched MatMul, "
    "Split gate|up; explicit attention_mask. The default grouped_mm does not export (torchscript: "
    "aten::histc unsupported; dynamo: ConversionError), nor does 'eager' (torchscript traces the "
    "data-dependent expert loop, wrong at other shapes; dynamo fails on unbind(nonzero)). "
)

MOE_ENTRIES = [
    _ours("moe_mixtral", "mixtral", "Mixtral-style sparse MoE, " + _SPARSE),
    _ours(
        "moe_mixtral_mask",
        "mixtral_mask",
        "Mixtral-style MoE, mask dispatch: every expert on every token, gate = "
        "ReduceSum(w * Cast(Equal(ids, e))), Add chain. ",
    ),
    _ours(
        "moe_qwen",
        "qwen",
        "Qwen2-MoE style: routed experts as moe_mixtral (top-k weights not renormalized) plus a "
        "shared SwiGLU expert (width 128) times Sigmoid(shared_expert_gate). " + _SPARSE,
    ),
    _ours(
        "moe_dense",
        "dense",
        "dense dispatch: stacked [E, H, I] weights, batched MatMul over all experts, gate = "
        "top-k-masked softmax (TopK values -> Slice k-th -> GreaterOrEqual -> Where, zeros_like "
        "as ConstantOfShape(Shape) or Expand(0, Shape)), renormalized, ReduceSum over experts. ",
    ),
    _ours(
        "moe_einsum",
        "einsum",
        "moe_dense written with einsum (bsh,ehi->bsei; bsei,eih->bseh; bseh,bse->bsh): the "
        "expert axis and the expert channels pass through Einsum nodes. ",
    ),
    ZooEntry(
        name="moe_fused",
        family="moe",
        builder=functools.partial(build_ours, "dense"),
        input_shape=(1, 16),
        exporters=EXPORTERS,
        real_weights=False,
        notes="moe_dense with each MoE block replaced by com.microsoft::MoE(tokens, router "
        "logits, fc1 [E, 2I, H] gate/up interleaved, fc2 [E, H, I]; activation_type swiglu, "
        "swiglu_fusion 1, k 2, normalize_routing_weights 1), which onnxruntime's CPU provider "
        "runs (only interleaved SwiGLU on CPU). " + _DYNAMIC,
        source=_OURS + " + models.moe.fuse_dense_moe",
        requires=("torch",),
        inputs=_IDS,
        outputs=_LOGITS,
        derived_from="moe_dense",
        derive=fuse,
    ),
    _hf(
        "mixtral_tiny_hf",
        "MixtralConfig",
        "MixtralForCausalLM",
        "HF MixtralForCausalLM, 4 experts top-2, 4 heads. " + _HF_NOTE,
        num_local_experts=4,
    ),
    _hf(
        "qwen2moe_tiny_hf",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        "HF Qwen2MoeForCausalLM, 4 experts top-2 (not renormalized) + shared expert (width "
        "128) with sigmoid gate, 4 heads. " + _HF_NOTE,
        num_experts=4,
        moe_intermediate_size=96,
        shared_expert_intermediate_size=128,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
]
