"""Turns a registered ONNX artifact into a warm ONNX Runtime session, ready for batches.

Owns everything ONNX Runtime-specific of running a model: fetching the file from the artifact
store with its recorded sha256 checked, the session options (threads), the warm-up batch and
the call itself. Synchronous; the model server's control loop (``serving``) calls it from a
thread, and batch inference jobs (``job_types.batch_inference``) call it directly.

Threads: each session gets ``inference_threads`` intra-op threads; 0 means the cores this
process may use divided by ``inference_servers_per_host`` (the model servers sharing the
machine), because a batch is one big ONNX Runtime call and should use every core it fairly
can. Inter-op parallelism stays at 1: our graphs are chains, and batching already keeps the
cores busy. The intra-op threads spin between ops only while a run is active (``spinning``):
between requests they sleep, leaving the cores to the processes that share them. A batch that
runs while another batch of the same model runs uses a single-threaded twin session instead
(:class:`OnnxModel`), so a busy server runs one thread per batch and an idle one gives a lone
request every core.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from core.onnx_signature import OIP_TO_NUMPY
from core.settings import Settings
from core.text_model import TextPreprocessor

Arrays = dict[str, np.ndarray]
CPU = ("CPUExecutionProvider",)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def inference_threads(settings: Settings, cores: int | None = None) -> int:
    if settings.inference_threads:
        return settings.inference_threads
    return max(1, (cores or usable_cores()) // settings.inference_servers_per_host)


def warmup_inputs(signature: Mapping[str, Any], batch_rows: int) -> Arrays:
    """A batch the model accepts: ``batch_rows`` on the first dimension, 1 for other free dimensions, zeros."""
    arrays: Arrays = {}
    for spec in signature.get("inputs", []):
        shape = spec.get("shape")
        if shape is None:
            shape = [-1]  # rank unknown: a guess; a model that disagrees fails its warm-up, and says why
        dims = [batch_rows if axis == 0 and dim == -1 else (1 if dim == -1 else dim) for axis, dim in enumerate(shape)]
        if spec["datatype"] == "BYTES":
            arrays[spec["name"]] = np.full(dims, "", dtype=object)
        else:
            arrays[spec["name"]] = np.zeros(dims, dtype=OIP_TO_NUMPY[spec["datatype"]])
    return arrays


@dataclass
class OnnxModel:
    """An ONNX Runtime session; :meth:`run` is the dynamic batcher's model call.

    A model that may run several batches at once can also hold a single-threaded twin session
    (``crowded_session``), for the batches that start while another one runs: two batches that
    each split every op across the same cores stall each other at every op's barrier, while one
    thread per batch does not. The twin holds the weights a second time.
    """

    session: ort.InferenceSession
    output_names: list[str]
    crowded_session: ort.InferenceSession | None = None
    # a text model's tokenizer (``core.text_model``): strings in, token ids to the graph
    preprocess: TextPreprocessor | None = None

    def run(self, inputs: Mapping[str, np.ndarray], crowded: bool = False) -> Arrays:
        """The outputs by name; ``crowded``: another batch of this model is running now."""
        if self.preprocess is not None:
            inputs = self.preprocess(inputs)
        feed = {name: _for_onnxruntime(array) for name, array in inputs.items()}
        session = self.crowded_session if crowded and self.crowded_session is not None else self.session
        return dict(zip(self.output_names, session.run(self.output_names, feed), strict=True))


# What ONNX Runtime raises when a run cannot go through its graph with these inputs (an index past an
# embedding table, shapes that do not broadcast…); not what it raises for a broken session or provider.
_RUN_ERRORS = (InvalidArgument, RuntimeException, Fail)


def is_input_error(exc: Exception) -> bool:
    """Whether an exception of :meth:`OnnxModel.run` may come from the content of the inputs it was given.

    The dynamic batcher then runs each request of the failed batch alone to find which one it was
    (``serving.batcher.UnrunnableInput``); any other exception fails the batch as a server error.
    """
    return isinstance(exc, _RUN_ERRORS)


def _for_onnxruntime(array: np.ndarray) -> np.ndarray:
    # The protocol carries BYTES as bytes; ONNX Runtime's string tensors take str.
    if array.dtype == object and array.size and isinstance(array.flat[0], bytes):
        return np.vectorize(lambda item: item.decode("utf-8", "surrogateescape"), otypes=[object])(array)
    return array


def session_options(threads: int, *, spinning: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning threads pick up the next op at once, but a spinning thread holds a core: stop as soon as no run is
    # active, so that between requests the cores go to the API and the event loops that share them
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class ModelFiles(Protocol):
    """Where :func:`load_model` gets a model file: the artifact store, or a cache in front of it."""

    def download_file(self, key: str, path: Path, expected_sha256: str | None = None) -> object: ...


def inference_providers(settings: Settings) -> list[str]:
    """ONNX Runtime's execution providers, in order: ``inference_providers``, or CUDA when this onnxruntime
    has it (a GPU build), then CPU. (The CUDA path is untested: no GPU where this was written.)"""
    if settings.inference_providers:
        return [name.strip() for name in settings.inference_providers.split(",") if name.strip()]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_model(
    store: ModelFiles,
    *,
    storage_key: str,
    sha256: str,
    signature: Mapping[str, Any],
    threads: int,
    warmup_rows: int,
    spinning: bool = True,
    crowded_session: bool = False,
    providers: Sequence[str] = CPU,
    timings: dict[str, float] | None = None,
) -> OnnxModel:
    """Download (checking the sha256), open and warm up a model; raises with the reason when it cannot.

    ``crowded_session``: also open the single-threaded twin (when ``threads`` > 1), see :class:`OnnxModel`.
    ``store``: the artifact store, or a model server's cache in front of it (``serving.artifact_cache``).
    ``timings``, when given, receives the seconds each step took: download, session, warmup.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maas-model-") as folder:
        path = Path(folder) / "model.onnx"
        store.download_file(storage_key, path, expected_sha256=sha256)
        downloaded = time.perf_counter()
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads, spinning=spinning), providers=list(providers)
        )
        twin = None
        if crowded_session and threads > 1:
            twin = ort.InferenceSession(str(path), sess_options=session_options(1), providers=list(providers))
    preprocess = TextPreprocessor.of(session.get_modelmeta().custom_metadata_map)
    model = OnnxModel(session, [output.name for output in session.get_outputs()], twin, preprocess)
    opened = time.perf_counter()
    try:
        model.run(warmup_inputs(signature, warmup_rows))
        if twin is not None:
            model.run(warmup_inputs(signature, warmup_rows), crowded=True)
    except Exception as exc:
        raise RuntimeError(f"the warm-up batch of {warmup_rows} rows failed: {exc}") from exc
    if timings is not None:
        timings.update(download=downloaded - started, session=opened - downloaded, warmup=time.perf_counter() - opened)
    return model
