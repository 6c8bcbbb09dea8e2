"""A regression head end to end: the pretrained MiniLM text encoder fine-tuned by a training job
under torchrun to predict a number per text (a topic score: numpy's docstring sentences 0,
sqlalchemy's 1, aiohttp's 2), early stopping and the kept checkpoint ranked by regression
metrics; the version outputs one ``value`` per text and no label, and a deployment takes strings
through ``/v2``. Then a compression job quantizes it to int8 and measures every stage by MAE, RMSE
and R² on held-out scores (a classifier's accuracy floor for it is a 422 at its field).

Kept short for 2 loaded cores, as the classifier's e2e: 32 tokens a text, the embeddings and the
4 lower layers frozen, 3 epochs of 16 texts a step.
"""

from __future__ import annotations

import json
import secrets

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.text_model import TextPreprocessor
from tests.support.api import create_job, deploy_ready, download_artifact, infer, run_job, upload
from tests.support.datasets import npz
from tests.support.text_datasets import SOURCES, labelled_sentences, text_csv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
]

SCORE = {source: float(index) for index, source in enumerate(SOURCES)}


async def test_a_text_encoder_with_a_regression_head_predicts_a_value_per_string(
    api, tenant, training_worker, compression_worker, model_server, tmp_path
):
    rows = labelled_sentences(80)
    train, held_out = rows[: 3 * 60], rows[3 * 60 :]
    scored = [(text, str(SCORE[source])) for text, source in train]
    data_id = await upload(api, tenant, text_csv(scored, label="score"), "scores.csv")
    name = f"scores-{secrets.token_hex(3)}"
    spec = {
        "model": {
            "arch": "text_encoder",
            "pretrained": "all-minilm-l6-v2",
            "max_length": 32,
            "freeze_layers": 4,
            "head": "regression",
        },
        "dataset": {"file_id": data_id, "text_column": "text", "label_column": "score"},
        "validation": {"fraction": 0.1},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 5e-4,
            "seed": 0,
            "early_stopping": {"metric": "val_r2", "patience": 2},
        },
        "checkpoints": {"keep_best": {"metric": "val_mae"}},
        "register_as": name,
    }
    job = await run_job(api, tenant, {"type": "training", "spec": spec}, timeout_s=600)
    assert job["status"] == "succeeded", json.dumps(job, indent=1)[-3000:]
    metrics = job["result"]["metrics"]
    print("\nregression fine-tune metrics:", json.dumps(metrics))
    assert "val_accuracy" not in metrics and "train_accuracy" not in metrics
    assert metrics["val_r2"] >= 0.5 and metrics["val_rmse"] ** 2 == pytest.approx(metrics["val_loss"])
    assert metrics["val_mae"] < 0.6 and "train_mae" in metrics and "best_step" in metrics
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert job["result"]["classes"] == []

    version = await (await api.get(f"/v1/models/{name}/versions/1", headers=tenant.headers)).json()
    assert version["signature"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in version["signature"]["outputs"]] == [("value", "FP32")]

    texts = [text for text, _ in held_out]
    wanted = np.array([SCORE[source] for _, source in held_out])
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(await download_artifact(api, tenant, job["result"]["artifacts"]["model"]))
    local = run_values(fp32, texts)
    assert np.abs(local - wanted).mean() < 0.6  # held-out texts; a constant guess of the mean is off by 0.67

    await deploy_ready(api, tenant, name, 1)
    asked = texts[:12]  # within the deployment's max_batch_size
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(asked)], "data": asked}]}
    response = await infer(api, tenant, name, body)
    assert response.status == 200, await response.text()
    (output,) = (await response.json())["outputs"]
    print("/v2 answer:", json.dumps({k: output[k] for k in ("name", "datatype", "shape")}), output["data"][:3])
    assert (output["name"], output["datatype"], output["shape"]) == ("value", "FP32", [len(asked)])
    np.testing.assert_allclose(output["data"], local[:12], atol=1e-4)  # the server tokenized as the file says

    # int8 by a compression job, judged by its error on the held-out scores (the worker tokenizes the texts)
    eval_id = await upload(api, tenant, npz(text=np.array(texts), y=wanted), "scores-eval.npz")
    compression = {
        "source": {"model": name, "version": 1},
        "passes": [{"kind": "quantize", "mode": "dynamic"}],
        "eval": {"file_id": eval_id},
        "measurement": {"threads": 2, "latency_iterations": 5, "throughput_iterations": 2, "warmup": 1},
    }
    classifier_floor = {**compression, "accuracy_floor": {"min_accuracy": 0.5}}
    refused = await create_job(api, tenant, {"type": "compression", "spec": classifier_floor})
    assert refused.status == 422, await refused.text()
    assert [p["pointer"] for p in (await refused.json())["errors"]] == ["/spec/accuracy_floor/min_accuracy"]
    compressed = await run_job(api, tenant, {"type": "compression", "spec": compression}, timeout_s=600)
    assert compressed["status"] == "succeeded", json.dumps(compressed, indent=1)[-3000:]
    report, summary = compressed["result"]["report"], compressed["result"]["metrics"]
    print("compression:", json.dumps({k: summary[k] for k in ("source_mae", "mae", "rmse", "r2", "mae_ratio")}))
    assert report["metric"] == "mae"
    fp32_row, int8_row = report["stages"]
    assert fp32_row["mae"] == pytest.approx(np.abs(local - wanted).mean(), rel=1e-3)  # what the file computes
    assert int8_row["accuracy"] is None and int8_row["mae"] <= 1.1 * fp32_row["mae"]  # the default ceiling
    assert int8_row["r2"] > 0.5 and int8_row["mean_cosine"] > 0.99
    assert int8_row["onnx_bytes"] < 0.5 * fp32_row["onnx_bytes"]
    assert (summary["mae"], summary["source_mae"]) == (int8_row["mae"], fp32_row["mae"])


def run_values(path, texts: list[str]) -> np.ndarray:
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    preprocess = TextPreprocessor.of(metadata)
    assert preprocess is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (values,) = session.run(["value"], preprocess({"text": np.array(texts, dtype=object)}))
    return values
