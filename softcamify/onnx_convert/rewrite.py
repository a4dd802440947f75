"""Rewrite an ONNX classifier's tail into the SoftCAM evidence head. Torch-free.

``pooling → … → classifier`` (an :class:`~.tail.OnnxTail`) becomes ``[Transpose →] Conv (kernel 1 over every
spatial axis, the folded classifier weights) → ReduceMean (over the positions)``. The ``Conv``'s output is the
new graph output ``evidence`` (N×K×h×w, or N×K×d×h×w for volumes); the ``ReduceMean`` writes the tensor the
classifier wrote, so every node after it (a Softmax, other outputs) reads the same logits as before.

Output names: the original outputs keep their names and order, so existing consumers still work. When an
activation follows the logits (``Softmax``/``Sigmoid``), the pre-activation logits become an extra output
``logits`` (an ``Identity`` of the internal tensor; its internal name when ``logits`` is taken). Then
``evidence`` is appended. :attr:`Rewritten.logits` and :attr:`Rewritten.evidence` name them, and the
converter records them in ``metadata_props`` (``logits_output``, ``evidence_output``).

Every other node, initializer, the opset, the inputs and the metadata stay as they are; the tail's own
nodes and the initializers only they used are removed (a tail tensor another node still reads is kept,
with the nodes that compute it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..onnx_runtime import EVIDENCE_NAME, LOGITS_NAME
from .tail import OnnxTail

__all__ = ["Rewritten", "rewrite"]

_SPATIAL_NAMES = {1: ["evidence_width"], 2: ["evidence_height", "evidence_width"]}
_SPATIAL_NAMES[3] = ["evidence_depth", *_SPATIAL_NAMES[2]]


@dataclass
class Rewritten:
    model: Any  # the rewritten onnx.ModelProto
    logits: str  # the output holding the pre-activation logits
    evidence: str  # the output holding the evidence maps
    outputs: list[str]  # the graph's outputs, in order


def _names_in_use(graph: Any) -> set[str]:
    used = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for n in graph.node:
        used.update(n.input)
        used.update(n.output)
        if n.name:
            used.add(n.name)
    return used


def _unique(base: str, used: set[str]) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def _dims(value_info: Any) -> list[Any]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def rewrite(model: Any, tail: OnnxTail, opset: int) -> Rewritten:
    """A copy of ``model`` with ``tail`` replaced by the evidence convolution and its mean."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    outputs = [o.name for o in g.output]
    if EVIDENCE_NAME in outputs:
        raise ConversionError(
            f"The graph already has an output '{EVIDENCE_NAME}': it is a SoftCAM model already; nothing to convert."
        )
    used = _names_in_use(g)
    nodes = list(g.node)
    first = min(tail.nodes)
    removed = [nodes[i] for i in tail.nodes]
    keep_nodes = [n for i, n in enumerate(nodes) if i not in set(tail.nodes)]

    # --- the new nodes ---------------------------------------------------------------------------
    n_spatial = len(tail.spatial_axes)
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    x = tail.features
    perm = [0, tail.channel_axis, *tail.spatial_axes]
    if perm != list(range(tail.rank)):  # channels last (TF/Keras): the evidence is channels first
        t_out = _unique("softcam_features_channels_first", used)
        new_nodes.append(
            helper.make_node("Transpose", [x], [t_out], name=_unique("softcam_transpose", used), perm=perm)
        )
        x = t_out
    if tail.norm_eps is not None:  # normalize the features by the pooled features' norm statistics
        x = _normalized(tail, x, used, new_nodes, new_inits, opset)
    w_name = _unique("softcam_evidence_weight", used)
    b_name = _unique("softcam_evidence_bias", used)
    k, c = tail.weight.shape
    w = tail.weight.reshape(k, c, *([1] * n_spatial)).astype(tail.dtype)
    new_inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(tail.bias.astype(tail.dtype), b_name)]
    evidence = EVIDENCE_NAME if EVIDENCE_NAME not in used else _unique("softcam_" + EVIDENCE_NAME, used)
    used.add(evidence)
    new_nodes.append(
        helper.make_node(
            "Conv",
            [x, w_name, b_name],
            [evidence],
            name=_unique("softcam_evidence", used),
            kernel_shape=[1] * n_spatial,
        )
    )
    axes = list(range(2, 2 + n_spatial))
    mean_name = _unique("softcam_mean", used)
    if opset >= 18:
        a_name = _unique("softcam_mean_axes", used)
        new_inits.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), a_name))
        new_nodes.append(helper.make_node("ReduceMean", [evidence, a_name], [tail.logits], name=mean_name, keepdims=0))
    else:
        new_nodes.append(
            helper.make_node("ReduceMean", [evidence], [tail.logits], name=mean_name, axes=axes, keepdims=0)
        )
    logits = tail.logits
    extra_outputs = []
    if tail.logits not in outputs:  # an activation follows: expose the logits before it
        if LOGITS_NAME not in used:
            logits = LOGITS_NAME
            used.add(logits)
            new_nodes.append(
                helper.make_node("Identity", [tail.logits], [logits], name=_unique("softcam_logits", used))
            )
        extra_outputs.append(logits)

    # --- keep the tail's tensors that other nodes still read -------------------------------------
    needed = {t for n in keep_nodes + new_nodes for t in n.input} | set(outputs)
    produced_new = {t for n in new_nodes for t in n.output}
    restored: list[Any] = []
    for n in reversed(removed):  # from the classifier back: a node stays when something reads its output
        if any(o in needed and o not in produced_new for o in n.output):
            restored.append(n)
            needed.update(n.input)
    restored_set = {id(n) for n in restored}
    tail_nodes = [n for n in removed if id(n) in restored_set]
    ordered = _topological(keep_nodes[:first] + tail_nodes + new_nodes + keep_nodes[first:])
    del g.node[:]
    g.node.extend(ordered)

    # --- initializers: drop those only the removed nodes used; add the new ones ------------------
    still = {t for n in ordered for t in n.input}
    gone = {t for n in removed if id(n) not in restored_set for t in n.input}
    kept_inits = [t for t in g.initializer if t.name in still or t.name not in gone]
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    produced = {t for n in ordered for t in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
    kept_vi = [vi for vi in g.value_info if vi.name in produced and vi.name not in (evidence, logits, tail.logits)]
    del g.value_info[:]
    g.value_info.extend(kept_vi)

    # --- outputs: the original ones, the exposed logits, the evidence ---------------------------
    elem = helper.np_dtype_to_tensor_dtype(tail.dtype)
    batch = _batch_dim(g, tail)
    spatial = [tail.feature_shape[a] if tail.feature_shape else None for a in tail.spatial_axes]
    labels = _SPATIAL_NAMES.get(n_spatial) or [f"evidence_dim{i}" for i in range(n_spatial)]
    spatial = [d if isinstance(d, int) else labels[i] for i, d in enumerate(spatial)]
    for name in extra_outputs:
        g.output.append(helper.make_tensor_value_info(name, elem, [batch, k]))
    g.output.append(helper.make_tensor_value_info(evidence, elem, [batch, k, *spatial]))
    return Rewritten(m, logits=logits, evidence=evidence, outputs=[o.name for o in g.output])


def _batch_dim(graph: Any, tail: OnnxTail) -> Any:
    """The batch dimension of the outputs: the one the graph's output (or features) already has."""
    for vi in graph.output:
        if vi.name == tail.output:
            dims = _dims(vi)
            if dims and dims[0] is not None:
                return dims[0]
    if tail.feature_shape and tail.feature_shape[0] is not None:
        return tail.feature_shape[0]
    return "batch"


def _topological(nodes: list[Any]) -> list[Any]:
    """``nodes`` in an order where each node comes after the nodes computing its inputs (stable: the given
    order wherever it already is one)."""
    made = {t for n in nodes for t in n.output}
    ready = {t for n in nodes for t in n.input if t not in made} | {""}  # inputs, initializers, outer scopes
    pending = list(nodes)
    ordered: list[Any] = []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # inputs from outer scopes or cycles: keep the given order
            return ordered + rest
        pending = rest
    return ordered


def _normalized(tail: OnnxTail, x: str, used: set[str], nodes: list[Any], inits: list[Any], opset: int) -> str:
    """Nodes computing (x − μ)/σ, with μ and σ² + eps the mean and variance of the pooled features over their
    channels (one pair per sample, broadcast over the positions of ``x``)."""
    from onnx import helper, numpy_helper

    def name(base: str) -> str:
        return _unique("softcam_norm_" + base, used)

    def init(base: str, value: Any) -> str:
        n = name(base)
        inits.append(numpy_helper.from_array(value, n))
        return n

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=name(op.lower() + "_node"), **attrs))
        return out

    def mean(t: str) -> str:  # over every non-batch axis of the pooled tensor (the channels; the rest are 1)
        if opset >= 18:
            return node("ReduceMean", [t, axes], keepdims=1)
        return node("ReduceMean", [t], axes=list(range(1, 8))[: rank - 1], keepdims=1)

    rank = len(tail.feature_shape) if tail.pooled_rank is None else tail.pooled_rank
    axes = init("axes", np.arange(1, rank, dtype=np.int64)) if opset >= 18 else ""
    mu = mean(tail.pooled)
    d = node("Sub", [tail.pooled, mu])
    var = mean(node("Mul", [d, d]))
    sigma = node("Sqrt", [node("Add", [var, init("eps", np.asarray(tail.norm_eps, dtype=tail.dtype))])])
    shape = init("shape", np.asarray([-1] + [1] * (tail.rank - 1), dtype=np.int64))
    mu_b, sigma_b = node("Reshape", [mu, shape]), node("Reshape", [sigma, shape])
    return node("Div", [node("Sub", [x, mu_b]), sigma_b])
