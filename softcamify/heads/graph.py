"""Reading a classifier head from the module graph (torch.fx), without a table of model names.

A head is traced as a graph of operations from the last feature map to the logits. Each node gets a
*role* (pool, norm, linear, activation, ...); the list of roles is what ``inspect`` shows and what the
strategies in this package use to decide how to convert. The same utilities split a whole model
(torchvision or a user's own module) into a feature extractor and a head at its global pooling.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

# --- roles ------------------------------------------------------------------------------------------
POOL = "pool"  # spatial reduction (detail: avg, max, avgmax, catavgmax, other)
NORM = "norm"  # per-sample normalization over channels (LayerNorm, RmsNorm, SimpleNorm, GroupNorm(1))
AFFINE = "affine"  # per-channel affine: BatchNorm in eval, scalar add/mul/div
LINEAR = "linear"  # Linear or 1x1 conv: the classifier (or a linear pre-logits layer)
CONV = "conv"  # a conv with kernel > 1 (e.g. VGG's fc6 as 7x7 conv): reduces a spatial grid
ACT = "activation"  # a nonlinearity
PASS = "passthrough"  # dropout, identity, flatten, reshape, getattr/getitem bookkeeping
COMBINE = "combine"  # several tensors combined (add of two heads, cat, ...)
OTHER = "other"

_ACT_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Mish,
    nn.Softplus,
    nn.SELU,
    nn.CELU,
    nn.GLU,
    nn.Hardtanh,
    nn.Softmax,
)
_ACT_FUNCS = {
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    F.elu,
    F.leaky_relu,
    F.mish,
    F.softplus,
    F.selu,
    F.celu,
    F.glu,
    F.hardtanh,
    F.softmax,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.nn.functional.relu_,
}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh", "softmax", "sigmoid_", "tanh_"}
_PASS_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, operator.getitem, getattr, F.dropout, torch.clone}
_PASS_METHODS = {
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "contiguous",
    "clone",
    "size",
    "dim",
    "float",
    "to",
    "type_as",
}
_SCALAR_OPS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul, torch.div, torch.sub}
_NORM_TYPE_NAMES = {
    "LayerNorm": "layernorm",
    "LayerNorm2d": "layernorm",
    "LayerNormFp32": "layernorm",
    "LayerNorm2dFp32": "layernorm",
    "LayerNormExp2d": "layernorm",
    "RmsNorm": "rmsnorm",
    "RmsNorm2d": "rmsnorm",
    "RmsNormFp32": "rmsnorm",
    "RmsNorm2dFp32": "rmsnorm",
    "SimpleNorm": "simplenorm",
    "SimpleNorm2d": "simplenorm",
    "SimpleNormFp32": "simplenorm",
    "SimpleNorm2dFp32": "simplenorm",
}


def norm_kind(module: nn.Module) -> str | None:
    """The per-sample normalization a module computes over channels, or None."""
    if isinstance(module, nn.GroupNorm) and module.num_groups == 1:
        return "layernorm"
    for cls in type(module).__mro__:
        kind = _NORM_TYPE_NAMES.get(cls.__name__)
        if kind:
            return kind
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return "rmsnorm"
    return None


class HeadTracer(fx.Tracer):
    """fx tracer that keeps pools and norms whole, so the graph reads like the model's code."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        name = type(m).__name__
        if norm_kind(m) is not None or isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.Dropout, nn.Identity, nn.Flatten, *_ACT_MODULES)):
            return True  # also subclasses from other libraries (e.g. timm's Linear)
        if name in ("SelectAdaptivePool2d", "AdaptiveAvgMaxPool2d", "AdaptiveCatAvgMaxPool2d") or name.startswith(
            "FastAdaptive"
        ):
            return True
        try:
            from timm.layers._fx import _leaf_modules  # modules timm itself marks as untraceable
        except Exception:  # pragma: no cover - older timm
            _leaf_modules = set()
        if type(m) in _leaf_modules:
            return True
        return super().is_leaf_module(m, qualname)


def trace(module: nn.Module) -> fx.GraphModule:
    graph = HeadTracer().trace(module)
    return fx.GraphModule(module, graph)


class MethodAsModule(nn.Module):
    """Wrap ``owner.<method>`` as a module so it can be traced or called (e.g. timm's forward_head)."""

    def __init__(self, owner: nn.Module, method: str):
        super().__init__()
        self.model = owner
        self.method = method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


# --- node roles -------------------------------------------------------------------------------------
@dataclass
class Step:
    """One operation of a head, as ``inspect`` reports it."""

    role: str
    detail: str
    target: str = ""  # qualified module name or function name
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.detail


def _pool_detail_from_select(m: nn.Module) -> str:
    pool_type = str(getattr(m, "pool_type", "avg") or "").lower()
    if pool_type in ("", "none"):
        return "none"
    if pool_type.endswith("catavgmax"):
        return "catavgmax"
    if pool_type.endswith("avgmax"):
        return "avgmax"
    if pool_type.endswith("max"):
        return "max"
    return "avg"


