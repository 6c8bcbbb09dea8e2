"""The learning-rate schedule's math (``training.schedule``)."""

from __future__ import annotations

import itertools
import math

import pytest

from training.schedule import lr_factor
from training.spec import LRScheduleSpec


def test_no_schedule_keeps_the_rate() -> None:
    assert [lr_factor(s, 10, None) for s in (1, 5, 10)] == [1.0, 1.0, 1.0]


def test_warm_up_rises_linearly_and_never_starts_at_zero() -> None:
    schedule = LRScheduleSpec(decay="constant", warmup_steps=4)
    assert [lr_factor(s, 10, schedule) for s in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decays_from_the_peak_to_the_floor_at_the_last_step() -> None:
    schedule = LRScheduleSpec(decay="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(10, 110, schedule) == 1.0
    assert lr_factor(60, 110, schedule) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean
    assert lr_factor(110, 110, schedule) == pytest.approx(0.1)
    values = [lr_factor(s, 110, schedule) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # never rises after warm-up
    assert lr_factor(35, 110, schedule) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_linear_decay_is_a_straight_line() -> None:
    schedule = LRScheduleSpec(decay="linear", warmup_steps=0, min_lr_ratio=0.0)
    assert [lr_factor(s, 4, schedule) for s in range(1, 5)] == pytest.approx([0.75, 0.5, 0.25, 0.0])


def test_steps_past_the_end_stay_at_the_floor() -> None:
    schedule = LRScheduleSpec(decay="linear", warmup_steps=2, min_lr_ratio=0.2)
    assert lr_factor(50, 10, schedule) == pytest.approx(0.2)
