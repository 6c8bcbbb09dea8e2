"""Model compression as a plain library and CLI: pruning, distillation, quantization, and an
honest before/after report.

Owns the math and the ONNX graph work of compression passes and how a run strings them
together; knows nothing of Celery, HTTP or the database (the worker calls in here). Use it
without the service through ``python -m compression`` (see ``compression.cli``). Modules:

- ``spec``: the compression job spec (sources, passes, data, accuracy floor) and its checks
  against the source's facts and the data files' details; torch-free (the API imports it).
- ``passes``: the ``Pass`` interface and the prune, distill and quantize passes over a
  ``ModelState`` (ONNX file, plus the torch model and zoo spec while one exists).
- ``pipeline``: a run: passes in order, each measured and held to the accuracy floor, then speed.
- ``report``: the report rows, their changes against the source, Markdown and a PNG chart.
- ``data``: which rows fine-tune, evaluate and calibrate; reading data files.
- ``sources``: loading a source (safetensors state dict + zoo spec, ONNX file).
- ``cli``: ``python -m compression`` on local files.
- ``prune``: unstructured (per layer, global) and structured magnitude pruning of zoo models.
- ``distill``: knowledge distillation losses and the student-smaller-than-teacher rule.
- ``finetune``: the small training loop pruning and distillation share.
- ``measure``: parameter counts, file sizes (raw and gzip), accuracy, fidelity, latency, throughput.
- ``quantize``: ONNX Runtime int8 (dynamic, static) and fp16 conversion, embedding tables to int8.
- ``fidelity``: output-fidelity metrics (cosine, max abs error, accuracy; a regression model's MAE,
  RMSE, R²) and batched ORT runs.
- ``throughput``: fair side-by-side throughput of ONNX models under the same thread settings.
- ``smoothing``: SmoothQuant-style activation smoothing, so int8 activations lose less.
- ``sensitivity``: the measured int8 scheme (smoothing strength, nodes kept float, byte budget).
- ``encoders``: export of Hugging Face sentence encoders to ONNX, with a parity check.
- ``corpus``: a deterministic English sentence corpus that ships offline.
"""
