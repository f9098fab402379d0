"""Wrappers that give Hugging Face models a plain tensor-in, tensor-out ``forward``.

Exporters pass inputs by position; transformers 5 models want them by keyword
and return a ``ModelOutput``. The wrappers take the inputs by position under the
graph input names, call the model by keyword and return one output tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TextModel(nn.Module):
    """``(input_ids, attention_mask) -> model(...)[output]``; ``call_kwargs`` e.g. ``use_cache``."""

    def __init__(self, model: nn.Module, output: str, **call_kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.call_kwargs = call_kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the wrapped model on token ids and their attention mask."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self.call_kwargs)
        return out[self.output]


class ImageModel(nn.Module):
    """``pixel_values -> model(pixel_values=...)[output]``."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the wrapped model on a batch of images."""
        return self.model(pixel_values=pixel_values)[self.output]


class NoMhaFastPath(nn.Module):
    """Run ``model`` with the ``MultiheadAttention`` fast path off, so that it exports."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Call the model with the fast path disabled, restoring the previous setting."""
        previous = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(previous)


def randomize_small_params(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Add N(0, scale) noise to every 1-D parameter (biases, norm weights), in place.

    Fresh inits leave biases at 0 and norm weights at 1 (Gemma's RMSNorm at 0,
    used as ``1 + w``), which hides bias and norm slicing errors from the oracle.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model
