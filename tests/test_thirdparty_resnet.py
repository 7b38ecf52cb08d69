"""A ResNet written by ``torch.onnx.export`` (residual Adds, a stride-2 stem, 1x1 skip
Convs), packed to int8 by ``fleetctl models pack`` and served by the agent's model service.

The torch CNN of the other packer tests is a plain chain; this graph has the branches and
joins real image models have, which is where a quantizer leaves ops float without saying.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.serving import ModelService
from fleet_server.modelkit import quantize

from .thirdparty_kit import RESNET, cli_pack, digits_truth, resnet_images, resnet_request

# Every test runs fleetctl against its own config file, never the developer's.
pytestmark = pytest.mark.usefixtures("fleetctl_config")


def _int8_weights(model: bytes) -> dict[str, int]:
    """Per op type, the Conv/Gemm nodes whose weight is an int8 initializer behind a
    DequantizeLinear (read straight off the graph, not through the packer's own check)."""
    graph = onnx.load_from_string(model).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = made_by.get(node.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        assert inits[dq.input[0]].dtype == np.int8, node.name
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_a_torch_resnet_packs_to_real_int8_and_the_agent_serves_it(tmp_path: Path) -> None:
    out = tmp_path / "resnet-int8.efpkg"
    package = cli_pack(resnet_request(tmp_path, quantize="int8", output=out))
    q = package.manifest.quantization
    # Nine Convs (stem, two per block, two 1x1 skips) and the Linear head, all int8.
    assert q.dtype == "int8" and q.method == "static-qdq" and q.int8_ops == {"Conv": 9, "Gemm": 1}
    assert _int8_weights(package.model_bytes) == {"Conv": 9, "Gemm": 1}
    assert quantize.float_weight_ops(package.model_bytes) == []
    quantize.check_int8_claim(package)
    assert q.agreement is not None and q.agreement.top1 is not None and q.agreement.top1 >= 0.99
    assert len(package.model_bytes) < 0.4 * RESNET.stat().st_size  # int8 weights, not float

    service = ModelService(threads=1)
    service.replace(out)
    images = resnet_images(60)
    answers = [service.infer(image)[0].results[0] for image in images]
    served = np.array([a["class_id"] for a in answers])
    assert all(a["label"] == f"digit-{a['class_id']}" and "id" in a for a in answers)
    assert (served == digits_truth()[:60]).mean() > 0.8
    # The same images through the float file, normalised by hand as the spec declares.
    x = (images / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    x = x.transpose(0, 3, 1, 2).astype(np.float32)
    logits = quantize.run_onnx(RESNET.read_bytes(), {"image": x})["logits"]
    assert (served == logits.argmax(axis=1)).mean() >= 0.95