def _is_global(output_size: Any) -> bool:
    if isinstance(output_size, int):
        return output_size == 1
    if isinstance(output_size, (tuple, list)):
        return all(s in (1, None) for s in output_size)
    return False


def _spatial_dims(dims: Any) -> bool:
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)):
        return False
    return set(dims) in ({2, 3}, {-1, -2}, {1, 2}, {-2, -3}, {2, 3, 4}, {-1, -2, -3})


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> Step:
    """Give a traced node its role in the head."""
    if node.op == "call_module":
        return _classify_module(node, modules)
    if node.op == "call_function":
        return _classify_function(node)
    if node.op == "call_method":
        return _classify_method(node)
    return Step(PASS, node.op, str(node.target))


def _classify_module(node: fx.Node, modules: dict[str, nn.Module]) -> Step:
    """:func:`classify` for a ``call_module`` node."""
    m = modules[node.target]
    name = type(m).__name__
    target = str(node.target)
    if (
        name == "SelectAdaptivePool2d"
        or name.startswith("FastAdaptive")
        or name
        in (
            "AdaptiveAvgMaxPool2d",
            "AdaptiveCatAvgMaxPool2d",
        )
    ):
        kind = (
            _pool_detail_from_select(m)
            if name == "SelectAdaptivePool2d"
            else ("catavgmax" if "Cat" in name else "avgmax" if "AvgMax" in name else "max" if "Max" in name else "avg")
        )
        if kind == "none":
            return Step(PASS, "no pooling", target)
        return Step(POOL, f"global {kind} pool", target, {"kind": kind})
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        if _is_global(m.output_size):
            return Step(POOL, "global avg pool", target, {"kind": "avg"})
        return Step(POOL, f"adaptive avg pool to {m.output_size}", target, {"kind": "grid", "size": m.output_size})
    if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        return Step(
            POOL,
            "global max pool" if _is_global(m.output_size) else "adaptive max pool",
            target,
            {"kind": "max" if _is_global(m.output_size) else "grid"},
        )
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.AvgPool3d, nn.MaxPool3d)):
        return Step(POOL, f"{name}(kernel={m.kernel_size})", target, {"kind": "fixed", "kernel": m.kernel_size})
    kind = norm_kind(m)
    if kind is not None:
        return Step(NORM, f"{name}({kind})", target, {"kind": kind})
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return Step(AFFINE, f"{name}", target)
    if isinstance(m, nn.Linear):
        return Step(
            LINEAR, f"Linear({m.in_features}→{m.out_features})", target, {"in": m.in_features, "out": m.out_features}
        )
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        k = tuple(m.kernel_size)
        size = "×".join(map(str, k))
        name = "Conv3d" if isinstance(m, nn.Conv3d) else "Conv2d"
        if set(k) == {1} and m.groups == 1:
            return Step(
                LINEAR,
                f"{name} {size}({m.in_channels}→{m.out_channels})",
                target,
                {"in": m.in_channels, "out": m.out_channels},
            )
        return Step(
            CONV,
            f"{name} {size}({m.in_channels}→{m.out_channels})",
            target,
            {"in": m.in_channels, "out": m.out_channels, "kernel": list(k)},
        )
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    if isinstance(m, (*dropouts, nn.Identity, nn.Flatten, nn.Unflatten)):
        return Step(PASS, name, target)
    if isinstance(m, _ACT_MODULES) or name in ("GELUTanh", "QuickGELU", "HardSwish", "HardSigmoid", "Swish"):
        return Step(ACT, name, target)
    if name.lower().startswith("dropout") or name in ("DropPath",):
        return Step(PASS, name, target)
    convs = [c for c in m.modules() if isinstance(c, (nn.Conv2d, nn.Conv3d)) and set(c.kernel_size) != {1}]
    if convs:  # an untraceable block with a spatial conv, e.g. timm's ConvMlp (VGG fc6 as 7×7 conv)
        k = tuple(convs[0].kernel_size)
        return Step(CONV, f"{name}({type(convs[0]).__name__} {'×'.join(map(str, k))})", target, {"kernel": list(k)})
    return Step(OTHER, name, target)


def _classify_function(node: fx.Node) -> Step:
    """:func:`classify` for a ``call_function`` node."""
    fn = node.target
    fname = getattr(fn, "__name__", str(fn))
    if fn in (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if _is_global(size):
            return Step(POOL, "global avg pool", fname, {"kind": "avg"})
        return Step(POOL, f"adaptive avg pool to {size}", fname, {"kind": "grid"})
    if fn in (F.adaptive_max_pool2d, F.adaptive_max_pool3d):
        return Step(POOL, "global max pool", fname, {"kind": "max"})
    if fn in (torch.mean, torch.amax, torch.max, torch.sum, torch.logsumexp):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if _spatial_dims(dims):
            kind = {torch.mean: "avg", torch.sum: "sum"}.get(fn, "max")
            return Step(POOL, f"global {kind} pool (torch.{fname})", fname, {"kind": kind})
        return Step(OTHER, f"torch.{fname}", fname)
    if fn in _ACT_FUNCS:
        return Step(ACT, fname, fname)
    if fn in _PASS_FUNCS:
        return Step(PASS, fname, fname)
    if fn is F.linear:
        return Step(LINEAR, "linear", fname)
    if fn in (torch.cat, torch.stack):
        return Step(COMBINE, fname, fname)
    if fn in _SCALAR_OPS:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) >= 2:
            return Step(COMBINE, fname, fname)
        return Step(AFFINE, f"scalar {fname}", fname)
    if fn is F.layer_norm:
        return Step(NORM, "layer_norm", fname, {"kind": "layernorm"})
    return Step(OTHER, fname, fname)


