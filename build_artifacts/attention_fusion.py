"""Fuse self-attention of exported BERT-family graphs (MPNet included) into ONNX Runtime's MultiHeadAttention.

ONNX Runtime's own fusion (session optimizer and transformer optimizer) matches BERT's attention but
not MPNet's, whose scores carry a relative position bias:

    softmax(Q K^T / sqrt(d) + position_bias + mask) V

This pass matches that pattern on the TorchScript export (with or without the position bias) and
replaces it, per layer, by

    MatMul(x, [Wq|Wk|Wv]) -> Split -> com.microsoft.MultiHeadAttention(q, k, v, bias=[bq|bk|bv],
                                       key_padding_mask, attention_bias=position_bias)

One packed projection GEMM instead of three; the position bias enters un-expanded (1, heads, S, S)
instead of the (batch, heads, S, S) copy the export builds; padding comes from the model's own
attention_mask input. The result only runs on ONNX Runtime (contrib op domain com.microsoft).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONTRIB_DOMAIN = "com.microsoft"
_HEADS_FIRST = (0, 2, 1, 3)  # [B, S, heads, d] <-> [B, heads, S, d]
_KEYS_TRANSPOSED = (0, 2, 3, 1)  # [B, S, heads, d] -> [B, heads, d, S]: K^T
FUSED_OP = "MultiHeadAttention"


class FusionError(RuntimeError):
    """The graph's attention does not have the expected shape; nothing was changed."""


@dataclass
class _Projection:
    matmul: object
    add: object
    weight: np.ndarray  # [in, out]
    bias: np.ndarray


@dataclass
class _AttentionMatch:
    context_reshape: object  # the node the fused block replaces; the rest becomes unreachable
    query: _Projection
    key: _Projection
    value: _Projection
    scale: float
    position_bias: str | None
    num_heads: int
    output: str  # the [batch, seq, hidden] context tensor that feeds the output projection


class _Graph:
    def __init__(self, model):
        self.model = model
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def parent(self, node, index: int, op_type: str | tuple[str, ...]):
        name = node.input[index] if index < len(node.input) else ""
        parent = self.producer.get(name)
        types = (op_type,) if isinstance(op_type, str) else op_type
        return parent if parent is not None and parent.op_type in types else None

    def only_child(self, name: str, op_type: str):
        """The one consumer of `name` of this type; Shape consumers (view-size glue) are ignored."""
        children = [c for c in self.consumers.get(name, []) if c.op_type != "Shape"]
        return children[0] if len(children) == 1 and children[0].op_type == op_type else None

    def constant_value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":  # the exporter shares equal tensors this way
            return self.constant_value(node.input[0])
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None


def _projection(graph: _Graph, tensor: str) -> _Projection | None:
    """tensor = Add(MatMul(x, W), b) with W, b initializers (an nn.Linear)."""
    add = graph.producer.get(tensor)
    if add is None or add.op_type != "Add":
        return None
    for bias_index in (0, 1):
        matmul = graph.parent(add, 1 - bias_index, "MatMul")
        if matmul is None:
            continue
        weight, bias = graph.constant_value(matmul.input[1]), graph.constant_value(add.input[bias_index])
        if weight is not None and bias is not None and weight.ndim == 2 and bias.shape == weight.shape[1:]:
            return _Projection(matmul, add, weight, bias)
    return None


def _perm(node) -> tuple[int, ...]:
    return next((tuple(a.ints) for a in node.attribute if a.name == "perm"), ())


def _heads_input(graph: _Graph, node, perm: tuple[int, ...]):
    """Walk Transpose(perm) -> Reshape([B, S, heads, d]) back to the projection output; returns (tensor, d)."""
    if node is None or node.op_type != "Transpose" or _perm(node) != perm:
        return None
    node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "Reshape":
        return None
    shape = graph.constant_value(node.input[1])
    if shape is None:  # shape built at run time: Concat(batch, seq, heads or -1, head_size)
        concat = graph.producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            return None
        parts = [graph.constant_value(name) for name in concat.input[2:]]
        if any(part is None for part in parts):
            return None
        shape = np.concatenate([np.array([0, 0])] + [part.reshape(-1) for part in parts])
    if shape.size != 4 or shape[3] <= 0:
        return None
    return node.input[0], int(shape[3])  # heads follow from the hidden size / head size


