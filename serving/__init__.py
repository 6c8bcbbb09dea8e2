"""Serving: model servers, each in a process of its own (``python -m serving``, ``maas serve``).

A model server loads the model versions the placer assigned it and answers the APIs' inference
requests with dynamic batching over ONNX Runtime. One module per job: ``batcher`` (the dynamic
batcher, pure asyncio), ``plan`` (what this server loads and unloads, pure), ``placement`` (where
replicas go, which leave, the autoscaler's trend; pure), ``placer`` (the one placement loop, run by
the server holding its lock), ``artifact_cache`` (model files kept on local disk), ``memory`` (the
budget, resident memory), ``lanes`` (the threads batches run on), ``metrics`` (Prometheus),
``replica`` (what the server holds), ``control_loop`` (registration, heartbeats, assignments →
replicas), ``data_plane`` (the HTTP routes), ``server`` (the two together, start and stop) and
``__main__`` (the process).
"""
