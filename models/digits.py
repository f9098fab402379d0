"""A small real CNN trained in seconds on scikit-learn's bundled 8x8 digits.

It gives the zoo a model with *trained* weights and a real accuracy metric, so
pruning can be judged by accuracy lost, not only by output drift. Everything is
offline: ``sklearn.datasets.load_digits`` ships its data inside the package.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
INPUT_SHAPE = (1, 1, 8, 8)
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
TRAIN_THREADS = 2  # CI machines have 2 cores; more threads only add overhead here


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(X_train, y_train, X_test, y_test)``: float32 NCHW in [0, 1], int64 labels.

    The 75/25 stratified split with ``random_state=0`` is fixed so that accuracy
    numbers are comparable between runs and machines.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)
    return x_tr, y_tr, x_te, y_te


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv3x3 + BN + ReLU: the prunable unit."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """1x8x8 -> 32 -> 64 -> (pool) -> 64 channels -> global pool -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 32), _block(32, 64), nn.MaxPool2d(2), _block(64, 64)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of 1x8x8 images."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
    """Train ``model`` in place with Adam and a cosine learning-rate schedule."""
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps = EPOCHS * ((len(x) + BATCH_SIZE - 1) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()


def train(verbose: bool = False) -> nn.Module:
    """Train :class:`DigitsCNN` deterministically (fixed seed, split, threads), in eval mode."""
    x_tr, y_tr, _, _ = load_split()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(min(prev_threads, TRAIN_THREADS))
    start = time.perf_counter()
    try:
        # enable_grad: callers may build the zoo model inside torch.no_grad()
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(SEED)
            model = DigitsCNN()
            gen = torch.Generator().manual_seed(SEED)
            _fit(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), gen)
    finally:
        torch.set_num_threads(prev_threads)
    if verbose:
        print(f"trained digits_cnn in {time.perf_counter() - start:.1f}s")
    return model.eval()


def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a torch model on ``(x, y)``."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def accuracy_onnx(onnx_path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model on ``(x, y)`` with onnxruntime on CPU.

    Samples are fed one at a time, because zoo exports have a fixed batch of 1.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = [sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]
    pred = np.concatenate(logits).argmax(1)
    return float((pred == y).mean())


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """Train once per process; the zoo builds this model several times."""
    return {k: v.clone() for k, v in train().state_dict().items()}


def trained_model() -> nn.Module:
    """A fresh eval-mode copy of the trained model (trained at most once per process)."""
    model = DigitsCNN()
    model.load_state_dict(_trained_state())
    return model.eval()


if __name__ == "__main__":
    _, _, X_TEST, Y_TEST = load_split()
    print(f"test accuracy: {accuracy_torch(train(verbose=True), X_TEST, Y_TEST):.4f}")
