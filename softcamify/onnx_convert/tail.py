"""Find the classifier tail of an ONNX graph by its structure (never by node names). Torch-free.

The tail SoftCAM rewrites exactly is ``pooling → per-channel affine steps and reshapes → linear classifier
[→ Softmax/Sigmoid]``, read backwards from a graph output:

- activation (optional): ``Softmax``, ``Sigmoid`` or ``LogSoftmax`` on the logits (kept as it is);
- classifier: ``Gemm`` (``transB``, ``alpha``, ``beta``), ``MatMul`` or ``MatMul → Add`` with constant weights;
- between: ``Flatten``, ``Reshape``, ``Squeeze``, ``Identity``, ``Dropout`` (shape only) and
  ``BatchNormalization`` or ``Mul``/``Add``/``Sub``/``Div`` by per-channel constants (folded);
- pooling: ``GlobalAveragePool`` (any rank: 2D, 3D) or ``ReduceMean`` over every spatial axis (the axes as
  an attribute, or as a constant input from opset 18), channels first or channels last (TF/Keras: axes
  ``[1, 2]``).

The result, :class:`OnnxTail`, holds the folded classifier as one ``K×C`` weight and a ``K`` bias: mean over
the positions of ``W·F(x, y) + b`` is the logits, which is what :mod:`.rewrite` builds. Anything else (an MLP
after the pooling, max pooling, attention pooling) is refused with a :class:`~softcamify.errors.ConversionError`
naming the node that breaks the decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConversionError

__all__ = ["ACTIVATIONS", "GraphIndex", "OnnxTail", "find_tail"]

ACTIVATIONS = ("Softmax", "Sigmoid", "LogSoftmax")
RESHAPES = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Unsqueeze")
AFFINE = ("Mul", "Add", "Sub", "Div")
MAX_POOLS = ("GlobalMaxPool", "ReduceMax", "MaxPool", "GlobalLpPool", "LpPool")
Dim = int | str | None


class NotATail(Exception):
    """This output is not fed by a rewritable tail (the message says which node breaks it)."""


class GraphIndex:
    """Producers, consumers, constants and inferred shapes of a graph's tensors."""

    def __init__(self, model: Any):
        import onnx
        from onnx import numpy_helper

        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        self.initializers = {t.name: t for t in g.initializer}
        self.constants: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self.constants[t.name] = numpy_helper.to_array(t)
        graph_inputs = {i.name for i in g.input}
        for name in graph_inputs:  # an initializer that is also an input may be overridden at run time
            self.constants.pop(name, None)
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.constants[n.output[0]] = numpy_helper.to_array(a.t)
        for n in self.nodes:  # shared weights behind Identity nodes (the TorchScript exporter writes them)
            if n.op_type == "Identity" and n.input[0] in self.constants:
                self.constants[n.output[0]] = self.constants[n.input[0]]
        self.shapes: dict[str, list[Dim]] = {}
        self.elem_types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph shape inference cannot read: shapes stay unknown
            inferred = model
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            tt = vi.type.tensor_type
            self.elem_types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
                ]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def node(self, tensor: str) -> Any | None:
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def const(self, tensor: str) -> np.ndarray | None:
        return self.constants.get(tensor)

    def rank(self, tensor: str) -> int | None:
        s = self.shapes.get(tensor)
        return None if s is None else len(s)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def describe(node: Any) -> str:
    """``'/fc/Gemm' (Gemm)``: how messages name a node."""
    return f"'{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node (output '{node.output[0]}')"


@dataclass
class OnnxTail:
    """The classifier tail found in a graph, and the folded classifier that replaces it."""

    features: str  # the feature map the pooling reads
    rank: int  # its rank (4: images, 5: volumes)
    channel_axis: int  # 1 (channels first) or rank − 1 (channels last: TF/Keras)
    spatial_axes: list[int]
    feature_shape: list[Dim]
    pool: str  # the pooling node, described
    between: list[str]  # what lies between pooling and classifier, described
    classifier: str
    logits: str  # the pre-activation logits tensor
    activation: str | None  # Softmax / Sigmoid / LogSoftmax after the logits
    output: str  # the graph output the tail ends in
    weight: np.ndarray  # K×C (folded: affine steps, alpha, transB)
    bias: np.ndarray  # K
    nodes: list[int]  # node indices of the tail: pooling, between, classifier
    dtype: Any  # numpy dtype of the classifier weights
    pooled: str = ""  # the pooling's output
    # a LayerNormalization of the pooled features (ConvNeXt): its epsilon. The evidence is then computed on
    # (F − μ)/σ with μ, σ the norm's statistics of the pooled features (exact, as softcamify's `normed`)
    norm_eps: float | None = None
    pooled_rank: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def layout(self) -> str:
        return "channels_last" if self.channel_axis != 1 else "channels_first"

    @property
    def strategy(self) -> str:
        """The name of the PyTorch path's strategy for the same head: ``linear``, or ``normed`` (a LayerNorm)."""
        return "linear" if self.norm_eps is None else "normed"

    @property
    def evidence_grid(self) -> list[Dim]:
        return [self.feature_shape[a] for a in self.spatial_axes] if self.feature_shape else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "feature_shape": self.feature_shape,
            "layout": self.layout,
            "pooling": self.pool,
            "between": list(self.between),
            "classifier": self.classifier,
            "activation": self.activation,
            "logits": self.logits,
            "output": self.output,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "norm": None if self.norm_eps is None else {"kind": "LayerNormalization", "epsilon": self.norm_eps},
        }


