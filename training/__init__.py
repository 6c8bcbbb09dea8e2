"""What runs inside torchrun for a training job: the spec (``spec``), the model zoo
(``zoo``), data loading (``data``), the parallelism strategies (``strategies``),
checkpoints, the loop and the entry point ``python -m training.run``.

Knows nothing of Celery, HTTP or the database; usable as a plain library and CLI.
Importing the package imports nothing heavy: ``training.spec`` stays torch-free.
"""
