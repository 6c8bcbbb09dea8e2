"""A stock ``tritonclient.grpc`` session against the API's gRPC endpoint, run as its own process.

tritonclient's generated protos register ``inference.*`` in protobuf's default pool, as ours do:
both cannot be imported in one process (every OIP server's tests meet this), so tests run this
module with ``python -m tests.support.tritonclient_grpc URL KEY MODEL INPUTS.npz OUT.npz`` and read
what it found from ``OUT.npz`` (the outputs) and its stdout (one JSON document, the rest).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(url: str, key: str, model: str, inputs_path: str, out_path: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    arrays = dict(np.load(inputs_path))
    client = triton.InferenceServerClient(url=url)
    try:
        found: dict = {
            "live": client.is_server_live(headers=headers),
            "ready": client.is_server_ready(headers=headers),
            "server": client.get_server_metadata(headers=headers, as_json=True),
            "model": client.get_model_metadata(model, headers=headers, as_json=True),
            "model_ready": client.is_model_ready(model, "1", headers=headers),
        }
        given = []
        for name, array in arrays.items():
            tensor = triton.InferInput(name, list(array.shape), triton.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            given.append(tensor)
        result = client.infer(model, given, headers=headers, request_id="triton-1")
        response = result.get_response(as_json=True)
        found["response"] = {"model_name": response["model_name"], "id": response["id"]}
        outputs = {output["name"]: result.as_numpy(output["name"]) for output in response["outputs"]}
        for label, call in (
            ("unknown_model", lambda: client.infer("no-such-model", given, headers=headers)),
            ("no_key", lambda: client.is_server_ready()),
        ):
            try:
                call()
                found[label] = None
            except InferenceServerException as exc:
                found[label] = [exc.status(), exc.message()]
    finally:
        client.close()
    np.savez(out_path, **outputs)
    print(json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:6])