def find_tail(model: Any, index: GraphIndex | None = None) -> OnnxTail:
    """The classifier tail of ``model`` (an ``onnx.ModelProto``): the first graph output it ends in.

    Raises :class:`ConversionError` naming the node that breaks the decomposition when no output has one.
    """
    g = index or GraphIndex(model)
    reasons = []
    for out in model.graph.output:
        try:
            return _match(g, out.name)
        except NotATail as e:
            reasons.append(str(e))
    if not reasons:
        raise ConversionError("The ONNX graph has no outputs, so it has no classifier to convert.")
    raise ConversionError(f"No exact SoftCAM rewrite: {reasons[0]}")


def _match(g: GraphIndex, output: str) -> OnnxTail:
    t = output
    node = g.node(t)
    activation = None
    if node is not None and node.op_type in ACTIVATIONS:
        activation = node.op_type
        t = node.input[0]
        node = g.node(t)
    logits = t
    if node is None:
        raise NotATail(f"the output '{output}' is not computed by any node.")
    nodes: list[int] = []
    x, m, bias, classifier = _classifier(g, node, output, nodes)
    weight_dtype = next(g.constants[t].dtype for t in g.nodes[nodes[-1]].input if t in g.constants)
    k = m.shape[1]
    # walk back to the pooling; the affine steps are collected from the classifier backwards
    steps: list[tuple[Any, str]] = []  # (node, input tensor) from the classifier backwards
    between: list[str] = []
    while True:
        node = g.node(x)
        if node is None:
            raise NotATail(
                f"no global average pooling feeds the classifier {classifier}: it reads the graph input '{x}'."
            )
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            break
        if node.op_type in MAX_POOLS:
            raise NotATail(
                f"node {describe(node)} pools by maximum, which is not the mean of evidence maps, so the "
                f"classifier {classifier} does not decompose exactly."
            )
        if node.op_type == "Transpose" and not _pooled_shape(g.shapes.get(node.input[0])):
            raise NotATail(f"node {describe(node)} between the pooling and {classifier} moves more than the channels.")
        if node.op_type == "LayerNormalization":
            _check_layer_norm(g, node, m.shape[0], classifier)
        if node.op_type in (*RESHAPES, *AFFINE, "BatchNormalization", "Transpose", "LayerNormalization"):
            if node.op_type in AFFINE and _const_operand(g, node) is None:
                raise NotATail(f"node {describe(node)} between the pooling and {classifier} is not by a constant.")
            steps.append((node, x))
            between.append(describe(node))
            nodes.append(g.producer[node.output[0]])
            x = _data_input(g, node)
            continue
        raise NotATail(
            f"node {describe(node)} between the features and the classifier {classifier} is not a global "
            "average pooling nor a per-channel affine step (an MLP, a norm or attention pooling after the "
            "features), so the classifier does not decompose exactly into evidence maps."
        )
    pool_node = node
    nodes.append(g.producer[pool_node.output[0]])
    features = pool_node.input[0]
    rank = g.rank(features)
    if rank is None or rank < 3:
        raise NotATail(f"the rank of the features '{features}' that {describe(pool_node)} pools is unknown.")
    channel_axis, spatial = _pool_axes(g, pool_node, rank)
    feature_shape = list(g.shapes.get(features) or [])
    c = m.shape[0]
    if feature_shape and isinstance(feature_shape[channel_axis], int) and feature_shape[channel_axis] != c:
        raise NotATail(
            f"the classifier {classifier} reads {c} features but {describe(pool_node)} pools "
            f"{feature_shape[channel_axis]} channels."
        )
    # fold the affine steps, applied in forward order (pool first): y = s·x + t per channel
    s = np.ones(c, dtype=np.float64)
    sh = np.zeros(c, dtype=np.float64)
    norm_eps = None
    for node, tensor in reversed(steps):
        if node.op_type in RESHAPES or node.op_type == "Transpose":
            continue
        if node.op_type == "LayerNormalization":
            if norm_eps is not None or np.any(s != 1) or np.any(sh != 0):
                raise NotATail(f"node {describe(node)} normalizes features that were scaled or shifted before it.")
            norm_eps = float(_attr(node, "epsilon", 1e-5))
            gamma = g.const(node.input[1])
            beta = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(c)
            if gamma is None or beta is None:
                raise NotATail(f"node {describe(node)} has a scale or shift that is not constant.")
            s, sh = _vector(gamma, c, describe(node)), _vector(beta, c, describe(node))
            continue
        si, ti = _affine(g, node, tensor, c, channel_axis, rank)
        s, sh = si * s, si * sh + ti
    weight = (m * s[:, None]).T  # K×C
    b = sh @ m + bias
    dtype = weight_dtype if weight_dtype in (np.float16, np.float32, np.float64) else np.float32
    return OnnxTail(
        features=features,
        rank=rank,
        channel_axis=channel_axis,
        spatial_axes=spatial,
        feature_shape=feature_shape,
        pool=describe(pool_node),
        between=list(reversed(between)),
        classifier=classifier,
        logits=logits,
        activation=activation,
        output=output,
        weight=np.asarray(weight, dtype=np.float64),
        bias=np.asarray(b, dtype=np.float64).reshape(k),
        nodes=sorted(set(nodes)),
        dtype=np.dtype(dtype),
        pooled=pool_node.output[0],
        pooled_rank=g.rank(pool_node.output[0]),
        norm_eps=norm_eps,
    )


