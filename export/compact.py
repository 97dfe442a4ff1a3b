"""Store an ONNX graph's convolution weights as float16 on disk, computed in float32 at run time.

An ensemble of EfficientNet-Lite0 members is ~13.6 MB of float32 weights per member, and the served
model directory has a 50 MB budget. Rounding the weights to float16 halves the file; each float16
initializer is followed by a ``Cast`` back to float32 under the original name, so every operator
still computes in float32 and onnxruntime folds the casts once, when the session is created
(constant folding, graph optimisation level basic and above): no run-time cost. The rounding error
(relative <= 2^-11 per weight of magnitude >= 6.1e-5; smaller weights become subnormal and lose
relative precision, below ~3e-8 they become 0) is measured end to end by the exporter's parity check, which compares
the float32 Keras ensemble with the file as served.

Only weights of ``Conv`` nodes (input 1) are rounded: they are almost all of the bytes, while the
out-of-distribution detector's constants (Cholesky factor, projected class means) feed a difference
of large squared norms that float16 would not survive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Largest finite float16 value (IEEE 754 binary16).
FLOAT16_MAX = 65504.0


def conv_weights_to_float16(path: Path, min_elements: int = 1024) -> dict:
    """Rewrite the ONNX file at ``path`` in place (see the module docstring).

    Args:
        path: an ONNX model file.
        min_elements: leave smaller weight tensors in float32 (their bytes do not matter).

    Returns:
        ``{"initializers": n converted, "bytes_before": ..., "bytes_after": ...}`` (file sizes, bytes).

    Raises:
        ValueError: a weight is outside the float16 range (it would become infinite).
        onnx.checker.ValidationError: the rewritten graph is not valid ONNX.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv" and len(n.input) > 1}
    inits, casts = [], []
    for init in graph.initializer:
        if (init.name in conv_weights and init.data_type == TensorProto.FLOAT
                and int(np.prod(init.dims)) >= min_elements):
            w = numpy_helper.to_array(init)
            if np.abs(w).max() > FLOAT16_MAX:
                raise ValueError(f"weight {init.name} exceeds the float16 range")
            half = numpy_helper.from_array(w.astype(np.float16), init.name + "__float16")
            inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=init.name + "__to_float32"))
        else:
            inits.append(init)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"initializers": len(casts), "bytes_before": before, "bytes_after": path.stat().st_size}
