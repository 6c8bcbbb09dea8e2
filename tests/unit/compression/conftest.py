"""Fixtures shared by the torch-based compression tests: the digits split, one torch thread."""

from __future__ import annotations

import pytest
import torch

from tests.support.datasets import Digits
from training.data import load_builtin, split_indices


@pytest.fixture(scope="module")
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> Digits:
    table = load_builtin("digits")
    train, val = split_indices(len(table.y), 0.2, seed=0)
    x, y = torch.from_numpy(table.x), torch.from_numpy(table.y)
    return Digits(x[train], y[train], x[val], y[val])
