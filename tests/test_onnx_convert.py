"""convert / inspect of a deployed .onnx classifier: the graph rewrite (softcamify.onnx_convert), torch-free.

Real networks are exported to ONNX here (TorchScript and dynamo exporters), rewritten through the CLI, and
checked against the original graph in onnxruntime and against softcamify's PyTorch conversion of the same
network; hand-built graphs (onnx.helper) cover the TF/Keras channels-last shape, Softmax after the logits,
folded BatchNormalization / Mul / Add, and the refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from softcamify.errors import EXIT_CONVERSION, EXIT_OUTPUT, EXIT_VALIDATION, ConversionError
from softcamify.onnx_convert import convert_onnx, inspect_onnx, rewrite_onnx

SIZE = 32
ATOL, RTOL = 1e-4, 1e-5


def _export_torchscript(module, path, size=SIZE, channels=3, opset=17, spatial=2):
    import torch

    x = torch.randn(2, channels, *([size] * spatial))
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def _session(path_or_proto):
    data = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _allowed(ref):
    return ATOL + RTOL * float(np.abs(ref).max())


def _check_against_original(original, rewritten, x):
    """The rewritten graph: checker and strict shape inference pass; every original output is reproduced;
    the logits output is the original's pre-activation logits; mean(evidence) == logits."""
    proto = onnx.load(str(rewritten))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    props = {p.key: p.value for p in proto.metadata_props}
    s_orig, s_new = _session(original), _session(rewritten)
    feed = {s_orig.get_inputs()[0].name: x}
    ref = dict(zip([o.name for o in s_orig.get_outputs()], s_orig.run(None, feed), strict=True))
    got = dict(zip([o.name for o in s_new.get_outputs()], s_new.run(None, feed), strict=True))
    assert list(got)[: len(ref)] == list(ref)  # the original outputs keep their names and order
    for name, value in ref.items():
        assert np.abs(got[name] - value).max() <= _allowed(value), name
    logits, evidence = got[props["logits_output"]], got[props["evidence_output"]]
    assert props["evidence_output"] == "evidence" and evidence.ndim == x.ndim
    means = evidence.mean(axis=tuple(range(2, evidence.ndim)))
    assert np.abs(means - logits).max() <= _allowed(logits)
    return logits, evidence, props


def _torch_maps(module, x):
    """softcamify's PyTorch conversion of the same network: its evidence maps on ``x``."""
    import torch

    import softcamify

    sc = softcamify.convert(module.eval(), input_size=(SIZE, SIZE))
    with torch.no_grad():
        logits, maps = sc.forward_maps(torch.from_numpy(x))
    return logits.numpy(), maps.numpy()


def _cli_convert(src, dst, *extra):
    r = run_cli("convert", src, "-o", dst, "--json", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


# --- real networks, exported here --------------------------------------------------------------------------
def _timm(name):
    import timm
    import torch

    torch.manual_seed(0)
    if name == "regnet":  # a RegNet-X a hundred times smaller than regnetx_002 (4 stages, group convs)
        from timm.models.regnet import RegNet, RegNetCfg

        return RegNet(RegNetCfg(depth=4, w0=8, wa=16.0, wm=1.5, group_size=8, stem_width=8), num_classes=5)
    return timm.create_model(name, pretrained=False, num_classes=5)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "regnet"])
