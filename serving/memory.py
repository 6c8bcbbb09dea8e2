"""A model server's memory: the budget placement may fill, and the process's resident set (to measure a load).

``memory_budget``: ``MAAS_MODEL_SERVER_MEMORY_BYTES``, or by default half the machine's physical
memory shared among the ``inference_servers_per_host`` servers on it (the other half is the API's,
the workers' and the page cache's). ``resident_bytes``: this process's resident set now; a load's
memory is the difference before and after it (session, weights, warm-up buffers). The control
loop measures one load at a time, after ``return_freed_memory`` (else the allocator's kept pages
would make a load look smaller), never counts a version as less than its weights once per ONNX
Runtime session (``sessions_per_replica``), and starts ONNX Runtime (``start_onnxruntime``) before
the first load is measured.

A GPU is a second budget, used only when the server's providers include ONNX Runtime's CUDA
execution provider (else 0: no GPU, and nothing here runs ``nvidia-smi``).
``gpu_memory_budget``: ``MAAS_MODEL_SERVER_GPU_MEMORY_BYTES``, or by default ``GPU_SHARE`` of the
device's total memory (``nvidia-smi``; 0 without it) shared among the ``inference_servers_per_host``
servers; ``gpu_used_bytes``: what this process holds on the GPUs now, the same before/after measure
of a load as the resident set's. The device is the first of ``CUDA_VISIBLE_DEVICES`` (ONNX Runtime's
device 0), else 0. (The CUDA path is untested: no GPU where this was written; the parsers are
checked against ``nvidia-smi``'s documented output.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import subprocess
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
from onnx import TensorProto, helper

from core.onnx_model import inference_threads, session_options
from core.settings import Settings

DEFAULT_SHARE = 0.5
# the CUDA context, cuDNN/cuBLAS workspaces and the memory arena's rounding sit outside any load's measure
GPU_SHARE = 0.9
CUDA = "CUDAExecutionProvider"
NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_TIMEOUT_S = 10.0
MIB = 1 << 20


def memory_budget(settings: Settings) -> int:
    if settings.model_server_memory_bytes:
        return settings.model_server_memory_bytes
    return int(psutil.virtual_memory().total * DEFAULT_SHARE) // settings.inference_servers_per_host


def return_freed_memory() -> None:
    """Give the pages an unloaded model freed back to the system (glibc's ``malloc_trim``, every arena; nothing
    elsewhere). Kept by the allocator, they would be reused by the next load, whose resident set would then
    barely grow: the same model measured 44 MiB after an unload and 64 MiB before one."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    libc = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def sessions_per_replica(settings: Settings) -> int:
    """ONNX Runtime sessions a replica opens: 2 with the single-threaded twin (``core.onnx_model.OnnxModel``)
    that lets two batches run at once, else 1."""
    return 2 if settings.inference_concurrent_batches > 1 and inference_threads(settings) > 1 else 1


def resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def gpu_memory_budget(settings: Settings, providers: list[str]) -> int:
    """What placement may fill on this server's GPU; 0 when it runs no CUDA provider, or none is found."""
    if CUDA not in providers:
        return 0
    if settings.model_server_gpu_memory_bytes:
        return settings.model_server_gpu_memory_bytes
    device = visible_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"))
    total = _nvidia_smi("--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", device)
    return int(gpu_total_bytes(total or "") * GPU_SHARE) // settings.inference_servers_per_host


def gpu_used_bytes() -> int:
    """GPU memory this process holds now, on every device (0 without ``nvidia-smi``, and in a container whose
    process ids ``nvidia-smi`` does not see: the control loop's floor, the weights once per session, holds then)."""
    apps = _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    return process_gpu_bytes(apps or "", os.getpid())


def visible_gpu(cuda_visible_devices: str | None) -> str:
    """The device ONNX Runtime's CUDA provider uses (its device 0), as ``nvidia-smi -i`` names it."""
    first = (cuda_visible_devices or "").split(",")[0].strip()
    return first or "0"


def gpu_total_bytes(output: str) -> int:
    """``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i <device>``'s answer (MiB), in bytes."""
    for line in output.splitlines():
        if line.strip().isdigit():
            return int(line.strip()) * MIB
    return 0


def process_gpu_bytes(output: str, pid: int) -> int:
    """What ``pid`` holds in ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``
    (one ``pid, MiB`` line per process and device; ``[N/A]`` where the driver does not say), in bytes."""
    held = 0
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            held += int(fields[1]) * MIB
    return held


def _nvidia_smi(*args: str) -> str | None:
    """``nvidia-smi``'s output, or None where it is missing or fails (a machine without an NVIDIA driver)."""
    try:
        done = subprocess.run(
            [NVIDIA_SMI, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


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