def _classify_method(node: fx.Node) -> Step:
    """:func:`classify` for a ``call_method`` node."""
    meth = str(node.target)
    if meth in ("mean", "amax", "max", "sum"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if _spatial_dims(dims):
            kind = {"mean": "avg", "sum": "sum"}.get(meth, "max")
            return Step(POOL, f"global {kind} pool (.{meth})", meth, {"kind": kind})
        return Step(OTHER, f".{meth}", meth)
    if meth in _ACT_METHODS:
        return Step(ACT, meth, meth)
    if meth in _PASS_METHODS:
        return Step(PASS, meth, meth)
    if meth in ("add", "mul", "div", "sub", "add_", "mul_", "div_"):
        tensors = [a for a in node.args[1:] if isinstance(a, fx.Node)]
        return Step(COMBINE if tensors else AFFINE, meth, meth)
    if meth == "permute":
        return Step(PASS, "permute", meth)
    return Step(OTHER, f".{meth}", meth)


def compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]


def steps_of(gm: fx.GraphModule) -> list[Step]:
    """The head's operations in order, with bookkeeping (size/getattr) left out."""
    modules = dict(gm.named_modules())
    steps = []
    for node in compute_nodes(gm):
        if node.op == "call_function" and node.target is getattr:
            continue
        if node.op == "call_method" and node.target in ("size", "dim"):
            continue
        steps.append(classify(node, modules))
    return steps


def describe(steps: list[Step]) -> str:
    shown = [s.detail for s in steps if s.role != PASS or s.detail.startswith(("Dropout", "Flatten", "flatten"))]
    return " → ".join(shown) if shown else "identity"


# --- graph surgery ----------------------------------------------------------------------------------
def ancestors(node: fx.Node, stop: fx.Node | None = None) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is stop:
            continue
        stack.extend(n.all_input_nodes)
    return seen


def extract(gm: fx.GraphModule, start: fx.Node | None, end: fx.Node) -> fx.GraphModule:
    """A new GraphModule computing ``end`` from ``start`` (a placeholder) or from the model input.

    Raises ValueError if the part needs another input than ``start`` (e.g. a head that also reads the image).
    """
    needed = ancestors(end, stop=start)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = g.placeholder("x")
    for node in gm.graph.nodes:
        if node not in needed or node in env:
            continue
        if node.op == "placeholder":
            if start is not None:
                raise ValueError(f"the head also reads the model input {node.name!r}")
            env[node] = g.node_copy(node)
            continue
        env[node] = g.node_copy(node, lambda n: env[n])
    g.output(env[end])
    sub = fx.GraphModule(gm, g)
    sub.graph.lint()
    return sub


def output_node(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    value = out.args[0]
    if not isinstance(value, fx.Node):
        raise ValueError("the model returns several outputs (a tuple, list or dict), not one logits tensor")
    return value


def find_global_pool(gm: fx.GraphModule, start: fx.Node | None = None) -> tuple[fx.Node, fx.Node]:
    """Walk back from the logits (or ``start``) to the pooling; return (pool node, feature node feeding it).

    The walk accepts only single-input head operations (linear, norm, dropout, flatten, activation,
    conv); it stops at the first spatial reduction.
    """
    modules = dict(gm.named_modules())
    node = start if start is not None else output_node(gm)
    for _ in range(64):
        step = classify(node, modules)
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if step.role == PASS and inputs and node.args and isinstance(node.args[0], fx.Node):
            # x.view(x.size(0), -1) (MONAI's ResNet): the shape arguments are bookkeeping, not a branch
            inputs = [node.args[0]]
        if step.role == POOL:
            if not inputs:
                break
            return node, inputs[0]
        if len(inputs) != 1:
            raise ValueError(f"the head combines several branches at {node.name!r} ({step.detail})")
        node = inputs[0]
        if node.op == "placeholder":
            break
    raise ValueError("no spatial pooling was found between the features and the logits")


def module_node(gm: fx.GraphModule, name: str) -> fx.Node | None:
    """The last graph node computed by module ``name`` (or one of its submodules)."""
    found = None
    for node in gm.graph.nodes:
        if node.op == "call_module" and (node.target == name or str(node.target).startswith(name + ".")):
            found = node
    return found


class HookedFeatures(nn.Module):
    """The output of one named layer, captured with a forward hook while the whole model runs.

    For models that torch.fx cannot trace: slower (the head runs too) but exact.
    """

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, x):
        captured = []
        handle = self.model.get_submodule(self.layer).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[-1]
