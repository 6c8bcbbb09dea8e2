"""Fine-tuning end to end: the pretrained MiniLM text encoder fine-tuned on a small labelled text
set built offline (docstring sentences of numpy, sqlalchemy and aiohttp, labelled by their
package) by a training job under torchrun, registered, compressed to int8 by a compression job,
deployed, and asked with strings through ``/v2`` (JSON BYTES) and ``tritonclient.http``; then
``init_from``: a digits MLP started from a registered version gives that version's accuracy, and
the misuses answer 422 at their field.

Kept short for 2 loaded cores: 32 tokens a text, the embeddings and the 4 lower layers frozen,
3 epochs of 10 steps of 16 texts.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.text_model import TextPreprocessor
from tests.support.api import (
    create_job,
    deploy_ready,
    download_artifact,
    infer,
    run_job,
    upload,
)
from tests.support.datasets import digits_bytes, npz
from tests.support.text_datasets import labelled_sentences, text_csv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
]

MAX_LENGTH = 32
TEXT_MODEL = {"arch": "text_encoder", "pretrained": "all-minilm-l6-v2", "max_length": MAX_LENGTH, "freeze_layers": 4}
# one sentence per source, written here (not in the training data)
QUESTIONS = [
    ("Return a new array of the given shape, filled with zeros of the chosen dtype.", "numpy"),
    ("Commit the current transaction of this session to the database.", "sqlalchemy"),
    ("Send an HTTP GET request to the server and read the response headers.", "aiohttp"),
]


def text_rows() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training rows, held-out rows): 60 and 20 sentences of each source."""
    rows = labelled_sentences(80)
    return rows[: 3 * 60], rows[3 * 60 :]


async def test_a_text_encoder_is_fine_tuned_compressed_deployed_and_asked_with_strings(
    api, tenant, other_tenant, training_worker, compression_worker, model_server, tmp_path
):
    train, held_out = text_rows()
    name = f"docs-{secrets.token_hex(3)}"
    data_id = await upload(api, tenant, text_csv(train), "docs.csv")
    spec = {
        "model": TEXT_MODEL,
        "dataset": {"file_id": data_id, "text_column": "text", "label_column": "source"},
        "validation": {"fraction": 0.1},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 3, "batch_size": 16, "lr": 5e-4, "seed": 0},
        "register_as": name,
    }
    job = await run_job(api, tenant, {"type": "training", "spec": spec}, timeout_s=600)
    assert job["status"] == "succeeded", json.dumps(job, indent=1)[-3000:]
    metrics = job["result"]["metrics"]
    print("\nfine-tune metrics:", json.dumps(metrics))
    assert metrics["val_accuracy"] >= 0.75  # 3 classes: chance is 0.33
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert job["result"]["classes"] == ["aiohttp", "numpy", "sqlalchemy"]

    version = await (await api.get(f"/v1/models/{name}/versions/1", headers=tenant.headers)).json()
    assert version["signature"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in version["signature"]["outputs"]] == ["scores", "label"]
    assert version["signature"]["graph_inputs"][0]["name"] == "input_ids"

    # the version's own file, run here: it carries its tokenizer
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(await download_artifact(api, tenant, job["result"]["artifacts"]["model"]))
    texts = [text for text, _ in held_out]
    labels = [label for _, label in held_out]
    local = run_text_model(fp32, texts)
    assert np.mean(local["label"] == np.array(labels, dtype=object)) >= 0.75

    await refused_misuses(api, tenant, other_tenant, name)

    # int8 by a compression job, measured on the held-out texts (the worker tokenizes them as the model says)
    eval_id = await upload(api, tenant, npz(text=np.array(texts), y=np.array(labels)), "docs-eval.npz")
    compression = {
        "source": {"model": name, "version": 1},
        "passes": [{"kind": "quantize", "mode": "dynamic"}],
        "eval": {"file_id": eval_id},
        "measurement": {"threads": 2, "latency_iterations": 5, "throughput_iterations": 2, "warmup": 1},
        "register_as": f"{name}-int8",
    }
    compressed = await run_job(api, tenant, {"type": "compression", "spec": compression}, timeout_s=600)
    assert compressed["status"] == "succeeded", json.dumps(compressed, indent=1)[-3000:]
    fp32_row, int8_row = compressed["result"]["report"]["stages"]
    print(
        "compression:", json.dumps({k: compressed["metrics"][k] for k in ("accuracy", "source_accuracy", "onnx_bytes")})
    )
    assert int8_row["onnx_bytes"] < 0.5 * fp32_row["onnx_bytes"]
    assert int8_row["accuracy"] >= 0.7
    int8_name = f"{name}-int8"
    int8_version = await (await api.get(f"/v1/models/{int8_name}/versions/1", headers=tenant.headers)).json()
    assert int8_version["signature"]["inputs"] == version["signature"]["inputs"]  # the tokenizer came along

    await deploy_ready(api, tenant, int8_name, 1)
    strings = [text for text, _ in QUESTIONS] + texts[:9]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(strings)], "data": strings}]}
    response = await infer(api, tenant, int8_name, body)
    assert response.status == 200, await response.text()
    outputs = {o["name"]: o for o in (await response.json())["outputs"]}
    print("/v2 answer:", json.dumps({"label": outputs["label"]["data"][:3], "scores": outputs["scores"]["data"][:3]}))
    served_labels = outputs["label"]["data"]
    assert outputs["scores"]["shape"] == [len(strings), 3] and outputs["label"]["datatype"] == "BYTES"
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(await download_artifact(api, tenant, compressed["result"]["artifacts"]["model"]))
    assert served_labels == run_text_model(int8, strings)["label"].tolist()  # the server tokenized as the file says
    wanted = [label for _, label in QUESTIONS] + labels[:9]
    assert np.mean(np.array(served_labels) == np.array(wanted)) >= 0.7

    url = str(api.make_url("")).removeprefix("http://").rstrip("/")
    by_triton = await asyncio.to_thread(triton_labels, url, tenant.headers, int8_name, strings)
    assert by_triton == {"json": served_labels, "binary": served_labels}