def test_timm_models_rewrite_exactly_and_match_the_pytorch_conversion(name, tmp_path):
    model = _timm(name)
    src = _export_torchscript(model, tmp_path / f"{name}.onnx")
    report = _cli_convert(src, tmp_path / "sc.onnx", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert report["exact"] and report["passed"] and report["num_classes"] == 5
    assert report["strategy"] == ("normed" if name == "test_convnext" else "linear")
    assert report["max_abs_diff"] <= ATOL and report["maps_mean_diff"] <= ATOL
    # the same keys as the PyTorch conversion's report
    import softcamify

    assert set(softcamify.ConversionReport.__dataclass_fields__) <= set(report)
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    logits, evidence, props = _check_against_original(src, tmp_path / "sc.onnx", x)
    assert json.loads(props["mean"]) == [0.5] * 3 and json.loads(props["input_size"]) == [3, SIZE, SIZE]
    torch_logits, torch_maps = _torch_maps(model, x)
    assert evidence.shape == torch_maps.shape
    assert np.abs(evidence - torch_maps).max() <= 1e-4
    assert np.abs(logits - torch_logits).max() <= _allowed(torch_logits)


def test_torchvision_resnet18(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    src = _export_torchscript(model, tmp_path / "r18.onnx")
    report = _cli_convert(src, tmp_path / "sc.onnx")
    assert report["evidence_grid"] == [1, 1] and report["tail"]["classifier"] == "'/fc/Gemm' (Gemm)"
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    _, evidence, _ = _check_against_original(src, tmp_path / "sc.onnx", x)
    assert evidence.shape == (2, 3, 1, 1)


def test_dynamo_export_reducemean_with_axes_input(tmp_path):
    """torch's dynamo exporter (opset 18+): ReduceMean with its axes as an input, Reshape, Gemm."""
    import torch

    model = _timm("test_resnet").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = torch.onnx.export(
        model, (x,), dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False
    )
    program.save(str(tmp_path / "dyn.onnx"))
    info = inspect_onnx(tmp_path / "dyn.onnx").to_dict()
    assert info["convertible"] and info["pooling"].endswith("(ReduceMean)") and info["evidence_grid"] == [1, 1]
    report = _cli_convert(tmp_path / "dyn.onnx", tmp_path / "sc.onnx")
    assert report["exact"]
    xn = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    _, evidence, _ = _check_against_original(tmp_path / "dyn.onnx", tmp_path / "sc.onnx", xn)
    assert np.abs(evidence - _torch_maps(model, xn)[1]).max() <= 1e-4


def test_transformers_resnet(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    hf = transformers.ResNetForImageClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(pixel_values=x).logits

    src = _export_torchscript(Logits(hf), tmp_path / "hf.onnx")
    report = _cli_convert(src, tmp_path / "sc.onnx")
    assert report["num_classes"] == 4 and report["exact"]
    x = np.random.default_rng(4).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    _check_against_original(src, tmp_path / "sc.onnx", x)


def test_volumes_rewrite_by_rank(tmp_path):
    """A 3D classifier (5-d input, GlobalAveragePool over d, h, w): the evidence is N×K×d×h×w."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 2)
    )
    src = _export_torchscript(model, tmp_path / "vol.onnx", size=8, channels=1, spatial=3)
    proto, report = rewrite_onnx(src)
    assert report.evidence_grid == [4, 4, 4]
    dims = [d.dim_value or d.dim_param for d in proto.graph.output[-1].type.tensor_type.shape.dim]
    assert dims == ["N", 2, 4, 4, 4]
    onnx.save(proto, tmp_path / "sc.onnx")
    x = np.random.default_rng(5).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    _check_against_original(src, tmp_path / "sc.onnx", x)


# --- hand-built graphs: the shapes other exporters write ---------------------------------------------------
def _graph(nodes, inits, inp, out, opset=13, metadata=None):
    g = helper.make_graph(nodes, "g", [inp], out, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="hand")
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    return m


def _keras_nhwc(rng, k=4, c=6, size=8):
    """tf2onnx's shape: NHWC input, Transpose to NCHW for the Conv, back to NHWC, ReduceMean over [1, 2],
    MatMul + Add, Softmax on the logits (the output 'probs')."""
    inits = {
        "conv_w": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.standard_normal(c).astype(np.float32),
        "dense_w": rng.standard_normal((c, k)).astype(np.float32),
        "dense_b": rng.standard_normal(k).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("ReduceMean", ["nhwc"], ["pooled"], axes=[1, 2], keepdims=0, name="gap"),
        helper.make_node("MatMul", ["pooled", "dense_w"], ["mm"], name="dense/MatMul"),
        helper.make_node("Add", ["mm", "dense_b"], ["dense"], name="dense/BiasAdd"),
        helper.make_node("Softmax", ["dense"], ["probs"], axis=-1, name="softmax"),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__1", size, size, 3])
    out = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["unk__1", k])]
    return _graph(nodes, inits, inp, out, metadata={"producer_note": "keep me"}), inits


def test_keras_nhwc_with_softmax_keeps_probs_and_exposes_logits(tmp_path):
    rng = np.random.default_rng(0)
    model, w = _keras_nhwc(rng)
    onnx.save(model, tmp_path / "keras.onnx")
    report = _cli_convert(tmp_path / "keras.onnx", tmp_path / "sc.onnx", "--class-names", "a,b,c,d")
    assert report["tail"]["layout"] == "channels_last" and report["tail"]["activation"] == "Softmax"
    assert report["outputs"]["logits"] == "logits" and report["evidence_grid"] == [8, 8]
    x = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
    logits, evidence, props = _check_against_original(tmp_path / "keras.onnx", tmp_path / "sc.onnx", x)
    sc = onnx.load(str(tmp_path / "sc.onnx"))
    assert [o.name for o in sc.graph.output] == ["probs", "logits", "evidence"]
    assert props["producer_note"] == "keep me" and json.loads(props["class_names"]) == ["a", "b", "c", "d"]
    assert sc.opset_import[0].version == 13 and sc.graph.input[0] == model.graph.input[0]
    # the evidence is the dense layer applied at each position of the features (computed here in numpy)
    feats = _session(_with_output(model, "relu")).run(["relu"], {"input": x})[0]  # N×C×H×W
    expected = np.einsum("nchw,ck->nkhw", feats, w["dense_w"]) + w["dense_b"][None, :, None, None]
    assert np.abs(evidence - expected).max() <= 1e-4
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(e / e.sum(1, keepdims=True) - _session(model).run(["probs"], {"input": x})[0]).max() < 1e-6


def _with_output(model, name):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def _nchw_tail(rng, between, k=3, c=5, size=6, classifier="gemm", activation=None, opset=13):
    """Conv → Relu → GlobalAveragePool → Flatten → ``between`` → classifier (→ activation)."""
    inits = {
        "conv_w": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
        "fc_w": rng.standard_normal((k, c)).astype(np.float32),
        "fc_b": rng.standard_normal(k).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["feat"], name="relu"),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"], name="pool"),
        helper.make_node("Flatten", ["gap"], ["x0"], name="flatten"),
    ]
    x = "x0"
    for i, (op, extra) in enumerate(between):
        inits.update({name: value for name, value in extra.items()})
        nodes.append(helper.make_node(op, [x, *extra], [f"x{i + 1}"], name=f"between_{op}_{i}"))
        x = f"x{i + 1}"
    logits = "logits_raw" if activation else "out"
    if classifier == "gemm":  # transB, alpha, beta
        inits["fc_w"] = inits["fc_w"].T.copy()
        nodes.append(helper.make_node("Gemm", [x, "fc_w", "fc_b"], [logits], alpha=0.5, beta=2.0, name="fc"))
    else:
        nodes.append(helper.make_node("Gemm", [x, "fc_w", "fc_b"], [logits], transB=1, name="fc"))
    if activation:
        nodes.append(helper.make_node(activation, [logits], ["out"], name="act"))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", k])]
    return _graph(nodes, inits, inp, out, opset=opset)


def test_batchnorm_and_mul_add_between_pool_and_gemm_are_folded(tmp_path):
    rng = np.random.default_rng(1)
    c = 5
    bn = {
        "bn_s": rng.uniform(0.5, 2, c).astype(np.float32),
        "bn_b": rng.standard_normal(c).astype(np.float32),
        "bn_m": rng.standard_normal(c).astype(np.float32),
        "bn_v": rng.uniform(0.5, 2, c).astype(np.float32),
    }
    between = [
        ("BatchNormalization", bn),
        ("Mul", {"scale": rng.standard_normal((1, c)).astype(np.float32)}),
        ("Add", {"shift": np.float32(0.7).reshape(())}),
        ("Sub", {"sub": rng.standard_normal(c).astype(np.float32)}),
    ]
    model = _nchw_tail(rng, between, c=c, activation="Sigmoid")
    onnx.save(model, tmp_path / "bn.onnx")
    info = inspect_onnx(tmp_path / "bn.onnx")
    assert info.tail is not None and [b.split(" ")[-1] for b in info.tail.between] == [
        "(Flatten)",
        "(BatchNormalization)",
        "(Mul)",
        "(Add)",
        "(Sub)",
    ]
    report = _cli_convert(tmp_path / "bn.onnx", tmp_path / "sc.onnx")
    assert report["tail"]["activation"] == "Sigmoid" and report["outputs"]["logits"] == "logits"
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    logits, _, _ = _check_against_original(tmp_path / "bn.onnx", tmp_path / "sc.onnx", x)
    raw = _session(_with_output(model, "logits_raw")).run(["logits_raw"], {"input": x})[0]
    assert np.abs(logits - raw).max() <= _allowed(raw)


def test_gemm_with_transb_alpha_beta(tmp_path):
    rng = np.random.default_rng(2)
    for classifier in ("gemm", "gemm_transb"):
        model = _nchw_tail(rng, [], classifier=classifier)
        proto, report = rewrite_onnx(model, input_size=(6, 6))
        assert report.passed and report.max_abs_diff <= ATOL, classifier


# --- predict / explain / evaluate on the rewritten file, torch never imported ---------------------------
def test_rewrite_predict_explain_evaluate_without_torch(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    model = _nchw_tail(rng, [], k=3, size=16, activation="Softmax")
    onnx.save(model, tmp_path / "m.onnx")
    data = tmp_path / "data"
    for i, cls in enumerate(["a", "b", "c"] * 2):
        (data / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch fails
        from softcamify.cli import app
        from typer.testing import CliRunner
        runner = CliRunner()
        def run(*args):
            r = runner.invoke(app, list(args), catch_exceptions=False)
            assert r.exit_code == 0, r.output
            return r.output
        root = {str(tmp_path)!r}
        conv = json.loads(run("convert", root + "/m.onnx", "-o", root + "/sc.onnx", "--mean", "0.5,0.5,0.5",
            "--std", "0.5,0.5,0.5", "--class-names", "a,b,c", "--calibration", root + "/data", "--json"))
        assert conv["calibration_images"] == 6 and conv["passed"], conv
        pred = json.loads(run("predict", root + "/sc.onnx", root + "/data/a", "--json", "--top-k", "3"))
        run("explain", root + "/sc.onnx", root + "/data/a", "-o", root + "/ex")
        run("evaluate", root + "/sc.onnx", root + "/data", "--json")
        loaded = [m for m, mod in sys.modules.items() if mod is not None]
        bad = sorted(m for m in loaded if m.split(".")[0] in ("torch", "timm", "torchvision"))
        assert not bad, bad
        print("PRED" + json.dumps(pred))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "ex" / "index.html").is_file()
    pred = json.loads(r.stdout.split("PRED", 1)[1])
    # predict reads the pre-activation logits (not the Softmax output): its probabilities are the model's
    from softcamify.images import preprocess

    first = pred["predictions"][0]
    x = preprocess(
        first["image"], input_size=(16, 16), mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", crop_pct=None
    )[None]
    probs = _session(model).run(["out"], {"input": x})[0][0]
    assert len(first["top_k"]) == 3
    for entry in first["top_k"]:
        assert abs(entry["probability"] - probs["abc".index(entry["class"])]) < 1e-4


# --- refusals and failures: nothing written --------------------------------------------------------------
def test_mlp_tail_is_refused_naming_the_node(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Linear(8, 2),
    )
    src = _export_torchscript(model, tmp_path / "mlp.onnx")
    r = run_cli("convert", src, "-o", tmp_path / "sc.onnx")
    assert r.returncode == EXIT_CONVERSION, r.stdout + r.stderr
    assert "(Relu)" in r.stderr + r.stdout and "MLP" in r.stderr + r.stdout
    assert not (tmp_path / "sc.onnx").exists()
    info = run_cli("inspect", src, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["convertible"] is False


def test_max_pool_is_refused_naming_the_node(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    src = _export_torchscript(model, tmp_path / "max.onnx")
    with pytest.raises(ConversionError, match=r"node ./1/MaxPool. \(MaxPool\) pools by maximum"):
        rewrite_onnx(src)


def test_mismatch_and_existing_output_write_nothing(tmp_path):
    rng = np.random.default_rng(4)
    onnx.save(_nchw_tail(rng, [], c=64, k=10), tmp_path / "m.onnx")
    # no tolerance at all: the convolution sums in another order than the Gemm, so float32 round-off differs
    r = run_cli("convert", tmp_path / "m.onnx", "-o", tmp_path / "sc.onnx", "--atol", "0", "--rtol", "0")
    assert r.returncode == EXIT_VALIDATION and "nothing was written" in r.stderr + r.stdout
    assert not (tmp_path / "sc.onnx").exists()
    (tmp_path / "old.onnx").write_bytes(b"keep")
    r = run_cli("convert", tmp_path / "m.onnx", "-o", tmp_path / "old.onnx")
    assert r.returncode == EXIT_OUTPUT and (tmp_path / "old.onnx").read_bytes() == b"keep"
    r = run_cli("convert", tmp_path / "m.onnx", "-o", tmp_path / "old.onnx", "--force", "--weights", "w.pth")
    assert r.returncode == 2 and "--weights" in r.stderr + r.stdout
    report = convert_onnx(tmp_path / "m.onnx", tmp_path / "old.onnx", force=True)
    assert report.passed and onnx.load(str(tmp_path / "old.onnx")).graph.output[-1].name == "evidence"
    with pytest.raises(ConversionError, match="already"):
        rewrite_onnx(tmp_path / "old.onnx")


def test_tail_tensors_read_elsewhere_stay_and_a_taken_logits_name_is_not_reused(tmp_path):
    """The pooled embedding is also an output (kept, with the nodes computing it); the Softmax output is
    itself named 'logits', so the pre-activation logits keep their own name, which the metadata records and
    OnnxModel reads."""
    from softcamify.onnx_runtime import OnnxModel

    rng = np.random.default_rng(6)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fc": rng.standard_normal((4, 2)).astype(np.float32),
        "b": rng.standard_normal(2).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["f"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["f"], ["p"]),
        helper.make_node("Flatten", ["p"], ["emb"]),
        helper.make_node("MatMul", ["emb", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["logits"]),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])
    outs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2]),
        helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 4]),
    ]
    model = _graph(nodes, inits, inp, outs, opset=17)
    report = convert_onnx(model, tmp_path / "sc.onnx", mean=[0.5] * 3, std=[0.5] * 3)
    assert report.outputs["logits"] == "z"
    sc = onnx.load(str(tmp_path / "sc.onnx"))
    assert [o.name for o in sc.graph.output] == ["logits", "emb", "z", "evidence"]
    assert [n.op_type for n in sc.graph.node] == [
        "Conv",
        "GlobalAveragePool",
        "Flatten",
        "Conv",
        "ReduceMean",
        "Softmax",
    ]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    _check_against_original(model, tmp_path / "sc.onnx", x)
    om = OnnxModel(tmp_path / "sc.onnx")
    logits, evidence = om.run(x)
    z = _session(_with_output(model, "z")).run(["z"], {"input": x})[0]
    assert om.logits_name == "z" and np.abs(logits - z).max() <= _allowed(z)
    assert evidence is not None and evidence.shape == (2, 2, 8, 8)


def test_inspect_table_names_the_tail(tmp_path):
    onnx.save(_keras_nhwc(np.random.default_rng(7))[0], tmp_path / "keras.onnx")
    r = run_cli("inspect", tmp_path / "keras.onnx")
    assert r.returncode == 0, r.stderr
    for text in ("'gap' (ReduceMean)", "'dense/MatMul' (MatMul) + 'dense/BiasAdd' (Add)", "channels_last", "Softmax"):
        assert text in r.stdout
