"""Benchmarks for graphprune: ResNet-50 at 50% against Torch-Pruning and onnxsim.

Run ``python -m benchmarks.run`` from the repository root (``--quick`` for a smoke run). It needs
``torch-pruning==1.6.1`` and ``onnxsim==0.8.1`` besides the ``zoo`` extra, and writes
``BENCHMARKS.md``. Exported and pruned models go to ``$GRAPHPRUNE_CACHE/bench`` (default
``~/.cache/graphprune/bench``), never into the repository.
"""
