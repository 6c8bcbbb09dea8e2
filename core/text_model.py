"""Text models: an ONNX graph over token ids that declares, in its own metadata, the tokenizer
that turns strings into those ids, so that clients send strings (OIP ``BYTES``).

Why the tokenizer travels as declared metadata rather than as ops in the graph
(onnxruntime-extensions): the graph stays plain ONNX over ``int64`` ids, so the int8
quantizer, the compression job's measurements (plain ONNX Runtime sessions fed from npz
arrays), batch inference and every model server take it like any other version, with no
custom-op library to register anywhere; and onnxruntime-extensions' ``BertTokenizer`` op
takes one text (or one pair) per run, which would undo dynamic batching. The declaration
lives inside the ``.onnx`` file (``metadata_props``), so the version stays one artifact with
one sha256, and a compressed copy keeps it (the quantizer keeps the metadata).

    maas.text      {"input": "text", "ids_input": "input_ids", "max_length": 128, "pad_id": 0}
    maas.tokenizer the Hugging Face fast tokenizer's JSON (``tokenizers.Tokenizer.from_str``)

Owns: those keys, the signature a text model shows to clients (``text`` BYTES ``[-1]``
instead of the ids; the graph's own inputs stay under ``graph_inputs`` for whoever feeds
the graph directly, such as a compression job), :class:`TextPreprocessor`, which a model
session runs on a whole batch of strings before ONNX Runtime (padding to the longest row of
the batch, at most ``max_length`` tokens), and the same for data files: an npz of texts
(an array named after the clients' input) turned into the graph's ids for a compression job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEXT_KEY = "maas.text"
TOKENIZER_KEY = "maas.tokenizer"


@dataclass(frozen=True)
class TextDeclaration:
    input: str  # the BYTES input clients send
    ids_input: str  # the graph's int64 (batch, tokens) input
    max_length: int
    pad_id: int

    def to_json(self) -> str:
        return json.dumps(
            {"input": self.input, "ids_input": self.ids_input, "max_length": self.max_length, "pad_id": self.pad_id}
        )


def declaration(metadata: Mapping[str, str]) -> TextDeclaration | None:
    """The text declaration of a model's metadata (``metadata_props`` or ORT's custom metadata
    map); None for a model that takes tensors; ValueError for a malformed one."""
    raw = metadata.get(TEXT_KEY)
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        found = TextDeclaration(
            str(fields["input"]), str(fields["ids_input"]), int(fields["max_length"]), int(fields["pad_id"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the model's {TEXT_KEY} metadata is malformed: {exc}") from exc
    if TOKENIZER_KEY not in metadata:
        raise ValueError(f"the model declares {TEXT_KEY} but carries no {TOKENIZER_KEY}")
    return found


def text_signature(signature: dict[str, Any], declared: TextDeclaration) -> dict[str, Any]:
    """What clients see of a text model: one BYTES input of shape [-1] replacing the ids."""
    graph_inputs = signature["inputs"]
    if [i["name"] for i in graph_inputs] != [declared.ids_input]:
        raise ValueError(f"a text model's graph must take exactly one input {declared.ids_input!r}")
    return {
        "inputs": [{"name": declared.input, "datatype": "BYTES", "shape": [-1]}],
        "outputs": signature["outputs"],
        "graph_inputs": graph_inputs,
    }


def feed_inputs(signature: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The inputs the graph itself takes (a text model's ids, not the strings clients send)."""
    return list(signature.get("graph_inputs") or signature.get("inputs") or [])


class TextPreprocessor:
    """Strings in, the graph's token ids out, for a whole batch at once."""

    def __init__(self, declared: TextDeclaration, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer  # the serving side imports it only for text models

        self.declared = declared
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(declared.max_length)

    @classmethod
    def of(cls, metadata: Mapping[str, str]) -> TextPreprocessor | None:
        declared = declaration(metadata)
        return None if declared is None else cls(declared, metadata[TOKENIZER_KEY])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = inputs[self.declared.input]
        strings = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in texts.reshape(-1)]
        return {self.declared.ids_input: self.ids(strings)}

    def ids(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        width = max([len(e.ids) for e in encodings] + [1])
        ids = np.full((len(texts), width), self.declared.pad_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
        return ids


# --- data files for the graph (a compression job's eval and calibration npz) ------------------


def texts_as_ids_details(details: dict[str, Any], signature: Mapping[str, Any]) -> dict[str, Any]:
    """An npz's stored details as the graph will see them: for a text model, an array named after
    the input clients send (its texts) stands for the token ids the graph takes; other details
    and other models' pass unchanged."""
    graph_inputs, inputs = signature.get("graph_inputs"), signature.get("inputs") or []
    arrays = details.get("arrays")
    if not graph_inputs or len(inputs) != 1 or not isinstance(arrays, Mapping):
        return details
    text, ids = inputs[0]["name"], graph_inputs[0]["name"]
    if text not in arrays or ids in arrays:
        return details
    rows = list(arrays[text].get("shape") or [0])[:1]
    described = {name: found for name, found in arrays.items() if name != text}
    return {**details, "arrays": {**described, ids: {"dtype": "int64", "shape": [*rows, 1]}}}


def npz_texts_as_ids(path: Path, preprocess: TextPreprocessor, target: Path) -> Path:
    """``path`` with its texts (the array named after the input clients send) tokenized into the
    graph's ids, written to ``target``; ``path`` itself when it is no npz or holds no texts."""
    declared = preprocess.declared
    with path.open("rb") as f:
        if not f.read(4).startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return path
    with np.load(path, allow_pickle=False) as npz:
        if declared.input not in npz.files or declared.ids_input in npz.files:
            return path
        arrays = {name: npz[name] for name in npz.files if name != declared.input}
        texts = [str(t) for t in npz[declared.input].reshape(-1)]
    arrays[declared.ids_input] = preprocess.ids(texts)
    np.savez(target, **arrays)
    return target