def run_text_model(path: Path, texts: list[str]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = text_preprocessor(path)({"text": np.array(texts, dtype=object)})
    return dict(zip(["scores", "label"], session.run(["scores", "label"], feed), strict=True))


def text_preprocessor(path: Path) -> TextPreprocessor:
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    found = TextPreprocessor.of(metadata)
    assert found is not None
    return found


def triton_labels(url: str, headers: dict[str, str], name: str, strings: list[str]) -> dict[str, list[str]]:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url)
    try:
        found = {}
        for binary in (False, True):
            given = triton.InferInput("text", [len(strings)], "BYTES")
            given.set_data_from_numpy(np.array([s.encode() for s in strings], dtype=object), binary_data=binary)
            asked = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "scores")]
            result = client.infer(name, [given], outputs=asked, headers=headers)
            found["binary" if binary else "json"] = [
                v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()
            ]
        return found
    finally:
        client.close()


async def refused_misuses(api, tenant, other_tenant, name: str) -> None:
    """init_from of another architecture, of another tenant's version, a text column that is not there."""
    digits = {"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}, "init_from": {"model": name, "version": 1}}
    await assert_422(api, tenant, digits, "/init_from", f"model '{name}' version 1 is a text_encoder")
    await assert_422(api, other_tenant, digits, "/init_from/model", f"no model '{name}'")
    missing = {**digits, "init_from": {"model": name, "version": 9}}
    await assert_422(api, tenant, missing, "/init_from/version", "has no version 9")
    data_id = await upload(api, tenant, text_csv([("A sentence.", "a"), ("Another one.", "b")]), "tiny.csv")
    no_column = {
        "model": TEXT_MODEL,
        "dataset": {"file_id": data_id, "text_column": "body", "label_column": "source"},
        "hyperparameters": {"batch_size": 1},
    }
    await assert_422(api, tenant, no_column, "/dataset/text_column", "there is no column 'body'")


async def assert_422(api, tenant, spec: dict[str, Any], pointer: str, detail: str) -> None:
    response = await create_job(api, tenant, {"type": "training", "spec": spec})
    assert response.status == 422, await response.text()
    problems = (await response.json())["errors"]
    assert any(p["pointer"] == f"/spec{pointer}" and detail in p["detail"] for p in problems), problems


async def test_init_from_starts_a_digits_mlp_where_a_registered_version_ended(api, tenant, training_worker):
    data_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    name = f"digits-{secrets.token_hex(3)}"
    base = {
        "model": {"arch": "mlp", "hidden": [32]},
        "dataset": {"file_id": data_id},
        "validation": {"fraction": 0.2},
        "hyperparameters": {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 0},
    }
    first = await run_job(api, tenant, {"type": "training", "spec": {**base, "register_as": name}}, timeout_s=300)
    assert first["status"] == "succeeded", first
    # one step at a learning rate too small to move anything, from version 1: version 1's accuracy
    still = {**base, "hyperparameters": {**base["hyperparameters"], "max_steps": 1, "lr": 1e-12}}
    again = await run_job(
        api, tenant, {"type": "training", "spec": {**still, "init_from": {"model": name, "version": 1}}}, timeout_s=300
    )
    assert again["status"] == "succeeded", again
    assert again["result"]["metrics"]["val_accuracy"] == first["result"]["metrics"]["val_accuracy"] > 0.8
    fresh = await run_job(api, tenant, {"type": "training", "spec": still}, timeout_s=300)
    assert fresh["result"]["metrics"]["val_accuracy"] < 0.5  # the same step from scratch knows nothing
    wider = {**base, "model": {"arch": "mlp", "hidden": [64]}, "init_from": {"model": name, "version": 1}}
    await assert_422(api, tenant, wider, "/init_from", "has hidden [32]")
