"""Sentence-encoder export on a tiny random BERT made here (the MiniLM belongs to the bench)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from compression.encoders import (  # noqa: E402
    EMBEDDING_OUTPUT,
    encoder_input_names,
    export_sentence_encoder,
    load_tokenizer,
    name_single_output,
    tokenize,
)
from compression.fidelity import make_session  # noqa: E402

# torch.export and the ONNX exporter warn about their own internals
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "fast",
    "slow",
    "red",
    "blue",
    "big",
    "small",
    "house",
    "tree",
]


def tiny_bert(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizer(str(vocab)).save_pretrained(str(folder))
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.set_seed(0)
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("tiny-bert")
    model_dir = tiny_bert(root / "model")
    report = export_sentence_encoder(
        model_dir, root / "encoder.onnx", parity_sentences=["the cat sat on the mat", "a dog ran"], tolerance=1e-4
    )
    return model_dir, report


def test_export_checks_and_matches_torch(exported: tuple[Path, object]) -> None:
    _, report = exported
    assert report.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert report.max_abs_diff < 1e-4
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == [EMBEDDING_OUTPUT]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value")


def test_embeddings_are_unit_length_and_ignore_padding(exported: tuple[Path, object]) -> None:
    model_dir, report = exported
    tokenizer = load_tokenizer(model_dir)
    session = make_session(report.path, intra_op_threads=1)
    short = "the red cat"
    batch = tokenize(tokenizer, [short, "the big blue dog ran fast on the small mat near the tree"], report.input_names)
    alone = tokenize(tokenizer, [short], report.input_names)
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # new batch and sequence sizes
    (padded,) = session.run([EMBEDDING_OUTPUT], batch)
    (single,) = session.run([EMBEDDING_OUTPUT], alone)
    np.testing.assert_allclose(np.linalg.norm(padded, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(padded[0], single[0], atol=1e-5)


def test_input_names_follow_the_tokenizer() -> None:
    assert encoder_input_names(["input_ids", "attention_mask"]) == ("input_ids", "attention_mask")
    assert encoder_input_names(["input_ids", "token_type_ids", "attention_mask"])[-1] == "token_type_ids"


def test_output_renaming_avoids_clashes() -> None:
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Identity", ["x"], ["embedding"]),
            onnx.helper.make_node("Identity", ["embedding"], ["out"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph)
    name_single_output(model, "embedding")
    onnx.checker.check_model(model)
    assert model.graph.output[0].name == "embedding"
    assert model.graph.node[1].input[0] == "embedding__inner"