def _classifier(g: GraphIndex, node: Any, output: str, nodes: list[int]) -> tuple[str, np.ndarray, np.ndarray, str]:
    """(its input tensor, M C×K, bias K, description) of the linear classifier ``node``."""
    idx = g.producer[node.output[0]]
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            raise NotATail(f"the classifier {describe(node)} transposes its input (transA).")
        w = g.const(node.input[1])
        if w is None or w.ndim != 2:
            raise NotATail(f"the classifier {describe(node)} has no constant 2-D weight.")
        m = (w.T if _attr(node, "transB", 0) else w).astype(np.float64) * float(_attr(node, "alpha", 1.0))
        bias = np.zeros(m.shape[1])
        if len(node.input) > 2 and node.input[2]:
            c = g.const(node.input[2])
            if c is None:
                raise NotATail(f"the classifier {describe(node)} has a bias that is not constant.")
            bias = _vector(c, m.shape[1], f"the bias of {describe(node)}") * float(_attr(node, "beta", 1.0))
        nodes.append(idx)
        return node.input[0], m, bias, describe(node)
    if node.op_type == "Add":
        b_name = _const_operand(g, node)
        other = node.input[1] if b_name == node.input[0] else node.input[0]
        mm = g.node(other)
        if b_name is None or mm is None or mm.op_type != "MatMul":
            raise NotATail(f"the output '{output}' is computed by {describe(node)}, not by a linear classifier.")
        x, m = _matmul(g, mm)
        bias = _vector(g.constants[b_name], m.shape[1], f"the bias {describe(node)}")
        nodes += [idx, g.producer[mm.output[0]]]
        return x, m, bias, f"{describe(mm)} + {describe(node)}"
    if node.op_type == "MatMul":
        x, m = _matmul(g, node)
        nodes.append(idx)
        return x, m, np.zeros(m.shape[1]), describe(node)
    raise NotATail(
        f"the output '{output}' is computed by {describe(node)}, not by a linear classifier "
        "(Gemm, MatMul, MatMul + Add)."
    )


def _matmul(g: GraphIndex, node: Any) -> tuple[str, np.ndarray]:
    w = g.const(node.input[1])
    if w is None or w.ndim != 2:
        raise NotATail(f"the classifier {describe(node)} has no constant 2-D weight on its right.")
    return node.input[0], w.astype(np.float64)


def _const_operand(g: GraphIndex, node: Any) -> str | None:
    """The constant input of a binary node (its other input is the data)."""
    consts = [t for t in node.input[:2] if t in g.constants]
    return consts[0] if len(consts) == 1 else None


def _data_input(g: GraphIndex, node: Any) -> str:
    if node.op_type in AFFINE:
        c = _const_operand(g, node)
        return node.input[1] if c == node.input[0] else node.input[0]
    return node.input[0]


