"""Small data sets for tests, as the bytes a tenant would upload or the tensors a unit test trains on."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def npz(**arrays: np.ndarray) -> bytes:
    """The arrays as the bytes of an uncompressed ``.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def digits_bytes() -> tuple[bytes, np.ndarray, np.ndarray]:
    """scikit-learn's digits, scaled to [0, 1], as ``.npz`` bytes (``X`` float32, ``y`` int64) and the arrays."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    return npz(X=x, y=y), x, y


@dataclass(frozen=True)
class Digits:
    """The builtin digits data set split for training and validation, as torch tensors."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
