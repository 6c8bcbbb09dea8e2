"""A model server's memory: the budget placement may fill, and the process's resident set (to measure a load).

``memory_budget``: ``MAAS_MODEL_SERVER_MEMORY_BYTES``, or by default half the machine's physical
memory shared among the ``inference_servers_per_host`` servers on it (the other half is the API's,
the workers' and the page cache's). ``resident_bytes``: this process's resident set now; a load's
memory is the difference before and after it (session, weights, warm-up buffers). Other loads at
the same moment blur it, and the allocator reuses what an unloaded model freed, so the control
loop never counts a version as less than its weights once per ONNX Runtime session it opened, and
ONNX Runtime is started (``start_onnxruntime``) before the first load is measured.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import psutil
from onnx import TensorProto, helper

from core.onnx_model import session_options
from core.settings import Settings

DEFAULT_SHARE = 0.5


def memory_budget(settings: Settings) -> int:
    if settings.model_server_memory_bytes:
        return settings.model_server_memory_bytes
    return int(psutil.virtual_memory().total * DEFAULT_SHARE) // settings.inference_servers_per_host


def resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def start_onnxruntime(threads: int, providers: list[str]) -> None:
    """Open and run a one-op model once, so that ONNX Runtime's own start-up (its environment, kernel
    registries, thread pools) is paid here and not counted in the first real model's memory or cold start."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "start",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(threads), providers=providers
    )
    session.run(["y"], {"x": np.zeros((1, 1), dtype=np.float32)})
