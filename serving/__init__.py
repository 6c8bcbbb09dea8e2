"""Serving: model servers, each in a process of its own (``python -m serving``, ``maas serve``).

A model server loads the deployed model versions and answers the APIs' inference requests with
dynamic batching over ONNX Runtime. One module per job: ``batcher`` (the dynamic batcher, pure
asyncio), ``plan`` (what to load and unload, pure), ``loader`` (ONNX Runtime sessions), ``lanes``
(the threads batches run on), ``metrics`` (Prometheus), ``replica`` (what the server holds),
``control_loop`` (registration, heartbeats, deployments → replicas), ``data_plane`` (the HTTP
routes), ``server`` (the two together, start and stop) and ``__main__`` (the process).
"""
