"""ONNX and safetensors export: real timm/torchvision models (random weights), real onnxruntime sessions,
real files. Every ONNX export is compared with PyTorch here, independently of export's own validation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from softcamify import exporters as E
from softcamify.conversion import as_softcam
from softcamify.errors import ValidationError
from softcamify.exporters import onnx as E_onnx
from softcamify.heads.evidence import EvidenceHead
from softcamify.model import SoftCAM, SoftCAMMeta
from softcamify.onnx_runtime import OnnxModel

ATOL = 1e-4
SIZE = 64  # small inputs keep the exports fast; 64 px gives a 2×2 grid at stride 32
MODELS = [
    "test_resnet",
    "test_efficientnet",
    "test_efficientnet_gn",
    "test_efficientnet_ln",
    "test_efficientnet_evos",
    "test_byobnet",
    "test_nfnet",
    "test_convnext",
    "test_convnext2",
    "test_convnext3",
    "torchvision:resnet18",
]


def _ort_vs_torch(path, model: SoftCAM, batch: int, hw: tuple[int, int], seed: int = 123) -> tuple[float, float]:
    """max |Δ| of logits and evidence between an onnxruntime session on ``path`` and ``model``."""
    c = int(model.meta.data_config["input_size"][0])
    x = torch.randn(batch, c, *hw, generator=torch.Generator().manual_seed(seed))
    sess = (
        path
        if isinstance(path, ort.InferenceSession)
        else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    )
    logits, evidence = sess.run(["logits", "evidence"], {"input": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_maps = model.forward_maps(x)
    assert logits.shape == tuple(ref_logits.shape) and evidence.shape == tuple(ref_maps.shape)
    return float(np.abs(logits - ref_logits.numpy()).max()), float(np.abs(evidence - ref_maps.numpy()).max())


@pytest.mark.parametrize("name", MODELS)
def test_every_converted_test_model_exports_and_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    sc, _ = as_softcam(name, num_classes=5, input_size=(SIZE, SIZE))
    out = tmp_path / "m.onnx"
    report = E.export_onnx(sc, out)
    assert out.is_file() and report.passed and report.output == str(out)
    assert report.exporter in ("dynamo", "torchscript") and report.dynamic_batch
    assert report.shapes["input"][0] == "batch" and report.shapes["logits"] == ["batch", 5]
    # readable dims whichever exporter wrote them: the class axis is K, the spatial ones are named
    grid = ["evidence_height", "evidence_width"] if report.dynamic_spatial else report.shapes["evidence"][2:]
    assert report.shapes["evidence"] == ["batch", 5, *grid] and all(isinstance(d, int) for d in grid) != (
        report.dynamic_spatial
    )
    assert report.max_abs_diff_logits <= ATOL and report.max_abs_diff_evidence <= ATOL
    assert {ck["batch"] for ck in report.checks} >= {1, 3}
    # independent check: two batch sizes, and a second (odd) image size when the export is dynamic
    sizes = [(SIZE, SIZE)] + ([(80, 112)] if report.dynamic_spatial else [])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        for hw in sizes:
            dl, de = _ort_vs_torch(sess, sc, batch, hw)
            assert dl <= ATOL and de <= ATOL, (name, batch, hw, dl, de)
    assert report.dynamic_spatial, report.spatial_note  # all these backbones are fully convolutional


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory):
    torch.manual_seed(0)
    sc, _ = as_softcam("test_resnet", num_classes=3, input_size=(SIZE, SIZE))
    sc.meta.class_names = ["cat", "dog", "ünïcode, with comma"]
    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    report = E.export_onnx(sc, path, exporter="torchscript")  # fast; the dynamo path is covered above
    return sc, path, report


def test_metadata_round_trips(resnet_onnx):
    sc, path, report = resnet_onnx
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    cfg = sc.meta.data_config
    assert json.loads(props["class_names"]) == sc.meta.class_names
    assert json.loads(props["mean"]) == pytest.approx(cfg["mean"]) and json.loads(props["std"]) == pytest.approx(
        cfg["std"]
    )
    assert json.loads(props["input_size"]) == cfg["input_size"]
    assert props["interpolation"] == cfg["interpolation"] and float(props["crop_pct"]) == cfg["crop_pct"]
    assert props["crop_mode"] == cfg["crop_mode"] and props["architecture"] == "test_resnet"
    assert props["strategy"] == sc.meta.strategy and props["exact"] == "true" and props["num_classes"] == "3"
    assert props["softcamify_version"] and props["dynamic_spatial"] == "true"
    whole = json.loads(props["softcamify"])
    assert SoftCAMMeta.from_dict(whole) == sc.meta
    assert whole["export"]["exporter"] == report.exporter and whole["export"]["opset"] == report.opset
    # the torch-free reader sees the same
    om = OnnxModel(path)
    assert om.is_softcam and om.class_names == sc.meta.class_names and om.architecture == "test_resnet"
    assert om.data_config == {
        k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    }
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    logits, evidence = om.run(x)
    assert np.abs(evidence.mean(axis=(2, 3)) - logits).max() < 1e-5
    checks = E.validate_onnx(path, sc)  # the public validator on an existing file
    assert [ck["batch"] for ck in checks] == [1, 3, 2] and checks[2]["size"] == [SIZE + 32, SIZE + 64]
    with pytest.raises(ValidationError):
        E.validate_onnx(path, sc, atol=0.0, rtol=0.0)


# --- fallbacks, on a tiny hand-built SoftCAM model (fast to export) ------------------------------------
class _AddPosition(nn.Module):
    """A learned position embedding for a fixed 8×8 grid: the backbone only works at 32×32 input."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 8, 8, 8))

    def forward(self, x):
        return x + self.pos


