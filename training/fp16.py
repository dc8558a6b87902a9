"""The fp16 version of an exported graph: used by `export --fp16` and by the fp16 sibling that
`ship` makes and gates (training.precision_gate)."""

from __future__ import annotations

import onnx

from model import contract


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with fp16 weights and arithmetic; inputs and outputs stay fp32, so the file
    keeps the contract. The metadata is kept, with ``precision`` set to fp16."""
    from onnxconverter_common import float16

    props = {p.key: p.value for p in proto.metadata_props}
    converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    onnx.helper.set_model_props(converted, {**props, contract.PRECISION: "fp16"})
    return converted
