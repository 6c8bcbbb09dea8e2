"""Fine-tuning pieces without a service: the text-encoder spec and its 422s, text datasets read
and tokenized with MiniLM's own tokenizer, the text model's declared tokenizer and signature,
and starting from a version's weights (``init_from``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from core.onnx_model import OnnxModel
from core.onnx_signature import UnsupportedSignature, read_signature
from core.text_model import TOKENIZER_KEY, TextDeclaration, TextPreprocessor, declaration, feed_inputs
from job_types.init_from import fit_problems
from tests.support.text_models import token_count_model
from training.data import DatasetError, load_splits
from training.export import export_onnx, onnx_max_abs_diff
from training.spec import CNNSpec, MLPSpec, TextEncoderSpec, TrainingSpec, check_dataset_fits
from training.text_data import TextTableError, read_text_table, tokenize_texts
from training.text_encoder import TextClassifier, build_text_classifier, freeze, load_tokenizer, trainable_parameters
from training.zoo import InitFromError, build_model, load_initial_weights

TEXT_MODEL = {"arch": "text_encoder", "pretrained": "all-minilm-l6-v2", "max_length": 16}
TEXT_DATA = {"file_id": "file_abc", "text_column": "text", "label_column": "source"}


def text_spec(**parts: Any) -> dict[str, Any]:
    return {"model": TEXT_MODEL, "dataset": TEXT_DATA, **parts}


def pointers(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate(data)
    return ["".join(f"/{part}" for part in e["loc"]) for e in info.value.errors()]


# --- the spec ----------------------------------------------------------------------------------


def test_a_text_encoder_spec_validates_with_its_defaults() -> None:
    spec = TrainingSpec.model_validate(text_spec())
    assert isinstance(spec.model, TextEncoderSpec)
    assert (spec.model.freeze_encoder, spec.model.freeze_layers, spec.model.max_length) == (False, 0, 16)
    assert spec.dataset.text_column == "text" and spec.init_from is None


@pytest.mark.parametrize(
    ("data", "pointer"),
    [
        (text_spec(dataset={"file_id": "file_abc", "label_column": "source"}), "/dataset/text_column"),
        (text_spec(dataset={"builtin": "digits"}), "/dataset/builtin"),
        ({"model": {"arch": "mlp"}, "dataset": TEXT_DATA}, "/dataset/text_column"),
        (text_spec(strategy={"kind": "fsdp", "nproc_per_node": 2}), "/strategy/kind"),
        (text_spec(model={**TEXT_MODEL, "freeze_layers": 7}), "/model/freeze_layers"),
        (text_spec(model={**TEXT_MODEL, "freeze_layers": 2, "freeze_encoder": True}), "/model/freeze_layers"),
        (text_spec(model={**TEXT_MODEL, "pretrained": "bert-large"}), "/model/pretrained"),
        (text_spec(model={**TEXT_MODEL, "max_length": 4096}), "/model/max_length"),
        (text_spec(init_from={"model": "reviews", "version": 0}), "/init_from/version"),
    ],
)
def test_misused_text_options_are_refused_at_their_field(data: dict[str, Any], pointer: str) -> None:
    assert pointers(data) == [pointer]


def fits(details: dict[str, Any], **parts: Any) -> list[str]:
    return [p["pointer"] for p in check_dataset_fits(TrainingSpec.model_validate(text_spec(**parts)), details)]


def test_the_text_column_must_exist_in_the_uploaded_file() -> None:
    assert fits({"columns": ["text", "source"], "rows": 100}) == []
    assert fits({"columns": ["body", "source"], "rows": 100}) == ["/dataset/text_column"]
    assert fits({"columns": ["text", "label"], "rows": 100}) == ["/dataset/label_column"]
    parquet = {"columns": [{"name": "text", "type": "int64"}, {"name": "source", "type": "string"}], "rows": 100}
    assert fits(parquet) == ["/dataset/text_column"]
    assert fits({"arrays": {"X": {"dtype": "float32", "shape": [10, 4]}}}) == ["/dataset/text_column"]
    details = check_dataset_fits(TrainingSpec.model_validate(text_spec()), {"columns": ["body", "source"], "rows": 9})
    assert "there is no column 'text'" in details[0]["detail"] and "body, source" in details[0]["detail"]


def test_a_batch_larger_than_the_training_rows_is_refused_for_texts_too() -> None:
    hp = {"batch_size": 64}
    assert fits({"columns": ["text", "source"], "rows": 40}, hyperparameters=hp) == ["/hyperparameters/batch_size"]


# --- text datasets -----------------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "source"])
        writer.writerows(rows)
    return path


ROWS = [
    ("Arrays hold numbers of one type.", "numpy"),
    ("A session talks to the database.", "sqlalchemy"),
    ("12345", "numpy"),  # text that looks like a number stays text
    ("The client sends an HTTP request and reads the response.", "aiohttp"),
] * 3


def test_a_csv_text_set_is_read_as_strings_and_labels(tmp_path: Path) -> None:
    texts, labels = read_text_table(write_csv(tmp_path / "d.csv", ROWS), "text", "source", "/dataset")
    assert texts[:3] == ["Arrays hold numbers of one type.", "A session talks to the database.", "12345"]
    assert list(labels[:2]) == ["numpy", "sqlalchemy"]
    with pytest.raises(TextTableError) as missing:
        read_text_table(tmp_path / "d.csv", "body", "source", "/dataset")
    assert missing.value.pointer == "/dataset/text_column"


def test_a_parquet_text_column_of_numbers_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [1, 2, 3], "source": ["a", "b", "a"]}), tmp_path / "d.parquet")
    with pytest.raises(TextTableError) as wrong:
        read_text_table(tmp_path / "d.parquet", "text", "source", "/dataset")
    assert wrong.value.pointer == "/dataset/text_column" and "int64" in wrong.value.detail


def test_texts_are_tokenized_with_minilms_tokenizer_cut_at_max_length() -> None:
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    ids = tokenize_texts(tokenizer, ["Hello world.", "word " * 100], max_length=16)
    assert ids.dtype == np.int64 and ids.shape == (2, 16)
    assert ids[0, 0] == tokenizer.cls_token_id and ids[1, -1] == tokenizer.sep_token_id
    assert (ids[0, 5:] == tokenizer.pad_token_id).all()  # [CLS] hello world . [SEP], then padding


def test_load_splits_gives_token_ids_and_the_sources_as_classes(tmp_path: Path) -> None:
    spec = TrainingSpec.model_validate(text_spec(validation={"fraction": 0.25}, hyperparameters={"batch_size": 4}))
    splits = load_splits(spec, write_csv(tmp_path / "d.csv", ROWS))
    assert splits.classes == ["aiohttp", "numpy", "sqlalchemy"]
    assert splits.train_x.dtype == torch.int64 and len(splits.train_y) == 9 and len(splits.val_y) == 3
    missing = TrainingSpec.model_validate(text_spec(dataset={**TEXT_DATA, "text_column": "body"}))
    with pytest.raises(DatasetError) as info:
        load_splits(missing, tmp_path / "d.csv")
    assert info.value.pointer == "/dataset/text_column"


# --- the text model: declared tokenizer, signature, serving --------------------------------------


def ids_model(path: Path, max_length: int = 8) -> Path:
    path.write_bytes(token_count_model(max_length))
    return path


def test_a_text_model_shows_clients_a_string_input_and_keeps_its_graph_inputs(tmp_path: Path) -> None:
    signature = read_signature(onnx.load(str(ids_model(tmp_path / "m.onnx"))))
    assert signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert feed_inputs(signature) == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[1]  # the tokenizer
    with pytest.raises(UnsupportedSignature, match=r"carries no maas\.tokenizer"):
        read_signature(model)


def test_a_session_tokenizes_a_batch_of_strings_padded_to_its_longest(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(ids_model(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    preprocess = TextPreprocessor.of(session.get_modelmeta().custom_metadata_map)
    assert preprocess is not None
    model = OnnxModel(session, ["count"], preprocess=preprocess)
    texts = np.array([b"Hello world.", "caf\u00e9".encode(), b"word " * 50], dtype=object)
    feed = preprocess({"text": texts})
    assert feed["input_ids"].shape == (3, 8)  # the longest row, cut at max_length
    # [CLS] hello world . [SEP] = 5; [CLS] cafe [SEP] = 3 (accents stripped); 8 at most
    assert model.run({"text": texts})["count"].tolist() == [5, 3, 8]


def test_a_malformed_declaration_is_refused() -> None:
    assert declaration({}) is None
    with pytest.raises(ValueError, match="malformed"):
        declaration({"maas.text": "{}", TOKENIZER_KEY: "{}"})


# --- init_from -----------------------------------------------------------------------------------


def test_init_from_needs_the_same_architecture_and_weight_shaping_settings() -> None:
    mlp = MLPSpec(arch="mlp", hidden=[64])
    assert fit_problems(mlp, MLPSpec(arch="mlp", hidden=[64], dropout=0.5), "v1") == []
    (other,) = fit_problems(CNNSpec(arch="cnn"), mlp, "model 'digits' version 1")
    assert other == {"pointer": "/init_from", "detail": "model 'digits' version 1 is a cnn; this job trains a mlp"}
    (wider,) = fit_problems(MLPSpec(arch="mlp", hidden=[128]), mlp, "v1")
    assert wider["pointer"] == "/init_from" and "hidden [128]" in wider["detail"]
    text = TextEncoderSpec(arch="text_encoder", pretrained="all-minilm-l6-v2")
    frozen = TextEncoderSpec(arch="text_encoder", pretrained="all-minilm-l6-v2", freeze_layers=3)
    assert fit_problems(text, frozen, "v") == []


def test_a_versions_weights_are_loaded_and_a_head_for_other_classes_starts_afresh(tmp_path: Path) -> None:
    spec = MLPSpec(arch="mlp", hidden=[16])
    torch.manual_seed(0)
    source = build_model(spec, 8, 3)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    same = build_model(spec, 8, 3)
    assert load_initial_weights(same, tmp_path / "w.safetensors") == []
    x = torch.randn(4, 8)
    assert torch.equal(same(x), source(x))
    torch.manual_seed(1)
    more_classes = build_model(spec, 8, 5)
    assert load_initial_weights(more_classes, tmp_path / "w.safetensors") == ["1.weight", "1.bias"]
    assert torch.equal(more_classes[0][0].weight, source[0][0].weight)
    with pytest.raises(InitFromError, match="shape"):
        load_initial_weights(build_model(spec, 12, 3), tmp_path / "w.safetensors")
    with pytest.raises(InitFromError, match="not this model's"):
        load_initial_weights(build_model(MLPSpec(arch="mlp", hidden=[16, 16]), 8, 3), tmp_path / "w.safetensors")


def test_a_validation_file_of_texts_is_tokenized_the_same_way(tmp_path: Path) -> None:
    spec = TrainingSpec.model_validate(text_spec(validation={"file_id": "file_val"}, hyperparameters={"batch_size": 4}))
    val = write_csv(tmp_path / "v.csv", [("A database session.", "sqlalchemy"), ("word " * 40, "numpy")])
    splits = load_splits(spec, write_csv(tmp_path / "d.csv", ROWS), val)
    assert splits.val_x.shape == (2, 16) and splits.val_y.tolist() == [2, 1]
    unknown = write_csv(tmp_path / "u.csv", [("A new label.", "pandas")])
    with pytest.raises(DatasetError) as info:
        load_splits(spec, tmp_path / "d.csv", unknown)
    assert info.value.pointer == "/validation/file_id"


# --- the text classifier on a tiny random BERT: freezing, export --------------------------------


def tiny_classifier(classes: int = 3, regression: bool = False) -> TextClassifier:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, pad_token_id=0
    )
    config._attn_implementation = "eager"  # as build_text_classifier asks: plain MatMul/Softmax in the graph
    torch.manual_seed(0)
    encoder = BertModel(config, add_pooling_layer=False)
    return TextClassifier(
        encoder, classes, pretrained="all-minilm-l6-v2", max_length=8, pad_id=0, dropout=0.0, regression=regression
    )


def test_freezing_stops_the_embeddings_and_lower_layers_or_the_whole_encoder() -> None:
    model = tiny_classifier()
    every = trainable_parameters(model)
    freeze(model, encoder_entirely=False, lower_layers=2)
    trains = {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert trains == {"encoder.encoder", "head.weight", "head.bias"}
    assert all(p.requires_grad for p in model.encoder.encoder.layer[2].parameters())
    assert not any(p.requires_grad for p in model.encoder.encoder.layer[1].parameters())
    assert 0 < trainable_parameters(model) < every
    freeze(model, encoder_entirely=True, lower_layers=0)
    assert trainable_parameters(model) == 3 * 16 + 3


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_text_classifier_exports_scores_labels_and_its_tokenizer(tmp_path: Path) -> None:
    model = tiny_classifier().eval()
    ids = torch.tensor([[1, 5, 9, 2, 0, 0], [1, 7, 7, 7, 8, 2], [1, 2, 0, 0, 0, 0]])
    path = tmp_path / "text.onnx"
    export_onnx(model, 6, path, classes=["aiohttp", "numpy", "sqlalchemy"])
    assert not model.training  # the exporter restores its wrapper's mode, and so the model's, when it is done
    assert onnx_max_abs_diff(model, path, ids) < 1e-5
    signature = read_signature(onnx.load(str(path)))
    assert signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in signature["outputs"]] == [("scores", "FP32"), ("label", "BYTES")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, labels = session.run(["scores", "label"], {"input_ids": ids.numpy()})
    with torch.no_grad():
        expected = torch.softmax(model(ids), dim=1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert labels.tolist() == [["aiohttp", "numpy", "sqlalchemy"][i] for i in expected.argmax(1)]
    # padding does not change a text's scores: the mask comes from the padding id
    np.testing.assert_allclose(session.run(["scores"], {"input_ids": ids[2:, :2].numpy()})[0], scores[2:], atol=1e-5)
    declared = declaration(session.get_modelmeta().custom_metadata_map)
    assert declared == TextDeclaration("text", "input_ids", 8, 0)


def test_the_zoo_model_of_a_version_comes_from_its_training_job_or_a_compression_lineage() -> None:
    from core.models import Job
    from job_types.init_from import source_model

    spec = {"model": {"arch": "mlp", "hidden": [8]}, "dataset": {"builtin": "digits"}}
    trained = source_model(Job(type="training", spec=spec), {"kind": "training"})
    assert trained == MLPSpec(arch="mlp", hidden=[8])
    pruned = {"kind": "compression", "model": {"arch": "cnn", "channels": [4, 8]}}
    assert source_model(Job(type="compression", spec={}), pruned) == CNNSpec(arch="cnn", channels=[4, 8])
    assert source_model(Job(type="compression", spec={}), {"kind": "compression"}) is None  # an ONNX-only result
    assert source_model(Job(type="training", spec={"model": {"arch": "gone"}}), {"kind": "training"}) is None


def test_an_npz_of_texts_stands_for_the_token_ids_of_a_text_model(tmp_path: Path) -> None:
    from core.text_model import npz_texts_as_ids, texts_as_ids_details

    signature = read_signature(onnx.load(str(ids_model(tmp_path / "m.onnx"))))
    texts = {"arrays": {"text": {"dtype": "<U12", "shape": [2]}, "y": {"dtype": "<U5", "shape": [2]}}}
    seen = texts_as_ids_details(texts, signature)
    assert seen["arrays"] == {"y": {"dtype": "<U5", "shape": [2]}, "input_ids": {"dtype": "int64", "shape": [2, 1]}}
    ids = {"arrays": {"input_ids": {"dtype": "int64", "shape": [2, 4]}}}
    assert texts_as_ids_details(ids, signature) is ids
    tensors = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    assert texts_as_ids_details(texts, tensors) is texts

    preprocess = TextPreprocessor.of({p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props})
    assert preprocess is not None
    np.savez(tmp_path / "t.npz", text=np.array(["Hello world.", "cafe"]), y=np.array(["a", "b"]))
    converted = npz_texts_as_ids(tmp_path / "t.npz", preprocess, tmp_path / "ids.npz")
    with np.load(converted) as out:
        assert sorted(out.files) == ["input_ids", "y"] and out["input_ids"].shape == (2, 5)
    np.savez(tmp_path / "x.npz", input_ids=np.zeros((2, 3), np.int64))
    assert npz_texts_as_ids(tmp_path / "x.npz", preprocess, tmp_path / "no.npz") == tmp_path / "x.npz"


# --- the regression head -------------------------------------------------------------------------

REGRESSION_MODEL = {**TEXT_MODEL, "head": "regression"}
SCORE_DATA = {"file_id": "file_abc", "text_column": "text", "label_column": "score"}


def regression_spec(**parts: Any) -> dict[str, Any]:
    return {"model": REGRESSION_MODEL, "dataset": SCORE_DATA, **parts}


def test_a_regression_head_watches_regression_metrics_and_a_classifier_its_own() -> None:
    spec = TrainingSpec.model_validate(
        regression_spec(
            hyperparameters={"early_stopping": {"metric": "val_r2"}}, checkpoints={"keep_best": {"metric": "val_mae"}}
        )
    )
    assert isinstance(spec.model, TextEncoderSpec) and spec.model.head == "regression"
    assert spec.hyperparameters.early_stopping is not None and spec.hyperparameters.early_stopping.mode == "max"
    assert TrainingSpec.model_validate(text_spec()).model.head == "classification"  # type: ignore[union-attr]
    accuracy = {"early_stopping": {"metric": "val_accuracy"}}
    assert pointers(regression_spec(hyperparameters=accuracy)) == ["/hyperparameters/early_stopping/metric"]
    assert pointers(text_spec(checkpoints={"keep_best": {"metric": "val_rmse"}})) == ["/checkpoints/keep_best/metric"]
    digits = {"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}}
    assert pointers({**digits, "hyperparameters": {"early_stopping": {"metric": "val_mae"}}}) == [
        "/hyperparameters/early_stopping/metric"
    ]
    assert pointers(regression_spec(hyperparameters={"early_stopping": {"metric": "val_mae", "mode": "max"}})) == [
        "/hyperparameters/early_stopping/mode"
    ]
    assert pointers(text_spec(model={**TEXT_MODEL, "head": "ranking"})) == ["/model/head"]


def test_a_regression_heads_label_column_must_hold_numbers_where_the_upload_says_its_type() -> None:
    def parquet(label_type: str) -> dict[str, Any]:
        return {"columns": [{"name": "text", "type": "string"}, {"name": "score", "type": label_type}], "rows": 50}

    spec = TrainingSpec.model_validate(regression_spec())
    assert check_dataset_fits(spec, parquet("double")) == [] and check_dataset_fits(spec, parquet("int64")) == []
    (problem,) = check_dataset_fits(spec, parquet("string"))
    assert problem == {
        "pointer": "/dataset/label_column",
        "detail": "column 'score' has type string; a regression head needs numeric labels",
    }
    assert check_dataset_fits(spec, {"columns": ["text", "score"], "rows": 50}) == []  # a csv is typed when read
    classifier = TrainingSpec.model_validate(text_spec(dataset=SCORE_DATA))
    assert check_dataset_fits(classifier, parquet("string")) == []


def write_scores(path: Path, rows: list[tuple[str, Any]]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "score"])
        writer.writerows(rows)
    return path


SCORED = [(text, float(len(text.split()))) for text, _ in ROWS]


def test_a_regression_set_keeps_its_labels_as_float_targets_and_refuses_words(tmp_path: Path) -> None:
    parts = {"validation": {"fraction": 0.25}, "hyperparameters": {"batch_size": 4}}
    spec = TrainingSpec.model_validate(regression_spec(**parts))
    splits = load_splits(spec, write_scores(tmp_path / "d.csv", SCORED))
    assert splits.regression and splits.classes == []
    assert splits.train_y.dtype == torch.float32 and len(splits.train_y) == 9 and len(splits.val_y) == 3
    assert sorted(splits.train_y.tolist() + splits.val_y.tolist()) == sorted(score for _, score in SCORED)
    words = write_scores(tmp_path / "w.csv", [(text, label) for text, label in ROWS])
    with pytest.raises(DatasetError) as info:
        load_splits(spec, words)
    assert info.value.pointer == "/dataset/label_column" and "not numbers" in info.value.detail
    broken = write_scores(tmp_path / "n.csv", [*SCORED[:-1], (SCORED[-1][0], "inf")])
    with pytest.raises(DatasetError) as infinite:
        load_splits(spec, broken)
    assert "NaN or infinite" in infinite.value.detail


def test_regression_metrics_are_mse_mae_rmse_and_r2() -> None:
    from training.loop import regression_metrics

    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert regression_metrics(target.clone(), target) == {"loss": 0.0, "mae": 0.0, "rmse": 0.0, "r2": 1.0}
    mean = regression_metrics(torch.full((4,), 2.5), target)
    assert mean["loss"] == pytest.approx(1.25) and mean["mae"] == pytest.approx(1.0) and mean["r2"] == 0.0
    off = regression_metrics(target + torch.tensor([1.0, -1.0, 1.0, -3.0]), target)
    assert off["loss"] == pytest.approx(3.0) and off["rmse"] == pytest.approx(3.0**0.5)
    assert off["mae"] == pytest.approx(1.5) and off["r2"] == pytest.approx(1 - 12 / 5)


def test_a_regression_head_trains_on_squared_error_and_counts_absolute_errors() -> None:
    from training.dist import setup, teardown
    from training.loop import evaluate
    from training.strategies.base import add_batch_stats, task_loss

    output, target = torch.tensor([[1.0], [4.0]]), torch.tensor([2.0, 2.0])
    loss = task_loss(output, target)
    assert loss.item() == pytest.approx(2.5)
    counters = torch.tensor([1.0, 1.0, 1.0])
    add_batch_stats(counters, loss, output, target)
    assert counters.tolist() == pytest.approx([6.0, 4.0, 3.0])  # added to what was there

    spec = TrainingSpec.model_validate(regression_spec(hyperparameters={"batch_size": 8, "lr": 0.01}))
    ctx = setup()
    try:
        from training import strategies

        trainable = strategies.prepare(lambda *_: tiny_classifier(regression=True), ctx, spec)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 64, (8, 6), generator=generator)
        target = ids[:, 1].float() / 16  # a value the first word decides
        before = evaluate(copy_of(trainable), ids, target)
        for _ in range(60):
            totals = torch.zeros(3)
            trainable.train_step(ids, target, totals)
        after = evaluate(copy_of(trainable), ids, target)
    finally:
        teardown()
    assert set(after) == {"loss", "mae", "rmse", "r2"}
    assert totals[2].item() == 8 and totals[1].item() > 0  # absolute errors, not a count of right answers
    assert after["loss"] < before["loss"] / 4 and after["r2"] > 0.5


def copy_of(trainable: Any) -> torch.nn.Module:
    model = trainable.full_model_on_rank0()
    assert model is not None
    return model


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_text_regression_model_exports_one_value_and_no_label(tmp_path: Path) -> None:
    model = tiny_classifier(regression=True).eval()
    ids = torch.tensor([[1, 5, 9, 2, 0, 0], [1, 7, 7, 7, 8, 2], [1, 2, 0, 0, 0, 0]])
    path = tmp_path / "regression.onnx"
    export_onnx(model, 6, path)
    assert onnx_max_abs_diff(model, path, ids) < 1e-5
    signature = read_signature(onnx.load(str(path)))
    assert signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in signature["outputs"]] == [("value", "FP32")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (values,) = session.run(["value"], {"input_ids": ids.numpy()})
    with torch.no_grad():
        expected = model(ids)[:, 0].numpy()
    assert values.shape == (3,)
    np.testing.assert_allclose(values, expected, atol=1e-5)
    np.testing.assert_allclose(session.run(["value"], {"input_ids": ids[2:, :2].numpy()})[0], values[2:], atol=1e-5)
    # served like the classifier: its tokenizer is declared, so clients send strings
    assert declaration(session.get_modelmeta().custom_metadata_map) == TextDeclaration("text", "input_ids", 8, 0)


def test_the_pretrained_encoder_is_built_in_training_mode_so_its_dropout_runs_while_it_is_fine_tuned() -> None:
    model = build_text_classifier(
        "all-minilm-l6-v2", 2, max_length=16, dropout=0.1, freeze_encoder=False, freeze_layers=2
    )
    assert all(module.training for module in model.modules())