def _match(graph: _Graph, softmax) -> _AttentionMatch | None:
    # Scores: Add(Add(Div(MatMul(Q, K^T), c), position_bias)?, mask)
    node = graph.producer.get(softmax.input[0])
    position_bias = None
    mask_add = node if node is not None and node.op_type == "Add" else None
    if mask_add is None:
        return None
    inner = graph.producer.get(mask_add.input[0])
    if inner is not None and inner.op_type == "Add":  # MPNet: + position bias
        bias_name = inner.input[1]
        expand = graph.producer.get(bias_name)
        position_bias = expand.input[0] if expand is not None and expand.op_type == "Expand" else bias_name
        inner = graph.producer.get(inner.input[0])
    if inner is None or inner.op_type not in ("Div", "Mul"):
        return None
    constant = graph.constant_value(inner.input[1])
    if constant is None or constant.size != 1:
        return None
    scale = float(1.0 / constant.reshape(-1)[0]) if inner.op_type == "Div" else float(constant.reshape(-1)[0])
    scores = graph.producer.get(inner.input[0])
    if scores is None or scores.op_type != "MatMul":
        return None
    query = _heads_input(graph, graph.producer.get(scores.input[0]), perm=_HEADS_FIRST)
    key = _heads_input(graph, graph.producer.get(scores.input[1]), perm=_KEYS_TRANSPOSED)
    # Context: MatMul(probs, V) -> Transpose -> Reshape([B, S, hidden])
    context = graph.only_child(softmax.output[0], "MatMul")
    if context is None:
        return None
    value = _heads_input(graph, graph.producer.get(context.input[1]), perm=_HEADS_FIRST)
    transpose = graph.only_child(context.output[0], "Transpose")
    if transpose is None or _perm(transpose) != _HEADS_FIRST:
        return None
    reshape = graph.only_child(transpose.output[0], "Reshape")
    if query is None or value is None or reshape is None:
        return None
    projections = [_projection(graph, t[0]) for t in (query, key, value)]
    if any(p is None for p in projections):
        return None
    if len({query[1], key[1], value[1]}) != 1:
        return None
    hidden = projections[0].weight.shape[1]
    if hidden % query[1]:
        return None
    num_heads = hidden // query[1]
    if not (projections[0].matmul.input[0] == projections[1].matmul.input[0] == projections[2].matmul.input[0]):
        return None  # not self-attention
    return _AttentionMatch(
        reshape, *projections, scale=scale, position_bias=position_bias, num_heads=num_heads, output=reshape.output[0]
    )


def fuse_attention(model) -> int:
    """Rewrite `model` (an onnx.ModelProto) in place; returns how many attention blocks were fused."""
    from onnx import TensorProto, helper, numpy_helper

    graph = _Graph(model)
    matches = [m for m in (_match(graph, n) for n in model.graph.node if n.op_type == "Softmax") if m is not None]
    if not matches:
        return 0
    input_names = {i.name for i in model.graph.input}
    if "attention_mask" not in input_names:
        raise FusionError("the graph has no attention_mask input to take the key padding mask from")

    mask_int32 = "attention_fusion/key_padding_mask"
    replacements = {}  # id(context Reshape) -> the nodes that take its place
    prologue = [
        helper.make_node(
            "Cast", ["attention_mask"], [mask_int32], to=TensorProto.INT32, name="/attention_fusion/Cast_mask"
        )
    ]
    for match in matches:
        prefix = match.query.matmul.name.rsplit("/", 2)[0]  # e.g. /transformer/encoder/layer.0/attention/attn
        weights = [p.weight for p in (match.query, match.key, match.value)]
        biases = [p.bias for p in (match.query, match.key, match.value)]
        hidden = weights[0].shape[1]
        weight_name, bias_name = f"{prefix}/qkv.weight", f"{prefix}/qkv.bias"
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), weight_name))
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), bias_name))
        split_sizes = f"{prefix}/qkv.split"
        model.graph.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), split_sizes))
        packed, q, k, v = (f"{prefix}/qkv/{s}" for s in ("MatMul_output_0", "q", "k", "v"))
        nodes = [
            helper.make_node(
                "MatMul", [match.query.matmul.input[0], weight_name], [packed], name=f"{prefix}/qkv/MatMul"
            ),
            helper.make_node("Split", [packed, split_sizes], [q, k, v], axis=-1, name=f"{prefix}/qkv/Split"),
            helper.make_node(
                FUSED_OP,
                [q, k, v, bias_name, mask_int32, match.position_bias or ""],
                [match.output],
                domain=CONTRIB_DOMAIN,
                num_heads=match.num_heads,
                scale=match.scale,
                name=f"{prefix}/{FUSED_OP}",
            ),
        ]
        replacements[id(match.context_reshape)] = nodes
        # ONNX shape inference does not know contrib ops; declare the output type for later tools (quantizer).
        model.graph.value_info.append(helper.make_tensor_value_info(match.output, TensorProto.FLOAT, None))

    # Each block takes the place of its context Reshape, which comes after everything the block reads, so
    # the graph stays topologically sorted; the old per-layer ops, now unread, are pruned.
    rebuilt = list(prologue)
    for node in model.graph.node:
        rebuilt.extend(replacements.get(id(node), [node]))
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    _drop_unused(model)
    if not any(op.domain == CONTRIB_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return len(matches)


def _drop_unused(model) -> None:
    """Remove nodes and initializers whose outputs nothing reads (the old per-layer glue)."""
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(list(model.graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    unused = [init for init in model.graph.initializer if init.name not in needed]
    for init in unused:
        model.graph.initializer.remove(init)


def fused_op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fuse_file(source: Path, destination: Path) -> dict:
    """Fuse source into destination (written only on success); returns counts for the manifest."""
    import onnx

    model = onnx.load(str(source))
    before = fused_op_counts(model)
    fused = fuse_attention(model)
    if fused == 0:
        raise FusionError("no attention block matched the expected pattern")
    onnx.checker.check_model(model)
    tmp = destination.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.rename(destination)
    after = fused_op_counts(model)
    return {
        "fused_attention_blocks": fused,
        "op": f"{CONTRIB_DOMAIN}.{FUSED_OP}",
        "softmax_before": before.get("Softmax", 0),
        "softmax_after": after.get("Softmax", 0),
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
    }