def _vector(a: np.ndarray, n: int, what: str) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.size == 1:
        return np.full(n, float(v.reshape(())))
    if v.size != n or max(v.shape, default=1) != n:
        raise NotATail(f"{what} has shape {list(v.shape)}, not one value per class or channel ({n}).")
    return v.reshape(n)


def _per_channel(a: np.ndarray, g: GraphIndex, tensor: str, c: int, channel_axis: int, what: str) -> np.ndarray:
    """A constant operand as one value per channel of ``tensor`` (which has shape N×C or the pooled shape)."""
    shape = g.shapes.get(tensor)
    rank = len(shape) if shape is not None else (2 if a.ndim <= 2 else a.ndim)
    axis = 1 if rank == 2 else channel_axis
    if shape is not None and rank > 2:  # the pooled shape kept its dims: find the channel axis by size
        sized = [i for i, d in enumerate(shape) if i > 0 and d != 1]
        axis = sized[0] if len(sized) == 1 else axis
    target = [1] * rank
    target[axis] = c
    if a.ndim > rank:
        raise NotATail(f"{what} has more dimensions than the tensor it scales.")
    try:
        full = np.broadcast_to(a.reshape((1,) * (rank - a.ndim) + a.shape), target)
    except ValueError:
        raise NotATail(f"{what} (shape {list(a.shape)}) is not one value per channel.") from None
    return np.asarray(full, dtype=np.float64).reshape(c)


def _affine(
    g: GraphIndex, node: Any, tensor: str, c: int, channel_axis: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel of a folded step: ``y = scale·x + shift``."""
    what = f"node {describe(node)}"
    if node.op_type == "BatchNormalization":
        shape = g.shapes.get(tensor)
        if shape is not None and len(shape) > 2 and shape[1] != c:
            raise NotATail(f"{what} normalizes axis 1, which is not the channel axis here.")
        gamma, beta, mean, var = (g.const(t) for t in node.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            raise NotATail(f"{what} has parameters that are not constant.")
        eps = float(_attr(node, "epsilon", 1e-5))
        s = _vector(gamma, c, what) / np.sqrt(_vector(var, c, what) + eps)  # type: ignore[arg-type]
        return s, _vector(beta, c, what) - _vector(mean, c, what) * s  # type: ignore[arg-type]
    name = _const_operand(g, node)
    assert name is not None
    v = _per_channel(g.constants[name], g, tensor, c, channel_axis, what)
    const_first = name == node.input[0]
    if node.op_type == "Mul":
        return v, np.zeros(c)
    if node.op_type == "Add":
        return np.ones(c), v
    if node.op_type == "Sub":
        return (-np.ones(c), v) if const_first else (np.ones(c), -v)
    if const_first:  # c / x is not affine
        raise NotATail(f"{what} divides a constant by the features, which is not affine.")
    if np.any(v == 0):
        raise NotATail(f"{what} divides by zero.")
    return 1.0 / v, np.zeros(c)


def _pool_axes(g: GraphIndex, node: Any, rank: int) -> tuple[int, list[int]]:
    """(channel axis, spatial axes) of the pooling ``node`` over a ``rank``-d feature map."""
    if node.op_type == "GlobalAveragePool":
        return 1, list(range(2, rank))
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        a = g.const(node.input[1])
        if a is None:
            raise NotATail(f"{describe(node)} reduces over axes that are not constant.")
        axes = [int(v) for v in a.reshape(-1)]
    if not axes:
        raise NotATail(f"{describe(node)} averages over every axis, not over the positions of a feature map.")
    norm = sorted({int(a) % rank for a in axes})
    rest = [i for i in range(1, rank) if i not in norm]
    if 0 in norm or len(rest) != 1:
        raise NotATail(
            f"{describe(node)} averages over axes {list(axes)} of a {rank}-d tensor, not over every position "
            "of a batch of feature maps."
        )
    return rest[0], norm


def _pooled_shape(shape: list[Dim] | None) -> bool:
    """True for the shape of pooled features: one non-batch axis (the channels) that is not 1."""
    return shape is not None and sum(1 for d in shape[1:] if d != 1) <= 1


def _check_layer_norm(g: GraphIndex, node: Any, c: int, classifier: str) -> None:
    """A LayerNormalization after the pooling must normalize over the channels alone (ConvNeXt's head norm)."""
    shape = g.shapes.get(node.input[0])
    if shape is None or not _pooled_shape(shape):
        raise NotATail(f"node {describe(node)} normalizes a tensor that is not the pooled features.")
    axis = int(_attr(node, "axis", -1)) % len(shape)
    if axis == 0 or c not in shape[axis:] or any(d != 1 for d in shape[1:axis]):
        raise NotATail(f"node {describe(node)} does not normalize over the {c} channels of the pooled features.")
