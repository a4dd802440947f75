"""The package's import rules (docs/architecture.md): no import circle, no upward import, and a torch-free
layer — the modules the ONNX path (predict, explain, evaluate of an .onnx file) runs on — that imports
without torch, timm or torchvision installed.

Read from the source (every ``import`` statement, also inside functions), so a rule broken on a path no other
test runs is still caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "softcamify"

#: Layers in pipeline order: a module may import from its own layer and the layers before it, never after.
#: A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    # 0 foundations: errors, files, devices, the one-logit view
    (
        "softcamify._version",
        "softcamify.errors",
        "softcamify.io",
        "softcamify.device",
        "softcamify.binary",
        "softcamify.distributed",
        "softcamify.tolerance",
        "softcamify.threads",
        "softcamify.options",
    ),
    # 1 images and data: decoding, preprocessing (its one config), datasets, drawing, metrics on arrays, HTML
    (
        "softcamify.images",
        "softcamify.config",
        "softcamify.render",
        "softcamify.report",
        "softcamify.evaluation.metrics",
        "softcamify.volumes",
        "softcamify.data",
    ),
    # 2 models: where originals come from, reading files, the SoftCAM module, heads, conversion
    (
        "softcamify.sources",
        "softcamify.checkpoints",
        "softcamify.model",
        "softcamify.heads",
        "softcamify.dilation",
        "softcamify.conversion_reports",
        "softcamify.conversion",
    ),
    # 3 running models: the one loader and its torch / onnxruntime backends, export, predict and explain
    (
        "softcamify.onnx_runtime",
        "softcamify.runtime",
        "softcamify.exporters",
        "softcamify.onnx_convert",
        "softcamify.explanations",
        "softcamify.prediction",
    ),
    # 4 training (and the λ sweep beside it), evaluation (run, report, …) and its post-hoc baselines
    ("softcamify.training", "softcamify.evaluation.baselines", "softcamify.evaluation"),
    # 5 the demo; 6 the command line and the package's front door
    ("softcamify.demo",),
    ("softcamify.cli", "softcamify.__main__", "softcamify"),
]

#: The torch-free layer: imported by the ONNX path, so none may import torch, timm or torchvision at module
#: level, nor a module outside this set (torch-only code paths import torch inside functions).
TORCH_FREE = (
    "softcamify._version",
    "softcamify.errors",
    "softcamify.io",
    "softcamify.binary",
    "softcamify.tolerance",
    "softcamify.threads",
    "softcamify.options",
    "softcamify.config",
    "softcamify.runtime",
    "softcamify.explanations",
    "softcamify.explanations.compute",
    "softcamify.explanations.inputs",
    "softcamify.explanations.view",
    "softcamify.explanations.write",
    "softcamify.explanations.run",
    "softcamify.explanations.volume",
    "softcamify.images",
    "softcamify.render",
    "softcamify.report",
    "softcamify.evaluation.metrics",
    "softcamify.data.collect",
    "softcamify.data.discover",
    "softcamify.data.labels_csv",
    "softcamify.data.splits",
    "softcamify.data.synth",
    "softcamify.data.synth_draw",
    "softcamify.volumes",
    "softcamify.onnx_runtime",
    "softcamify.onnx_convert",
    "softcamify.onnx_convert.tail",
    "softcamify.onnx_convert.rewrite",
    "softcamify.onnx_convert.verify",
    "softcamify.onnx_convert.convert",
    "softcamify.prediction",
    "softcamify.evaluation.run",
    "softcamify.evaluation.arguments",
    "softcamify.evaluation.original",
    "softcamify.evaluation.results",
    "softcamify.evaluation.gates",
    "softcamify.evaluation.samples",
    "softcamify.evaluation.scoring",
    "softcamify.evaluation.settings",
    "softcamify.evaluation.report",
    "softcamify.evaluation.diff",
    "softcamify.evaluation.diff_pass",
    "softcamify.evaluation.diff_summary",
    "softcamify.evaluation.diff_results",
    "softcamify.evaluation.diff_report",
    "softcamify.evaluation.volume",
    "softcamify.cli",
)
TORCH_NAMES = ("torch", "timm", "torchvision")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported name, line) of every import in module ``name``: softcamify modules resolved to the module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


def _internal(name: str, top_level_only: bool = False) -> set[str]:
    return {t for t, _ in _imports(name, top_level_only) if t in MODULES and t != name}


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} belongs to no layer: add it to LAYERS (and to docs/architecture.md)"
    return rank


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_no_import_circle():
    graph = {m: _internal(m) for m in MODULES}
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n] if n in path else [m, n]
                pytest.fail("import circle: " + " → ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_upward_import():
    upward = []
    for m in MODULES:
        if m.endswith("__main__") or m == "softcamify":  # the front door re-exports from every layer
            continue
        for target in _internal(m):
            if target == "softcamify":
                continue
            if _layer(target) > _layer(m):
                upward.append(f"{m} (layer {_layer(m)}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def _torch_free(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in TORCH_FREE)


def test_torch_free_layer_is_closed_at_module_level():
    bad = []
    for m in MODULES:
        if not _torch_free(m):
            continue
        for target, line in _imports(m, top_level_only=True):
            root = target.split(".")[0]
            if root in TORCH_NAMES:
                bad.append(f"{MODULES[m].name}:{line} imports {target} at module level")
            elif target in MODULES and target != "softcamify" and not _torch_free(target):
                bad.append(f"{MODULES[m].name}:{line} imports {target}, which is outside the torch-free layer")
    assert not bad, "\n".join(bad)


def test_torch_free_layer_imports_without_torch():
    names = [m for m in MODULES if _torch_free(m)]
    code = "\n".join(
        [
            "import sys",
            f"for n in {TORCH_NAMES!r}:",
            "    sys.modules[n] = None  # an import of them raises ImportError, as where they are not installed",
            *[f"import {m}" for m in names],
            f"loaded = [m for m in sys.modules if m.split('.')[0] in {TORCH_NAMES!r} and sys.modules[m] is not None]",
            "assert not loaded, loaded",
        ]
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
