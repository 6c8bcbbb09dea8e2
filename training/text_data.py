"""Text datasets: a csv or parquet file with a text column and a label column, tokenized in
the job with the text encoder's own tokenizer into ``int64 (rows, tokens)`` token ids, padded
to the longest text (at most ``max_length`` tokens), so that every other part of training
(splits, sharding, the strategies) handles them as rows of one tensor.

Errors are ``training.data.DatasetError`` with a pointer into the spec
(``/dataset/text_column`` when the column does not exist or holds no strings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq


class TextTableError(ValueError):
    def __init__(self, pointer: str, detail: str) -> None:
        super().__init__(f"{pointer}: {detail}")
        self.pointer, self.detail = pointer, detail


def read_text_table(
    path: Path, text_column: str, label_column: str | None, pointer: str
) -> tuple[list[str], np.ndarray]:
    """(texts, raw labels) of a csv or parquet file (format sniffed from its first bytes)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise TextTableError(f"{pointer}/text_column", "a text dataset is a csv or parquet file, not an npz")
        table = (
            pq.read_table(path) if head == b"PAR1" else pa_csv.read_csv(path, convert_options=_csv_options(text_column))
        )
    except (pa.ArrowException, OSError) as exc:
        raise TextTableError(pointer, f"not a readable csv or parquet file: {exc}") from exc
    label = label_column or "label"
    for name, field in ((text_column, "text_column"), (label, "label_column")):
        if name not in table.column_names:
            where = f"{pointer}/{field}" if field == "text_column" or label_column else pointer
            raise TextTableError(
                where, f"there is no column '{name}'; columns are {', '.join(table.column_names[:20])}"
            )
    texts = table.column(text_column)
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise TextTableError(
            f"{pointer}/text_column", f"column '{text_column}' has type {texts.type}; texts must be strings"
        )
    for name in (text_column, label):
        if table.column(name).null_count:
            raise TextTableError(pointer, f"column '{name}' has {table.column(name).null_count} missing values")
    return texts.to_pylist(), table.column(label).to_numpy(zero_copy_only=False)


def _csv_options(text_column: str) -> Any:
    # a column of texts that all look like numbers is still text
    return pa_csv.ConvertOptions(column_types={text_column: pa.string()})


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """Token ids ``int64 (rows, tokens)``: [CLS] … [SEP], cut at ``max_length``, padded with the
    tokenizer's pad id to the longest row."""
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    return np.ascontiguousarray(encoded["input_ids"], dtype=np.int64)
