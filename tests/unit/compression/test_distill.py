"""Distillation: a digits CNN teacher into an MLP student of a quarter of its size, teachers
in torch and in ONNX, the loss math, determinism, and requests refused with the field named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.distill import (
    DistillError,
    DistillOptions,
    check_student_smaller,
    distill,
    kd_loss,
    output_loss,
    soft_target_loss,
    teacher_outputs,
)
from compression.fidelity import make_session
from compression.finetune import finetune, predict, torch_accuracy
from compression.measure import parameter_counts
from tests.support.datasets import Digits
from training.export import export_onnx
from training.spec import CNNSpec, MLPSpec
from training.zoo import build_model

STUDENT = MLPSpec(arch="mlp", hidden=[16])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(digits: Digits) -> nn.Sequential:
    torch.manual_seed(0)
    model = build_model(CNNSpec(arch="cnn", channels=[16, 32]), 64, 10)
    finetune(model, digits.train_x, digits.train_y, epochs=6, lr=3e-3, batch_size=32, seed=0)
    return model


def test_a_student_a_quarter_the_size_keeps_most_of_the_teachers_accuracy(
    teacher: nn.Sequential, digits: Digits
) -> None:
    options = DistillOptions(temperature=2.0, alpha=0.5, epochs=10, lr=3e-3, batch_size=32, seed=0)
    result = distill(teacher, STUDENT, digits.train_x, digits.train_y, options)
    assert result.teacher_params == parameter_counts(teacher).total
    assert result.student_params == parameter_counts(result.student).total
    assert result.student_params <= 0.25 * result.teacher_params
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    teacher_accuracy = torch_accuracy(teacher, digits.val_x, digits.val_y)
    student_accuracy = torch_accuracy(result.student, digits.val_x, digits.val_y)
    assert teacher_accuracy >= 0.9
    assert student_accuracy >= 0.85 * teacher_accuracy


def test_the_same_seed_distills_the_same_student(teacher: nn.Sequential, digits: Digits) -> None:
    options = DistillOptions(epochs=1, seed=7)
    x, y = digits.train_x[:256], digits.train_y[:256]
    first, second = distill(teacher, STUDENT, x, y, options), distill(teacher, STUDENT, x, y, options)
    for a, b in zip(first.student.parameters(), second.student.parameters(), strict=True):
        assert torch.equal(a, b)
    other = distill(teacher, STUDENT, x, y, DistillOptions(epochs=1, seed=8))
    assert not torch.equal(next(first.student.parameters()), next(other.student.parameters()))


def test_an_onnx_teacher_teaches_like_the_torch_one(teacher: nn.Sequential, digits: Digits, tmp_path: Path) -> None:
    path = tmp_path / "teacher.onnx"
    export_onnx(teacher, 64, path)
    x = digits.train_x[:200]
    expected = teacher_outputs(teacher, x)
    assert torch.allclose(teacher_outputs(path, x), expected, atol=1e-4)
    assert torch.allclose(teacher_outputs(make_session(path, intra_op_threads=1), x), expected, atol=1e-4)
    from_file = distill(path, STUDENT, x, digits.train_y[:200], DistillOptions(epochs=1))
    assert from_file.teacher_params == parameter_counts(teacher).total, "counted from the ONNX initializers"
    with pytest.raises(DistillError, match="teacher_params"):
        distill(make_session(path, intra_op_threads=1), STUDENT, x, None, DistillOptions(alpha=1.0, epochs=1))


def test_a_student_not_smaller_than_its_teacher_is_refused(teacher: nn.Sequential, digits: Digits) -> None:
    check_student_smaller(999, 1000)
    for student, teacher_params in [(1000, 1000), (1500, 1000)]:
        with pytest.raises(DistillError) as raised:
            check_student_smaller(student, teacher_params)
        assert raised.value.field == "student"
        assert str(teacher_params) in str(raised.value) and str(student) in str(raised.value)
    with pytest.raises(DistillError) as raised:
        distill(teacher, MLPSpec(arch="mlp", hidden=[128]), digits.train_x[:64], digits.train_y[:64])
    assert raised.value.field == "student"


def test_unlabeled_data_distills_on_outputs(teacher: nn.Sequential, digits: Digits) -> None:
    x = digits.train_x
    torch.manual_seed(0)
    before = build_model(STUDENT, 64, 10)
    for mode in ("mse", "cosine"):
        result = distill(teacher, STUDENT, x, None, DistillOptions(mode=mode, epochs=5, lr=3e-3, batch_size=32))
        assert result.epoch_losses[-1] < result.epoch_losses[0], mode
        targets = predict(teacher, x)
        cosine = F.cosine_similarity(predict(result.student, x), targets).mean()
        assert cosine > F.cosine_similarity(predict(before, x), targets).mean()
        assert cosine > 0.8, mode
    # soft targets alone need no labels; mixing in hard labels does
    distill(teacher, STUDENT, x[:64], None, DistillOptions(alpha=1.0, epochs=1))
    with pytest.raises(DistillError) as raised:
        distill(teacher, STUDENT, x[:64], None, DistillOptions(alpha=0.5, epochs=1))
    assert raised.value.field == "alpha"


# --- the losses --------------------------------------------------------------------------------


def test_soft_target_loss_is_t_squared_kl_of_teacher_to_student() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    temperature = 3.0
    p_teacher = torch.softmax(teacher / temperature, dim=1)
    p_student = torch.softmax(student / temperature, dim=1)
    expected = temperature**2 * (p_teacher * (p_teacher.log() - p_student.log())).sum(dim=1).mean()
    assert torch.allclose(soft_target_loss(student, teacher, temperature), expected, atol=1e-6)
    assert float(soft_target_loss(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_mixes_soft_and_hard_by_alpha() -> None:
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    soft, hard = soft_target_loss(student, teacher, 2.0), F.cross_entropy(student, labels)
    assert torch.allclose(kd_loss(student, teacher, labels, 2.0, 1.0), soft)
    assert torch.allclose(kd_loss(student, teacher, labels, 2.0, 0.0), hard)
    assert torch.allclose(kd_loss(student, teacher, labels, 2.0, 0.7), 0.7 * soft + 0.3 * hard)


def test_output_losses() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(output_loss(a, a, "mse")) == 0.0
    assert float(output_loss(a, 2 * a, "cosine")) == pytest.approx(0.0, abs=1e-6), "scale does not matter"
    assert float(output_loss(a, -a, "cosine")) == pytest.approx(2.0)
    assert float(output_loss(a, a + 1, "mse")) == pytest.approx(1.0)


# --- options -----------------------------------------------------------------------------------


def test_options_are_validated_with_the_field_named() -> None:
    options = DistillOptions.from_mapping(
        {"kind": "distill", "student": {"arch": "mlp"}, "temperature": 4, "alpha": 0.7, "epochs": 5}
    )
    assert options == DistillOptions(temperature=4.0, alpha=0.7, epochs=5)
    cases = {
        "temperature": [{"temperature": 0}, {"temperature": -1.0}, {"temperature": math.inf}],
        "alpha": [{"alpha": 1.5}, {"alpha": -0.1}, {"alpha": True}],
        "mode": [{"mode": "kl"}],
        "epochs": [{"epochs": 0}, {"epochs": 1.5}],
        "lr": [{"lr": 0}],
        "batch_size": [{"batch_size": 0}],
        "beta": [{"beta": 0.1}],
    }
    for field, mappings in cases.items():
        for mapping in mappings:
            with pytest.raises(DistillError) as raised:
                DistillOptions.from_mapping(mapping)
            assert raised.value.field == field, mapping