def _tiny(position: bool = False) -> SoftCAM:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()] + ([_AddPosition()] if position else [])
    head = EvidenceHead(8, 3)
    meta = SoftCAMMeta(
        source={"kind": "module", "class": "tests.tiny"},
        strategy="linear",
        exact=True,
        num_classes=3,
        class_names=["a", "b", "c"],
        head=head.spec(),
        data_config={
            "input_size": [3, 32, 32],
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
    )
    return SoftCAM(nn.Sequential(*layers), head, meta).eval()


def test_fixed_size_backbone_falls_back_to_static_height_and_width(tmp_path):
    model = _tiny(position=True)
    out = tmp_path / "pos.onnx"
    report = E.export_onnx(model, out)
    assert report.exporter == "torchscript" and not report.dynamic_spatial and report.dynamic_batch
    assert report.shapes["input"] == ["batch", 3, 32, 32]
    assert report.attempts[0]["spatial"] == "dynamic" and report.attempts[0]["outcome"] == "size"
    assert "static" in report.spatial_note and "64×96" in report.spatial_note
    dl, de = _ort_vs_torch(out, model, 3, (32, 32))
    assert dl <= ATOL and de <= ATOL
    assert OnnxModel(out).dynamic_spatial is False


# torch.onnx's real error text (torch 2.9–2.14, _core._STEP_ONE_ERROR_MESSAGE + _summarize_exception_stack)
_TORCH_EXPORT_ERROR = (
    "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the model to ONNX. "
    "Next steps:\n- Modify the model code for `torch.export.export` to succeed. Refer to "
    "https://pytorch.org/docs/stable/generated/exportdb/index.html for more information.\n"
    "- Debug `torch.export.export` and submit a PR to PyTorch.\n- Create an issue in the PyTorch GitHub repository "
    "against the \x1b[96m*torch.export*\x1b[0m component and attach the full error stack as well as reproduction "
    "scripts.\n\n## Exception summary\n\n<class 'ValueError'>: Found the following conflicts between "
    "user-specified ranges and inferred ranges from model tracing:\n- Received user-specified dim hint "
    "Dim.DYNAMIC(min=None, max=None), but tracing inferred a static shape of 160 for dimension "
    "inputs['input'].shape[2].\n- Received user-specified dim hint Dim.DYNAMIC(min=None, max=None), but tracing "
    "inferred a static shape of 160 for dimension inputs['input'].shape[3].\n\n"
    "(Refer to the full stack trace above for more information.)"
)


def test_clean_error_text_strips_escapes_and_keeps_one_short_line():
    line = E.clean_error_text(RuntimeError(_TORCH_EXPORT_ERROR))
    assert line == (
        "Failed to export the model with torch.export: ValueError: Received user-specified dim hint "
        "Dim.DYNAMIC(min=None, max=None), but tracing inferred a static shape of 160 for dimension "
        "inputs['input'].shape[2]."
    )
    # colours, bold, 8-bit CSI, an OSC 8 hyperlink, a bell; first line only; whitespace collapsed; length cap
    text = "\x1b[1;31mboom\x1b[0m:\tsee \x1b]8;;https://x.org\x1b\\docs\x1b]8;;\x1b\\ \x9b32mnow\x07\nsecond line"
    assert E.clean_error_text(text) == "boom: see docs now"
    assert E.strip_ansi("a\x1b[96mb\x1b[0mc\x1b(B") == "abc"
    long = E.clean_error_text("\x1b[96m" + "x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("…") and "\x1b" not in long
    assert E.clean_error_text(ValueError("\x1b[0m\n  \n")) == "ValueError"


class _AssertSize(nn.Module):
    """Like timm's patch embeddings (test_vit_relpos, test_maxvit): asserts the input size, so torch.export
    cannot make height and width dynamic and the dynamo exporter fails with a coloured multi-line error."""

    def forward(self, x):
        assert x.shape[-2] == 32 and x.shape[-1] == 32, "input must be 32×32"
        return x


def test_static_fallback_note_has_no_escape_codes(tmp_path):
    model = _tiny()
    model.features = nn.Sequential(_AssertSize(), *model.features)
    out = tmp_path / "fixed.onnx"
    report = E.export_onnx(model, out, exporter="dynamo")
    assert not report.dynamic_spatial and report.shapes["input"] == ["batch", 3, 32, 32]
    assert report.attempts[0]["spatial"] == "dynamic" and report.attempts[0]["outcome"] == "export"
    text = json.dumps(report.to_dict())
    assert "\x1b" not in text and "\\u001b" not in text, text
    note = report.spatial_note
    assert note.startswith(
        "height and width are static: the dynamic-size export failed (the dynamo exporter "
        "failed: Failed to export the model with torch.export: "
    )
    assert "\n" not in note and "Next steps" not in note and "static shape of 32" in note, note
    assert note.endswith(").") and len(note) < 400
    dl, de = _ort_vs_torch(out, model, 2, (32, 32))
    assert dl <= ATOL and de <= ATOL


@pytest.mark.slow
def test_cli_export_json_of_a_fixed_size_vit_has_a_plain_spatial_note(tmp_path, cli):
    """QA: ``export test_vit_relpos --json`` put torch's colour codes into spatial_note (about 12 s)."""
    r = cli(
        "export", "test_vit_relpos", "--num-classes", "3", "-o", tmp_path / "vit.onnx", "--exporter", "dynamo", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\\u001b" not in r.stdout
    data = json.loads(r.stdout)
    assert data["exporter"] == "dynamo" and data["dynamic_spatial"] is False
    assert "static shape of 160" in data["spatial_note"] and "step 1/3" not in data["spatial_note"]
    assert all("\x1b" not in a.get("error", "") for a in data["attempts"])


def test_auto_tries_torchscript_first_and_falls_back_to_dynamo_with_readable_dims(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated TorchScript export failure")

    monkeypatch.setattr(E_onnx, "_export_torchscript", broken)
    model = _tiny()
    report = E.export_onnx(model, tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and report.dynamic_spatial
    assert [(a["exporter"], a["outcome"]) for a in report.attempts] == [
        ("torchscript", "export"),
        ("torchscript", "export"),
        ("dynamo", "ok"),
    ]
    assert "simulated TorchScript export failure" in report.attempts[0]["error"]
    assert report.shapes["input"] == ["batch", 3, "height", "width"]
    # the dynamo exporter's symbolic expressions are renamed as TorchScript names them
    assert report.shapes["evidence"] == ["batch", 3, "evidence_height", "evidence_width"]
    dl, de = _ort_vs_torch(tmp_path / "m.onnx", model, 2, (48, 80))
    assert dl <= ATOL and de <= ATOL


def test_wrong_numerics_fall_back_to_the_other_exporter(tmp_path, monkeypatch):
    real = E_onnx._export_torchscript

    def wrong(*args, **kwargs):  # like pytorch #169178: a graph that runs but computes something else
        proto = real(*args, **kwargs)
        init = max(proto.graph.initializer, key=lambda t: len(onnx.numpy_helper.to_array(t).ravel()))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr.ravel()[0] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return proto

    monkeypatch.setattr(E_onnx, "_export_torchscript", wrong)
    model = _tiny()
    report = E.export_onnx(model, tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and report.attempts[0]["outcome"] == "mismatch"
    assert report.max_abs_diff_evidence <= ATOL


def test_opset_below_18_uses_torchscript(tmp_path):
    report = E.export_onnx(_tiny(), tmp_path / "m.onnx", opset=17)
    assert report.exporter == "torchscript" and report.opset == 17
    assert any("opset 17" in n for n in report.notes)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 17


def test_mismatch_above_atol_raises_and_writes_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValidationError, match="does not match PyTorch within atol 0"):
        E.export_onnx(_tiny(), out, atol=0.0, rtol=0.0, exporter="torchscript", spatial="static")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_existing_output_and_bad_suffix(tmp_path):
    from softcamify.errors import OutputError, UsageError

    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError):
        E.export_onnx(_tiny(), out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(UsageError):
        E.export(_tiny(), tmp_path / "m.txt")
    with pytest.raises(UsageError):
        E.export_onnx(_tiny(), tmp_path / "x.onnx", exporter="dynamo", opset=13)


# --- safetensors ----------------------------------------------------------------------------------------
def test_safetensors_from_a_training_checkpoint(tmp_path):
    from softcamify.checkpoints import load, read_metadata

    torch.manual_seed(0)
    sc, _ = as_softcam("test_resnet", num_classes=4, input_size=(SIZE, SIZE))
    with torch.no_grad():  # pretend fine-tuning changed the evidence conv
        sc.head.conv.weight.add_(0.1)
    ckpt = tmp_path / "last.pt"
    from softcamify import __version__

    torch.save(
        {
            "format": "softcamify-finetune-state",
            "softcamify": __version__,
            "model": sc.state_dict(),
            "meta": json.dumps(sc.meta.to_dict(), sort_keys=True),
            "epoch": 3,
            "optimizer": {"lr": 0.1},
        },
        ckpt,
    )
    out = tmp_path / "best.safetensors"
    report = E.export(str(ckpt), out)
    assert report.format == "safetensors" and report.max_abs_diff_logits == 0.0
    assert read_metadata(out)["strategy"] == sc.meta.strategy
    reloaded = load(out)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(reloaded.forward_maps(x)[1], sc.forward_maps(x)[1])
    # and from there to ONNX through the real command line (in-process), with --json figures
    from typer.testing import CliRunner

    from softcamify.cli import app

    r = CliRunner().invoke(
        app, ["export", str(out), "-o", str(tmp_path / "m.onnx"), "--exporter", "torchscript", "--json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    for key in (
        "exporter",
        "opset",
        "shapes",
        "dynamic_batch",
        "dynamic_spatial",
        "max_abs_diff_logits",
        "max_abs_diff_evidence",
        "checks",
        "file_size",
        "output",
        "attempts",
    ):
        assert key in data
    assert data["file_size"] == (tmp_path / "m.onnx").stat().st_size and data["max_abs_diff_evidence"] <= ATOL
    assert data["exporter"] == "torchscript" and data["shapes"]["evidence"] == [
        "batch",
        4,
        "evidence_height",
        "evidence_width",
    ]


def test_cli_export_mismatch_exits_5_and_leaves_nothing(tmp_path, cli):
    from softcamify.checkpoints import save

    torch.manual_seed(0)
    sc, _ = as_softcam("test_resnet", num_classes=2, input_size=(SIZE, SIZE))
    save(sc, tmp_path / "m.safetensors")
    r = cli(
        "export",
        tmp_path / "m.safetensors",
        "-o",
        tmp_path / "m.onnx",
        "--atol",
        "0",
        "--rtol",
        "0",
        "--exporter",
        "torchscript",
        "--spatial",
        "static",
    )
    assert r.returncode == 5, r.stderr
    assert "does not match PyTorch" in r.stderr and "nothing was written" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    r = cli("export", tmp_path / "m.safetensors", "-o", tmp_path / "m.txt")
    assert r.returncode == 2 and "must end in .onnx or .safetensors" in r.stderr


def test_scale_aware_validation_accepts_large_evidence_and_refuses_a_wrong_graph(tmp_path):
    """Evidence values in the thousands carry float32 round-off far above an absolute 1e-4; the rule
    atol + rtol × max |evidence| accepts them, and still refuses a graph that computes something else."""
    model = _tiny()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(1000.0)
    out = tmp_path / "big.onnx"
    report = E.export_onnx(model, out, exporter="torchscript", spatial="static")
    for ck in report.checks:
        assert ck["scale_evidence"] > 100 and ck["scale_logits"] > 10
        assert ck["allowed_evidence"] == pytest.approx(ATOL + 1e-5 * ck["scale_evidence"])
        assert ck["max_abs_diff_evidence"] <= ck["allowed_evidence"]
    assert report.rtol == 1e-5 and report.to_dict()["rtol"] == 1e-5
    # the same file perturbed by 1% in one weight: far outside the tolerance, refused
    proto = onnx.load(str(out))
    init = max(proto.graph.initializer, key=lambda t: np.abs(onnx.numpy_helper.to_array(t)).max())
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.ravel()[np.abs(arr).argmax()] *= 1.01
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ValidationError, match="evidence"):
        E.validate_onnx(bad, model)
