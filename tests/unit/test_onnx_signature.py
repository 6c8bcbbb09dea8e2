"""read_signature and the ONNX -> OIP v2 -> numpy datatype tables, on models built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.onnx_signature import OIP_TO_NUMPY, ONNX_TO_OIP, UnsupportedSignature, read_signature


def _linear_model(*, initializers_as_inputs: bool = False) -> onnx.ModelProto:
    """Y = X @ W + B with a symbolic batch dimension."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])]
    if initializers_as_inputs:
        inputs += [
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, [3]),
        ]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "linear",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _identity_model(elem_type: int, shape: list[int | str | None] | None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_linear_model_signature_uses_minus_one_for_the_symbolic_batch() -> None:
    assert read_signature(_linear_model()) == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 3]}],
    }


def test_initializers_listed_as_graph_inputs_are_not_inputs() -> None:
    model = _linear_model(initializers_as_inputs=True)
    assert [i.name for i in model.graph.input] == ["X", "W", "B"]
    assert read_signature(model)["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize(
    ("elem_type", "datatype"),
    [
        (TensorProto.BOOL, "BOOL"),
        (TensorProto.UINT8, "UINT8"),
        (TensorProto.UINT16, "UINT16"),
        (TensorProto.UINT32, "UINT32"),
        (TensorProto.UINT64, "UINT64"),
        (TensorProto.INT8, "INT8"),
        (TensorProto.INT16, "INT16"),
        (TensorProto.INT32, "INT32"),
        (TensorProto.INT64, "INT64"),
        (TensorProto.FLOAT16, "FP16"),
        (TensorProto.FLOAT, "FP32"),
        (TensorProto.DOUBLE, "FP64"),
        (TensorProto.STRING, "BYTES"),
        (TensorProto.BFLOAT16, "BF16"),
    ],
)
def test_element_types_map_to_oip_datatypes(elem_type: int, datatype: str) -> None:
    signature = read_signature(_identity_model(elem_type, [2]))
    assert signature["inputs"] == [{"name": "x", "datatype": datatype, "shape": [2]}]
    assert signature["outputs"] == [{"name": "y", "datatype": datatype, "shape": [2]}]


def test_unnamed_free_dimension_is_minus_one_and_fixed_dimensions_are_kept() -> None:
    signature = read_signature(_identity_model(TensorProto.FLOAT, [None, 3, "seq", 1]))
    assert signature["inputs"][0]["shape"] == [-1, 3, -1, 1]


def test_scalar_has_empty_shape() -> None:
    assert read_signature(_identity_model(TensorProto.FLOAT, []))["inputs"][0]["shape"] == []


def test_unknown_rank_is_none() -> None:
    assert read_signature(_identity_model(TensorProto.FLOAT, None))["inputs"][0]["shape"] is None


def test_element_type_without_an_oip_datatype_is_refused() -> None:
    with pytest.raises(UnsupportedSignature, match=r"input 'x' has element type COMPLEX64"):
        read_signature(_identity_model(TensorProto.COMPLEX64, [2]))


def test_non_tensor_input_is_refused() -> None:
    sequence = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["x"], ["n"])],
        "seq",
        [sequence],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedSignature, match=r"input 'x' is not a tensor \(sequence_type\)"):
        read_signature(model)


def test_every_oip_datatype_but_bf16_has_a_numpy_dtype() -> None:
    assert set(OIP_TO_NUMPY) == set(ONNX_TO_OIP.values()) - {"BF16"}
    assert OIP_TO_NUMPY["BYTES"] == "object"
    for datatype, dtype in OIP_TO_NUMPY.items():
        if datatype != "BYTES":
            expected = helper.tensor_dtype_to_np_dtype(next(t for t, d in ONNX_TO_OIP.items() if d == datatype))
            assert np.dtype(dtype) == expected
