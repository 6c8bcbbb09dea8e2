"""The files of a batch inference job: the dataset read in chunks of rows as model feeds, and the
outputs written chunk by chunk to one ``.npz`` or ``.parquet``.

Memory stays bounded by a chunk: a ``.npz`` member is extracted to disk and memory-mapped, tables
are streamed by record batch; a ``.npz`` output is written into memory-mapped ``.npy`` files (the
row count is known up front) and zipped at the end, a ``.parquet`` output one row group per chunk.
In a ``.parquet`` output an output of rank 1 is a plain column, a higher rank a fixed-size list
column of each row's values, flattened; the schema's ``maas.shapes`` metadata gives each row's shape.

Local files only; :mod:`job_types.batch_inference` does the fetching and the job's bookkeeping.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.input_feeds import castable
from job_types.batch_spec import FeedPlan, chunk_bounds

Arrays = dict[str, np.ndarray]
CSV_BLOCK_BYTES = 4 << 20


class BadData(ValueError):
    """The dataset's content does not fit the plan (found only when reading it: CSV types, missing values)."""


# --- reading ---------------------------------------------------------------------------------------


def read_chunks(path: Path, file_format: str, plan: FeedPlan, chunk_rows: int, work: Path) -> Iterator[Arrays]:
    """The model feeds, ``chunk_rows`` rows at a time (the last chunk may be shorter)."""
    if file_format == "npz":
        yield from _npz_chunks(path, plan, chunk_rows, work)
        return
    columns = list(plan.feeds[0].columns or ())
    if file_format == "parquet":
        batches: Iterable[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns)
    else:
        batches = _csv_batches(path, columns)
    offset = 0
    for table in rechunk(batches, chunk_rows):
        yield {plan.feeds[0].input: _table_feed(table, plan, offset)}
        offset += table.num_rows


def _npz_chunks(path: Path, plan: FeedPlan, chunk_rows: int, work: Path) -> Iterator[Arrays]:
    sources = {feed.input: feed.array for feed in plan.feeds if feed.array is not None}
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        for name in set(sources.values()):
            arrays[name] = np.load(archive.extract(f"{name}.npy", work / "npz"), mmap_mode="r", allow_pickle=False)
    dtypes = {feed.input: feed.dtype for feed in plan.feeds}
    for start, stop in chunk_bounds(plan.rows, chunk_rows):
        yield {name: _as_input(arrays[array][start:stop], dtypes[name]) for name, array in sources.items()}


def _as_input(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "object":  # ONNX Runtime's string tensors take str objects
        return np.asarray(array).astype(str).astype(object)
    return np.ascontiguousarray(array, dtype=dtype)


def _csv_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(include_columns=columns),
    )
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise BadData(f"the CSV cannot be read as numbers: {exc}") from exc


def rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last one may be shorter) from record batches of any size."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _table_feed(table: pa.Table, plan: FeedPlan, offset: int) -> np.ndarray:
    feed = plan.feeds[0]
    values = []
    for name in feed.columns or ():
        column = table.column(name)
        if column.null_count:
            nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise BadData(f"column '{name}' has a missing value in data row {offset + int(nulls[0]) + 1}")
        array = column.to_numpy()
        if not castable(array.dtype, feed.dtype):
            raise BadData(f"column '{name}' holds {column.type}; the model input takes {feed.dtype}")
        values.append(array)
    x = np.stack(values, axis=1).astype(feed.dtype, copy=False)
    return x.reshape((x.shape[0], *feed.row_shape)) if feed.row_shape else x


# --- writing ---------------------------------------------------------------------------------------


class OutputWriter(Protocol):
    """Takes each chunk's outputs in order; :meth:`close` finishes the file."""

    def write(self, outputs: Arrays) -> None: ...

    def close(self) -> None: ...


def output_writer(file_format: str, path: Path, rows: int, work: Path) -> OutputWriter:
    return NpzWriter(path, rows, work) if file_format == "npz" else ParquetWriter(path)


def carry_over(writer: OutputWriter, partial: Path, file_format: str, rows: int) -> None:
    """Write the first ``rows`` rows of an earlier attempt's closed output file ``partial`` into ``writer``."""
    if isinstance(writer, ParquetWriter):
        writer.write_table(pq.read_table(partial).slice(0, rows))
        return
    with np.load(partial, allow_pickle=False) as saved:
        arrays = {name.removesuffix(".npy"): saved[name][:rows] for name in saved.files}
    # strings come back fixed-width; as objects they go where this writer keeps string outputs
    writer.write({name: a.astype(object) if a.dtype.kind == "U" else a for name, a in arrays.items()})


def _check_trailing(name: str, seen: dict[str, tuple[int, ...]], array: np.ndarray) -> None:
    trailing = tuple(array.shape[1:])
    if seen.setdefault(name, trailing) != trailing:
        raise BadData(f"output '{name}' has rows of shape {list(trailing)}, earlier ones {list(seen[name])}")


class NpzWriter:
    def __init__(self, path: Path, rows: int, work: Path) -> None:
        self.path, self.rows, self.folder = path, rows, work / "npz-out"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.memmap] = {}
        self.objects: dict[str, list[np.ndarray]] = {}  # string outputs cannot be memory-mapped
        self.trailing: dict[str, tuple[int, ...]] = {}
        self.written = 0

    def write(self, outputs: Arrays) -> None:
        count = 0
        for name, array in outputs.items():
            _check_trailing(name, self.trailing, array)
            count = array.shape[0]
            if array.dtype == object:
                self.objects.setdefault(name, []).append(array)
                continue
            if name not in self.arrays:
                self.arrays[name] = np.lib.format.open_memmap(
                    self.folder / f"{name}.npy", mode="w+", dtype=array.dtype, shape=(self.rows, *array.shape[1:])
                )
            self.arrays[name][self.written : self.written + count] = array
        self.written += count

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        for name, parts in self.objects.items():
            np.save(self.folder / f"{name}.npy", np.concatenate(parts).astype(str), allow_pickle=False)
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in [*self.arrays, *self.objects]:
                archive.write(self.folder / f"{name}.npy", arcname=f"{name}.npy")


class ParquetWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.trailing: dict[str, tuple[int, ...]] = {}

    def write(self, outputs: Arrays) -> None:
        for name, array in outputs.items():
            _check_trailing(name, self.trailing, array)
        table = pa.table({name: _column(array) for name, array in outputs.items()})
        if self.writer is None:
            shapes = {name: list(shape) for name, shape in self.trailing.items()}
            schema = table.schema.with_metadata({"maas.shapes": json.dumps(shapes)})
            self.writer = pq.ParquetWriter(self.path, schema)
        self.writer.write_table(table.replace_schema_metadata(self.writer.schema.metadata))

    def write_table(self, table: pa.Table) -> None:
        """Rows already in this writer's layout (an earlier attempt's), shapes in ``maas.shapes``."""
        shapes = json.loads((table.schema.metadata or {}).get(b"maas.shapes", b"{}"))
        for name, shape in shapes.items():
            self.trailing.setdefault(name, tuple(shape))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no rows: an empty file with no columns is still a valid answer
            pq.write_table(pa.table({}), self.path)
            return
        self.writer.close()


def _column(array: np.ndarray) -> pa.Array:
    if array.dtype == object:
        array = array.astype(str)
    if array.ndim == 1:
        return pa.array(array)
    width = math.prod(array.shape[1:])
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)
