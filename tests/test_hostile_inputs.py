"""Hostile inputs through the real command line, for every command (issue 8, docs/reliability.md).

Every case asserts: the documented nonzero exit code; stderr is ONE line, ``error: …`` naming the
offending path or option, without a traceback; no output (and no temporary file) is left behind; the
inputs are byte-for-byte untouched. Valid-but-odd inputs (16-bit, CMYK, palette, RGBA, GIF, EXIF,
1×1 px, unicode/brackets/spaces in names, symlink loops) must work.

Speed: a ``python -m softcamify`` process pays ~3 s of torch imports, so the cases run through the same
typer app in two long-lived subprocesses (:func:`run_batch`, side by side), each case in a fresh
``warnings`` context with its own stdout/stderr; :func:`test_batch_runner_matches_the_real_entry_point`
checks that a case gives the same result through ``python -m softcamify``. The readers are also
property-tested with hypothesis: arbitrary bytes raise only softcamify errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from softcamify.errors import (
    EXIT_INPUT,
    EXIT_OUTPUT,
    EXIT_UNSAFE,
    EXIT_USAGE,
    InputError,
    SoftcamifyError,
)

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}

# --------------------------------------------------------------------------------------------------
# Running many CLI invocations in one process
# --------------------------------------------------------------------------------------------------

_RUNNER = r"""
import contextlib, io, json, sys, time, traceback, warnings
from softcamify.cli import app

cases = json.loads(open(sys.argv[1], encoding="utf-8").read())
results = {}
for cid, argv in cases:
    out, err, code, t0 = io.StringIO(), io.StringIO(), 0, time.perf_counter()
    # a fresh warnings registry per case: a warning is shown as it would be in a new process
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=argv, prog_name="softcamify", standalone_mode=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[cid] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "seconds": round(time.perf_counter() - t0, 2)}
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0


def run_batch(cases: list[tuple[str, list[str]]], workdir: Path, timeout: int = 600) -> dict[str, Result]:
    """Run ``[(id, argv), ...]`` through softcamify's typer app in ONE fresh Python process."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="cases-", suffix=".json", dir=workdir)
    os.close(fd)
    spec, out = Path(name), Path(name).with_suffix(".out.json")
    spec.write_text(json.dumps([(cid, [str(a) for a in argv]) for cid, argv in cases]), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(spec), str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0 and out.exists(), f"batch runner failed: {proc.stderr[-3000:]}"
    data = json.loads(out.read_text(encoding="utf-8"))
    spec.unlink()
    out.unlink()
    return {cid: Result(**r) for cid, r in data.items()}


def invoke(*argv: Any) -> Result:
    """The same typer app in THIS process (no torch import cost); for reference runs."""
    from softcamify.cli import app

    out, err, code = io.StringIO(), io.StringIO(), 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=[str(a) for a in argv], prog_name="softcamify", standalone_mode=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def one_sentence(stderr: str) -> str:
    """The single ``error: …`` line, or fail: no traceback, no warnings or notes, nothing else."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: ") and line.rstrip().endswith("."), line
    assert len(line) < 500, line
    return line


def assert_refused(r: Result, code: int, *fragments: str) -> str:
    assert r.code == code, f"exit {r.code}, expected {code}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    line = one_sentence(r.stderr)
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    return line


def temporaries(*folders: Path) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob(".*.tmp")]
    return found


def digest_tree(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (symlinks recorded by target, not followed)."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    out[p] = "link:" + os.readlink(p)
                elif os.path.isfile(p):
                    out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------------
# Hostile files
# --------------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels in a few bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class _RunsCode:
    """Unpickling this opens (creates) ``path``: proof that pickled code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def make_images(root: Path, rng: np.random.Generator) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "ok.png")
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    data = (root / "ok.png").read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    (bad / "not_an_image.png").write_text("hello, I am text with an image extension\n")
    (bad / "bomb.png").write_bytes(_png_header_only(40000, 40000))  # > 2× Pillow's limit: an error in Pillow
    (bad / "bomb_warn.png").write_bytes(_png_header_only(11000, 11000))  # limit < n < 2× limit: a warning
    (bad / "folder.png").mkdir()  # a folder where an image file is expected
    os.symlink(bad / "missing-target.png", bad / "broken_link.png")
    odd = root / "odd"
    odd.mkdir()
    Image.fromarray(rgb[:1, :1]).save(odd / "one_px.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(odd / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "palette.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(
        odd / "palette_transparent.png", transparency=0
    )
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    frames = [Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    with Image.open(odd / "animated.gif") as im:  # what the model must see: the first frame
        im.convert("RGB").save(odd / "animated_first_frame.png")
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # rotate 90° when displayed
    Image.fromarray(rng.integers(0, 256, (20, 60, 3), dtype=np.uint8)).save(odd / "exif_rotated.jpg", exif=exif)
    with Image.open(odd / "exif_rotated.jpg") as im:  # the same pixels, rotated by hand and stored losslessly
        ImageOps.exif_transpose(im).save(odd / "exif_rotated_by_hand.png")
    (odd / "[").mkdir()  # the path .../odd/[/]odd name ä [x].png reads as rich markup; unicode, spaces
    Image.fromarray(rgb).save(odd / "[" / "]odd name ä [x].png")
    Image.fromarray(rgb).save(odd / ".hidden.png")  # skipped
    (odd / "notes.txt").write_text("skipped\n")


def _image_set(d: Path, n: int, rng: np.random.Generator, bright: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:32, :32]
    for i in range(n):
        img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        if bright:
            cy, cx = rng.integers(6, 26, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 240
        Image.fromarray(img).save(d / f"{i:03d}.png")


def make_datasets(root: Path, images: Path, rng: np.random.Generator) -> None:
    _image_set(root / "ds" / "healthy", 4, rng, False)
    _image_set(root / "ds" / "lesion", 4, rng, True)
    (root / "ds_empty").mkdir()
    _image_set(root / "ds_one" / "only", 4, rng, False)
    shutil.copytree(root / "ds", root / "ds_truncated")
    shutil.copy(images / "bad" / "truncated.png", root / "ds_truncated" / "lesion" / "zz.png")
    # odd but valid: unicode, spaces and brackets in class names, odd image modes, symlink loops
    odd = root / "ds_odd"
    a, b = odd / "gesund Ä", odd / "läsion [x] 病变"
    _image_set(a, 6, rng, False)
    _image_set(b, 6, rng, True)
    for f in ("gray16.png", "cmyk.jpg", "palette.png", "rgba.png", "animated.gif", "exif_rotated.jpg", "one_px.png"):
        shutil.copy(images / "odd" / f, a / f)
    os.symlink("..", a / "up")  # a loop to the dataset root: must not pull class b's images into class a
    os.symlink(".", b / "self")
    # the same plus unreadable images: fine-tuning skips and counts them
    shutil.copytree(odd, root / "ds_mixed", symlinks=True)
    for f in ("empty.png", "truncated.png", "not_an_image.png", "bomb.png"):
        shutil.copy(images / "bad" / f, root / "ds_mixed" / "läsion [x] 病变" / f"bad_{f}")
    (root / "a_file").write_text("a file where a folder is expected\n")
    (root / "a_folder.safetensors").mkdir()  # a folder where a checkpoint is expected
    (root / "a_folder.onnx").mkdir()


def make_checkpoints(root: Path, marker: Path, marker_trusted: Path) -> dict[str, Any]:
    """Weights, a softcamify model and every broken variant; returns facts the cases assert."""
    import timm
    from safetensors.torch import save_file

    import softcamify
    from softcamify.conversion import as_softcam

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=2).state_dict().items()}
    save_file(sd, str(root / "w2.safetensors"))
    torch.save(sd, root / "w2.pth")
    torch.manual_seed(1)
    sd5 = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=5).state_dict().items()}
    save_file(sd5, str(root / "w5.safetensors"))
    sc, _ = as_softcam("test_resnet", weights=root / "w2.safetensors", input_size=(32, 32))
    softcamify.save(sc, root / "model.safetensors")
    good = (root / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.safetensors").write_bytes(b"")
    (broken / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[8 + n // 2] ^= 0x40  # a bit flip inside the JSON header
    (broken / "header_bitflip.safetensors").write_bytes(bytes(flipped))
    # a bit flip in the data that turns one weight into NaN: refused, naming the tensor
    nan_tensor = "head.conv.bias"
    start = header[nan_tensor]["data_offsets"][0]
    flipped = bytearray(good)
    flipped[8 + n + start + 3] |= 0x7F
    flipped[8 + n + start + 2] |= 0x80
    (broken / "data_bitflip_nan.safetensors").write_bytes(bytes(flipped))
    (broken / "header_length_lies.safetensors").write_bytes(struct.pack("<Q", 10**12) + good[8:])
    lying = dict(header)
    first = next(k for k in header if k != "__metadata__")
    lying[first] = {**header[first], "data_offsets": [0, 10**9]}
    h = json.dumps(lying).encode()
    (broken / "offsets_lie.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + good[8 + n :])
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as z:
        z.writestr("archive/data.pkl", np.random.default_rng(0).bytes(300))
        z.writestr("archive/version", "3\n")
    (broken / "zip_of_garbage.pth").write_bytes(zb.getvalue())
    pth = (root / "w2.pth").read_bytes()
    flipped = bytearray(pth)
    flipped[len(pth) // 2] ^= 0x10  # torch.load alone would read a silently wrong weight
    (broken / "bitflip.pth").write_bytes(bytes(flipped))
    (broken / "truncated.pth").write_bytes(pth[: len(pth) // 2])
    (broken / "text.onnx").write_text("ir_version: 8\nthis is not a protobuf\n")
    torch.save({"state_dict": sd, "arch": "test_resnet", "payload": _RunsCode(marker)}, broken / "runs_code.pth")
    (broken / "runs_code_raw.pkl").write_bytes(pickle.dumps({"payload": _RunsCode(marker)}, protocol=4))
    torch.save(
        {"state_dict": sd, "arch": "test_resnet", "payload": _RunsCode(marker_trusted)}, root / "runs_code_trusted.pth"
    )
    bad = dict(sd)
    nan_key = "layer1.0.conv1.weight"
    bad[nan_key] = sd[nan_key].clone()
    bad[nan_key].view(-1)[7] = float("nan")
    save_file(bad, str(broken / "nan_weights.safetensors"))
    bad = dict(sd)
    bad["fc.weight"] = sd["fc.weight"].clone()
    bad["fc.weight"][1, 3] = float("inf")
    save_file(bad, str(broken / "inf_weights.safetensors"))
    torch.save({"arch": "test_resnet", "state_dict_ema": sd, "epoch": 9}, root / "ema_only.pth.tar")
    torch.save({"arch": "test_resnet", "state_dict": sd}, root / "no_ema.pth")
    return {"nan_tensor": nan_tensor, "nan_weight": nan_key, "inf_weight": "fc.weight"}


# --------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    argv: list[str]
    code: int
    says: tuple[str, ...] = ()  # fragments of the one-line message (the offending path or option among them)
    outputs: tuple[str, ...] = ()  # must not exist afterwards
    needs: str | None = None  # "ro" or "full": a mounted tmpfs (root only)
    batch: int = 0
    check: Any = None  # extra assertions for a succeeding case: check(result, paths)
    lacks: tuple[str, ...] = ()  # must not be in the message (an option the command does not have)


@dataclass
class Paths:
    root: Path

    def __post_init__(self):
        r = self.root
        self.inputs, self.out = r / "inputs", r / "out"
        self.ck, self.img, self.data = self.inputs / "ckpt", self.inputs / "img", self.inputs / "data"
        self.broken = self.ck / "broken"
        self.model = self.ck / "model.safetensors"
        self.onnx = self.out / "export_onnx.onnx"  # written by the first case of batch 1
        self.ro, self.marker = r / "ro", r / "PICKLE_CODE_RAN"
        self.marker_trusted = r / "PICKLE_CODE_RAN_TRUSTED"
        self.facts: dict[str, Any] = {
            "nan_tensor": "head.conv.bias",
            "nan_weight": "layer1.0.conv1.weight",
            "inf_weight": "fc.weight",
        }

    def full(self, cid: str) -> Path:
        return self.root / f"full_{cid}"


BROKEN_MODELS = {  # file: (exit code, extra fragment); the path itself is always named
    "empty.safetensors": (EXIT_INPUT, "empty"),
    "truncated.safetensors": (EXIT_INPUT, "not a valid safetensors"),
    "header_bitflip.safetensors": (EXIT_INPUT, "safetensors"),  # "not a valid …" or "does not match its own …"
    "data_bitflip_nan.safetensors": (EXIT_INPUT, "NaN"),
    "header_length_lies.safetensors": (EXIT_INPUT, "header length"),
    "offsets_lie.safetensors": (EXIT_INPUT, "not a valid safetensors"),
    "zip_of_garbage.pth": (EXIT_INPUT, "not a readable PyTorch checkpoint"),
    "bitflip.pth": (EXIT_INPUT, "checksum"),
    "truncated.pth": (EXIT_INPUT, "not a readable PyTorch checkpoint"),
    "text.onnx": (EXIT_INPUT, "ONNX"),
    "runs_code.pth": (EXIT_UNSAFE, "--trust-pickle"),
    "runs_code_raw.pkl": (EXIT_INPUT, "not a readable PyTorch checkpoint"),
}
COMMANDS = ("inspect", "convert", "export", "predict", "explain", "evaluate", "finetune")


def model_argv(command: str, model: str, out: str, p: Paths) -> tuple[list[str], tuple[str, ...]]:
    """argv running ``command`` on ``model`` with valid other inputs; and its outputs."""
    ok, ds = str(p.img / "ok.png"), str(p.data / "ds")
    converted = out + (".onnx" if model.endswith(".onnx") else ".safetensors")  # an .onnx is rewritten as one
    return {
        "inspect": (["inspect", model], ()),
        "convert": (["convert", model, "-o", converted], (converted,)),
        "export": (["export", model, "-o", out + ".onnx"], (out + ".onnx",)),
        "predict": (["predict", model, ok], ()),
        "explain": (["explain", model, ok, "-o", out], (out,)),
        "evaluate": (["evaluate", model, ds, "-o", out], (out,)),
        "finetune": (["finetune", model, ds, "-o", out, "-j", "0", "--epochs", "1"], (out,)),
    }[command]


def build_cases(p: Paths) -> dict[str, Case]:
    c: dict[str, Case] = {}
    img, D, B, M = p.img, p.data, p.broken, str(p.model)  # noqa: N806
    X = str(p.onnx)  # noqa: N806
    ok = str(img / "ok.png")

    def o(cid: str) -> str:
        return str(p.out / cid)

    # batch 1 starts by exporting the ONNX model the other ONNX cases use (a success case of export)
    c["export_onnx"] = Case(
        ["export", M, "-o", X, "--exporter", "torchscript", "--spatial", "static"],
        0,
        batch=1,
        check=lambda r, p: p.onnx.is_file(),
    )

    # 1. broken checkpoints × every command that reads a model
    for name, (code, word) in BROKEN_MODELS.items():
        for cmd in COMMANDS:
            cid = f"{cmd}-{name}"
            argv, outs = model_argv(cmd, str(B / name), o(cid), p)
            c[cid] = Case(argv, code, (str(B / name), word), outs, batch=zlib.crc32(cid.encode()) % 2)
    for cmd in COMMANDS:  # the NaN a bit flip made is refused naming its tensor
        c[f"{cmd}-data_bitflip_nan.safetensors"].says += (p.facts["nan_tensor"],)
    # weights (--weights) that are broken, NaN/Inf, for another architecture or class count
    for cmd in ("inspect", "convert", "export", "explain", "evaluate", "finetune"):
        for name, tensor in (
            ("nan_weights.safetensors", p.facts["nan_weight"]),
            ("inf_weights.safetensors", p.facts["inf_weight"]),
        ):
            cid = f"{cmd}-w-{name}"
            argv, outs = model_argv(cmd, "test_resnet", o(cid), p)
            c[cid] = Case(
                argv + ["-w", str(B / name)],
                EXIT_INPUT,
                (str(B / name), "NaN or Inf", tensor),
                outs,
                batch=zlib.crc32(cid.encode()) % 2,
            )
        cid = f"{cmd}-w-wrong-architecture"
        argv, outs = model_argv(cmd, "test_efficientnet", o(cid), p)
        c[cid] = Case(
            argv + ["-w", str(p.ck / "w2.safetensors")],
            EXIT_INPUT,
            (str(p.ck / "w2.safetensors"), "do not fit test_efficientnet"),
            outs,
            batch=zlib.crc32(cid.encode()) % 2,
        )
    c["convert-w-wrong-class-count"] = Case(
        ["convert", "test_resnet", "-w", str(p.ck / "w5.safetensors"), "--num-classes", "3", "-o", o("wc.safetensors")],
        EXIT_INPUT,
        (str(p.ck / "w5.safetensors"), "--num-classes"),
        (o("wc.safetensors"),),
    )
    c["finetune-model-classes-differ-from-data"] = Case(
        ["finetune", "test_resnet", "-w", str(p.ck / "w5.safetensors"), str(D / "ds"), "-o", o("fc"), "-j", "0"],
        EXIT_INPUT,
        ("--reset-head",),
        (o("fc"),),
        batch=1,
    )
    c["evaluate-model-classes-differ-from-data"] = Case(
        ["evaluate", "test_resnet", str(D / "ds"), "-w", str(p.ck / "w5.safetensors"), "-o", o("ec")],
        EXIT_INPUT,
        ("5", "2 classes"),
        (o("ec"),),
        batch=1,
    )
    c["predict-class-names-do-not-fit"] = Case(
        ["predict", M, ok, "--class-names", "a,b,c"], EXIT_USAGE, ("3 class names",)
    )
    c["convert-ema-flag-without-ema"] = Case(
        ["convert", str(p.ck / "no_ema.pth"), "--ema", "-o", o("ne.safetensors")],
        EXIT_USAGE,
        ("--ema", str(p.ck / "no_ema.pth")),
        (o("ne.safetensors"),),
    )
    c["convert-ema-only-training-checkpoint"] = Case(
        [
            "convert",
            str(p.ck / "ema_only.pth.tar"),
            "-o",
            o("ema") + ".safetensors",
            "--samples",
            "1",
            "--json",
            "--input-size",
            "32",
        ],
        0,
        batch=1,
        check=lambda r, p: any("only EMA weights" in n for n in json.loads(r.stdout)["notes"]),
    )
    # the pickle control: WITH --trust-pickle the payload runs (so the marker test is not vacuous)
    c["inspect-trusted-pickle-runs-code"] = Case(
        ["inspect", str(p.ck / "runs_code_trusted.pth"), "--trust-pickle", "--input-size", "32"],
        0,
        batch=1,
        check=lambda r, p: p.marker_trusted.exists(),
    )

    # 2. folders where files are expected, and the reverse
    a_file, a_folder = str(D / "a_file"), str(D / "a_folder.safetensors")
    for cmd in COMMANDS:
        cid = f"{cmd}-model-is-a-folder"
        argv, outs = model_argv(cmd, a_folder, o(cid), p)
        c[cid] = Case(argv, EXIT_INPUT, (a_folder,), outs)
    for cmd in ("predict", "explain"):
        argv, outs = model_argv(cmd, str(D / "a_folder.onnx"), o(f"{cmd}-onnx-is-a-folder"), p)
        c[f"{cmd}-onnx-is-a-folder"] = Case(argv, EXIT_INPUT, (str(D / "a_folder.onnx"), "is a folder"), outs)
    c["convert-weights-is-a-folder"] = Case(
        ["convert", "test_resnet", "-w", str(img), "-o", o("wf.safetensors")],
        EXIT_INPUT,
        (str(img), "is a folder"),
        (o("wf.safetensors"),),
    )
    c["convert-output-is-an-existing-folder"] = Case(
        ["convert", "test_resnet", "-o", a_folder], EXIT_OUTPUT, (a_folder, "is a folder")
    )
    c["export-output-is-an-existing-folder"] = Case(
        ["export", M, "-o", a_folder], EXIT_OUTPUT, (a_folder, "is a folder")
    )
    c["export-output-under-a-file"] = Case(["export", M, "-o", a_file + "/x.onnx"], EXIT_OUTPUT, (a_file,))
    c["explain-output-is-a-file"] = Case(["explain", M, ok, "-o", a_file], EXIT_OUTPUT, (a_file, "is a file"))
    c["explain-output-under-a-file"] = Case(
        ["explain", M, ok, "-o", a_file + "/sub"], EXIT_OUTPUT, (a_file, "is a file")
    )
    c["evaluate-output-is-a-file"] = Case(["evaluate", M, str(D / "ds"), "-o", a_file], EXIT_OUTPUT, (a_file,))
    c["finetune-output-is-a-file"] = Case(["finetune", M, str(D / "ds"), "-o", a_file], EXIT_OUTPUT, (a_file,))
    c["synth-output-is-a-file"] = Case(
        ["datasets", "synth", a_file, "--n", "6", "--size", "32"], EXIT_OUTPUT, (a_file,)
    )
    c["evaluate-data-is-a-file"] = Case(["evaluate", M, a_file], EXIT_INPUT, (a_file,))
    c["finetune-data-is-a-file"] = Case(["finetune", M, a_file, "-o", o("fd")], EXIT_INPUT, (a_file,), (o("fd"),))
    c["evaluate-masks-is-a-file"] = Case(
        ["evaluate", M, str(D / "ds"), "--masks", a_file], EXIT_INPUT, (a_file, "--masks")
    )
    c["finetune-labels-is-a-folder"] = Case(
        ["finetune", M, str(D / "ds"), "-o", o("fl"), "--labels", str(img)],
        EXIT_INPUT,
        (str(img), "--labels"),
        (o("fl"),),
    )
    c["predict-image-is-a-text-file"] = Case(["predict", M, a_file], EXIT_INPUT, (a_file,))
    c["explain-folder-without-images"] = Case(
        ["explain", M, a_folder, "-o", o("xn")], EXIT_INPUT, (a_folder, "no images"), (o("xn"),)
    )

    # 3. bad images through predict (PyTorch and ONNX) and explain
    for name in (
        "empty.png",
        "truncated.png",
        "not_an_image.png",
        "bomb.png",
        "bomb_warn.png",
        "folder.png",
        "broken_link.png",
    ):
        bad = str(img / "bad" / name)
        for cmd, model in (("predict", M), ("predict", X), ("explain", M), ("explain", X)):
            cid = f"{cmd}-{'onnx' if model == X else 'torch'}-{name}"
            argv = [cmd, model, ok, bad] + (["-o", o(cid)] if cmd == "explain" else [])
            c[cid] = Case(argv, EXIT_INPUT, (bad,), (o(cid),) if cmd == "explain" else (), batch=1)
            if "bomb" in name:
                c[cid].says += ("limit",)
    # an unreadable image in the SECOND batch of explain: the first batch's files must be removed again
    c["explain-bad-image-in-second-batch"] = Case(
        ["explain", M, ok, str(img / "odd" / "rgba.png"), str(img / "bad" / "truncated.png"), "-b", "2", "-o", o("x2")],
        EXIT_INPUT,
        (str(img / "bad" / "truncated.png"),),
        (o("x2"),),
        batch=1,
    )
    c["evaluate-dataset-with-truncated-image"] = Case(
        ["evaluate", X, str(D / "ds_truncated"), "-o", o("et")],
        EXIT_INPUT,
        (str(D / "ds_truncated"),),
        (o("et"),),
        batch=1,
    )
    c["finetune-strict-data-bomb"] = Case(
        ["finetune", M, str(D / "ds_mixed"), "-o", o("fs"), "--strict-data", "-j", "0"],
        EXIT_INPUT,
        ("bad_", "--strict"),
        (o("fs"),),
        batch=1,
    )

    # 4. datasets that cannot be used
    c["evaluate-dataset-without-classes"] = Case(
        ["evaluate", M, str(D / "ds_empty")], EXIT_INPUT, (str(D / "ds_empty"), "no class folders")
    )
    # one class folder is a valid evaluation set, but this one is not among the model's classes
    c["evaluate-dataset-with-one-unknown-class"] = Case(
        ["evaluate", M, str(D / "ds_one")], EXIT_INPUT, ("only", "classes")
    )
    c["finetune-dataset-with-one-class"] = Case(
        ["finetune", M, str(D / "ds_one"), "-o", o("f1"), "-j", "0"],
        EXIT_INPUT,
        (str(D / "ds_one"), "one class"),
        (o("f1"),),
    )
    c["evaluate-dataset-missing"] = Case(["evaluate", M, str(D / "nowhere")], EXIT_INPUT, (str(D / "nowhere"),))

    # 5. options that would exhaust memory or divide by zero
    c["predict-input-size-exhausts-memory"] = Case(
        ["predict", M, ok, "--input-size", "100000"], EXIT_USAGE, ("--input-size", "100000")
    )
    c["convert-input-size-exhausts-memory"] = Case(
        ["convert", "test_resnet", "--input-size", "50000x50000", "-o", o("cm.safetensors")],
        EXIT_USAGE,
        ("--input-size",),
    )
    c["predict-std-zero"] = Case(["predict", M, ok, "--std", "0,0,0"], EXIT_USAGE, ("--std",))
    c["predict-mean-nan"] = Case(["predict", X, ok, "--mean", "nan"], EXIT_USAGE, ("--mean",))
    c["convert-missing-file-with-markup-in-name"] = Case(
        ["convert", str(D / "no[/]pe [bold].pth"), "-o", o("mk.safetensors")],
        EXIT_INPUT,
        (str(D / "no[/]pe [bold].pth"),),
        (o("mk.safetensors"),),
    )

    # 6. read-only output folder (a read-only tmpfs)
    ro = p.ro
    for cid, argv in {
        "export-onnx-read-only": ["export", M, "-o", ro / "m.onnx"],
        "export-safetensors-read-only": ["export", M, "-o", ro / "m.safetensors"],
        "explain-read-only": ["explain", M, ok, "-o", ro / "x"],
        "evaluate-read-only": ["evaluate", X, str(D / "ds"), "-o", ro / "ev"],
        "finetune-read-only": ["finetune", M, str(D / "ds"), "-o", ro / "run", "-j", "0"],
        "synth-read-only": ["datasets", "synth", ro / "syn", "--n", "6", "--size", "32"],
    }.items():
        c[cid] = Case([str(a) for a in argv], EXIT_OUTPUT, (str(ro), "not writable"), needs="ro", batch=0)

    # 7. full disk (a tiny tmpfs per case): exit 6 naming the output, nothing left in it
    for cid, argv in {
        "export-onnx-disk-full": ["export", M, "-o", "{F}/m.onnx", "--exporter", "torchscript", "--spatial", "static"],
        "export-safetensors-disk-full": ["export", M, "-o", "{F}/m.safetensors"],
        "explain-disk-full": ["explain", X, str(img / "odd"), "-o", "{F}/x", "-c", "all"],
        "evaluate-disk-full": ["evaluate", X, str(D / "ds"), "-o", "{F}/ev"],
        "finetune-disk-full": ["finetune", M, str(D / "ds"), "-o", "{F}/run", "-j", "0", "--epochs", "1"],
        "synth-disk-full": ["datasets", "synth", "{F}/syn", "--n", "30", "--size", "64"],
    }.items():
        c[cid] = Case(
            [a.replace("{F}", str(p.full(cid))) for a in argv],
            EXIT_OUTPUT,
            (str(p.full(cid)), "disk is full"),
            needs="full",
            batch=1,
        )

    # 8. odd but valid inputs: these must WORK
    c["predict-onnx-odd-images"] = Case(
        ["predict", X, str(img / "odd"), "--json", "-k", "2"], 0, batch=1, check=_check_odd_predictions
    )
    c["predict-torch-odd-images"] = Case(
        ["predict", M, str(img / "odd"), "--json", "-k", "2"], 0, batch=1, check=_check_odd_predictions
    )
    c["predict-torch-table-with-markup-in-names"] = Case(
        ["predict", M, str(img / "odd")], 0, batch=1, check=lambda r, p: "[/]odd name ä [x].png" in r.stdout
    )
    c["explain-odd-images"] = Case(
        ["explain", M, str(img / "odd"), "-o", o("xo"), "-c", "all"], 0, batch=0, check=_check_odd_explain
    )
    c["evaluate-odd-dataset"] = Case(
        ["evaluate", X, str(D / "ds_odd"), "--json"], 0, batch=0, check=_check_odd_evaluate
    )
    c["finetune-odd-dataset-with-unreadable-images"] = Case(
        ["finetune", M, str(D / "ds_mixed"), "-o", o("fo"), "--epochs", "1", "-b", "4", "-j", "0", "--json"],
        0,
        batch=0,
        check=_check_odd_finetune,
    )
    c["finetune-table-with-markup-in-class-names"] = Case(
        ["finetune", M, str(D / "ds_odd"), "-o", o("ft"), "--epochs", "1", "-b", "8", "-j", "0"],
        0,
        batch=1,
        check=lambda r, p: "läsion [x] 病变" in r.stdout,
    )
    return c


ODD_IMAGES = (
    "]odd name ä [x].png",
    "animated.gif",
    "animated_first_frame.png",
    "cmyk.jpg",
    "exif_rotated.jpg",
    "exif_rotated_by_hand.png",
    "gray16.png",
    "one_px.png",
    "palette.png",
    "palette_transparent.png",
    "rgba.png",
)


def _check_odd_predictions(r: Result, p: Paths) -> bool:
    preds = {Path(x["image"]).name: x["top_k"] for x in json.loads(r.stdout)["predictions"]}
    assert sorted(preds) == sorted(ODD_IMAGES)  # hidden and non-image files skipped, nothing twice
    for top in preds.values():
        assert len(top) == 2 and all(np.isfinite(t["logit"]) and 0 <= t["probability"] <= 1 for t in top)
    # the model sees the EXIF-rotated pixels and the first GIF frame
    assert preds["exif_rotated.jpg"] == preds["exif_rotated_by_hand.png"]
    assert preds["animated.gif"] == preds["animated_first_frame.png"]
    return True


def _check_odd_explain(r: Result, p: Paths) -> bool:
    out = p.out / "xo"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["images"]) == len(ODD_IMAGES)
    assert len(list((out / "maps").glob("*.npy"))) == len(ODD_IMAGES)
    assert all(np.isfinite(np.load(f)).all() for f in (out / "maps").glob("*.npy"))
    return True


def _check_odd_evaluate(r: Result, p: Paths) -> bool:
    d = json.loads(r.stdout)
    assert d["data"]["class_names"] == ["gesund Ä", "läsion [x] 病变"]
    assert d["counts"]["images"] == 6 + 7 + 6  # the symlink loops add nothing
    return True


def _check_odd_finetune(r: Result, p: Paths) -> bool:
    d = json.loads(r.stdout)["data"]
    assert d["class_names"] == ["gesund Ä", "läsion [x] 病变"]
    assert d["train_images"] + d["val_images"] == 6 + 7 + 6  # loops add nothing; 4 unreadable ones skipped
    assert d["skipped_images"] == 4
    return True


CASE_IDS = list(build_cases(Paths(Path("/ROOT"))))


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> str | None:
    """Mount a tmpfs at ``path``; the reason when that is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (run the suite as root, e.g. in the CI container)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    return None if r.returncode == 0 else f"cannot mount a tmpfs here: {r.stderr.strip()}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """All inputs, all cases run in two batch processes side by side; yields (paths, cases, results, digests)."""
    p = Paths(tmp_path_factory.mktemp("hostile"))
    rng = np.random.default_rng(0)
    make_images(p.img, rng)
    make_datasets(p.data, p.img, rng)
    p.facts = make_checkpoints(p.ck, p.marker, p.marker_trusted)
    p.out.mkdir()
    cases = build_cases(p)
    mounted: list[Path] = []
    skipped: dict[str, str] = {}
    ro_reason = _mount_tmpfs(p.ro, "ro,size=64k")
    if ro_reason is None:
        mounted.append(p.ro)
    for cid, case in cases.items():
        reason = None
        if case.needs == "ro":
            reason = ro_reason
        elif case.needs == "full":
            size = {"export": "256k", "finetune": "256k", "evaluate": "4k"}.get(cid.split("-")[0], "40k")
            reason = _mount_tmpfs(p.full(cid), f"size={size}")
            if reason is None:
                mounted.append(p.full(cid))
        if reason:
            skipped[cid] = reason
    before = digest_tree(p.inputs)
    try:
        batches = [
            [(cid, cs.argv) for cid, cs in cases.items() if cs.batch == b and cid not in skipped] for b in (0, 1)
        ]
        batches[1].sort(key=lambda item: item[0] != "export_onnx")  # the ONNX model first
        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(lambda b: run_batch(batches[b], p.root / f"batch{b}"), (0, 1)))
        results = {**parts[0], **parts[1]}
        after = digest_tree(p.inputs)
        full_contents = {
            cid: sorted(str(x.relative_to(p.full(cid))) for x in p.full(cid).rglob("*"))
            for cid, cs in cases.items()
            if cs.needs == "full" and cid not in skipped
        }
        yield p, cases, results, before, after, skipped, full_contents
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False, capture_output=True)


@pytest.mark.parametrize("cid", CASE_IDS)
def test_hostile_case(hostile, cid):
    p, cases, results, before, after, skipped, full_contents = hostile
    if cid in skipped:
        pytest.skip(skipped[cid])
    case, r = cases[cid], results[cid]
    if case.code == 0:
        assert r.code == 0, f"{cid}: exit {r.code}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
        assert case.check is None or case.check(r, p)
    else:
        assert_refused(r, case.code, *case.says)
        for out in case.outputs:
            assert not Path(out).exists(), f"{cid} left {out} behind"
    if case.needs == "full":  # nothing half-written on the full disk (an empty run folder at most)
        assert [x for x in full_contents[cid] if x != "run"] == [], full_contents[cid]
    # the inputs it named are byte-for-byte what they were
    named = [a for a in case.argv if a.startswith(str(p.inputs))]
    changed = [
        k
        for k in before
        if any(k == a or k.startswith(a.rstrip("/") + "/") for a in named) and before[k] != after.get(k)
    ]
    assert not changed, f"{cid} changed its inputs: {changed}"


def test_no_pickled_code_ran_and_nothing_is_left_behind(hostile):
    p, cases, results, before, after, skipped, _ = hostile
    assert not p.marker.exists(), "a pickle payload ran while loading a checkpoint without --trust-pickle"
    assert before == after, "some input file changed"
    assert temporaries(p.out, p.inputs, p.ro) == []
    slow = sorted(((r.seconds, cid) for cid, r in results.items()), reverse=True)[:5]
    print("slowest cases:", slow)


def test_batch_runner_matches_the_real_entry_point(hostile):
    """The same cases through ``python -m softcamify`` (fresh processes) give the same exit code and line."""
    p, cases, results, *_ = hostile
    for cid in ("predict-onnx-truncated.png", "convert-runs_code.pth"):
        case = cases[cid]
        real = run_cli(*case.argv, env=ENV)
        assert real.returncode == results[cid].code == case.code
        assert one_sentence(real.stderr) == one_sentence(results[cid].stderr)
    assert not p.marker.exists()


# --------------------------------------------------------------------------------------------------
# Property-based: the readers raise only softcamify errors, whatever the bytes
# --------------------------------------------------------------------------------------------------

PROPS = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """Real files the mutation strategies start from."""
    import timm
    from safetensors.torch import save as st_bytes

    import softcamify
    from softcamify.conversion import as_softcam

    d = tmp_path_factory.mktemp("valid")
    torch.manual_seed(0)
    sd = {
        k: v.contiguous()
        for k, v in timm.create_model("test_resnet", num_classes=2).state_dict().items()
        if k.startswith(("conv1", "fc"))
    }  # small
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "arch": "test_resnet"}, buf)
    sc, _ = as_softcam("test_resnet", num_classes=2, input_size=(32, 32))
    softcamify.save(sc, d / "m.safetensors")
    return {
        "pth": buf.getvalue(),
        "safetensors": st_bytes(sd, metadata={"k": "v"}),
        "softcam": (d / "m.safetensors").read_bytes(),
        "onnx": _tiny_onnx({}),
    }


def _mutated(data: bytes, draw_ops) -> bytes:
    b = bytearray(data)
    for kind, pos, val in draw_ops:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= 1 << (val % 8)
        elif kind == "set":
            b[i] = val % 256
        elif kind == "cut":
            del b[i:]
        else:
            b[i:i] = bytes([val % 256]) * (1 + val % 7)
    return bytes(b)


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert"]), st.integers(0, 2**31), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


def _only_softcamify_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except InputError:
        pass


def _header_file(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@PROPS
@given(
    data=st.binary(max_size=600)
    | st.builds(_header_file, st.binary(max_size=200), st.binary(max_size=64))
    | st.builds(lambda v: _header_file(json.dumps(v).encode()), json_values)
    | st.builds(
        lambda v: _header_file(json.dumps({"__metadata__": {"softcamify": json.dumps(v)}}).encode()), json_values
    )
)
@example(data=_header_file(b"[" * 50_000 + b"]" * 50_000))  # RecursionError in json
@example(data=_header_file(b'{"a": ' + b"9" * 5000 + b"}"))  # ValueError: integer string too long
@example(data=_header_file(json.dumps({"__metadata__": {"softcamify": 5}}).encode()))  # TypeError: not str
def test_safetensors_readers_raise_only_input_errors(scratch, data):
    from softcamify.checkpoints import read_metadata, read_safetensors, safetensors_metadata

    path = scratch / "x.safetensors"
    path.write_bytes(data)
    for reader in (safetensors_metadata, read_metadata, read_safetensors):
        _only_softcamify_errors(reader, path)


@PROPS
@given(ops=MUTATIONS, which=st.sampled_from(["safetensors", "softcam"]))
def test_mutated_safetensors_raise_only_input_errors(scratch, valid_files, ops, which):
    from softcamify.checkpoints import read_metadata, read_safetensors

    path = scratch / "m.safetensors"
    path.write_bytes(_mutated(valid_files[which], ops))
    _only_softcamify_errors(read_metadata, path)
    _only_softcamify_errors(read_safetensors, path)


@PROPS
@given(data=st.binary(max_size=800) | st.builds(lambda ops, v: _mutated(v, ops), MUTATIONS, st.just(b"")))
def test_read_torch_arbitrary_bytes(scratch, data):
    from softcamify.checkpoints import read_torch

    path = scratch / "x.pth"
    path.write_bytes(data)
    _only_softcamify_errors(read_torch, path)


@PROPS
@given(ops=MUTATIONS)
def test_read_torch_mutated_checkpoints(scratch, valid_files, ops):
    from softcamify.checkpoints import read_torch

    path = scratch / "m.pth"
    path.write_bytes(_mutated(valid_files["pth"], ops))
    _only_softcamify_errors(read_torch, path)


def test_read_torch_detects_every_single_bit_flip_in_the_tensor_data(scratch, valid_files):
    """torch.load does not check zip CRCs; read_torch does, so no flipped bit becomes a silent wrong weight."""
    from softcamify.checkpoints import read_torch

    data = valid_files["pth"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = [i for i in zf.infolist() if "/data/" in i.filename]
    rng = np.random.default_rng(0)
    for info in infos[:4]:
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for _ in range(3):
            b = bytearray(data)
            b[start + int(rng.integers(info.file_size))] ^= 1 << int(rng.integers(8))
            path = scratch / "flip.pth"
            path.write_bytes(bytes(b))
            with pytest.raises(InputError, match="checksum"):
                read_torch(path)


def _tiny_onnx(meta: dict[str, str]) -> bytes:
    """An N×3×8×8 → logits N×3, evidence N×3×8×8 graph with the given metadata_props."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    evidence = helper.make_tensor_value_info("evidence", TensorProto.FLOAT, ["N", 3, 8, 8])
    nodes = [
        helper.make_node("Identity", ["input"], ["evidence"]),
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [logits, evidence]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


@PROPS
@given(data=st.binary(max_size=600) | st.builds(lambda ops: _mutated(_tiny_onnx({"a": "b"}), ops), MUTATIONS))
def test_onnx_metadata_reader_arbitrary_bytes(scratch, data):
    from softcamify.onnx_runtime import read_onnx_metadata

    path = scratch / "x.onnx"
    path.write_bytes(data)
    _only_softcamify_errors(read_onnx_metadata, path)


_text_or_json = st.text(max_size=30) | json_values.map(json.dumps)
_onnx_metas = st.dictionaries(
    st.sampled_from(
        [
            "softcamify",
            "class_names",
            "input_size",
            "mean",
            "std",
            "interpolation",
            "crop_pct",
            "crop_mode",
            "num_classes",
        ]
    ),
    _text_or_json
    | st.fixed_dictionaries(
        {},
        optional={
            "data_config": st.fixed_dictionaries(
                {},
                optional={
                    k: json_values for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
                },
            )
            | json_values,
            "class_names": json_values,
        },
    ).map(json.dumps),
    max_size=6,
)


@PROPS
@given(meta=_onnx_metas)
@example(meta={"softcamify": '{"data_config": true}'})  # AttributeError before the fix
@example(meta={"softcamify": "[" * 30_000})  # RecursionError before the fix
@example(meta={"input_size": "[3, 100000, 100000]", "mean": "[0.5]", "std": "[0.5]"})  # would exhaust memory
def test_onnx_metadata_never_crashes_predict(scratch, meta):
    """Whatever an .onnx file's metadata_props say, predict fails with a softcamify error or works."""
    from softcamify.prediction import predict

    path = scratch / "m.onnx"
    path.write_bytes(_tiny_onnx(meta))
    image = scratch / "i.png"
    if not image.exists():
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(image)
    try:
        predict(path, [image])
    except SoftcamifyError:
        pass


def _meta_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _meta_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _meta_paths(v, prefix + (i,))
    return out


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_softcamify_metadata_never_crashes_predict(scratch, valid_files, data):
    """A softcamify .safetensors whose metadata was edited or damaged: a softcamify error, or it works."""
    from softcamify.prediction import predict

    good = valid_files["softcam"]
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["softcamify"])
    targets = [
        t
        for t in _meta_paths(meta)
        if t[0] in ("data_config", "class_names", "num_classes", "source", "head", "format_version")
    ]
    for path_ in data.draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3)):
        obj = meta
        try:
            for k in path_[:-1]:
                obj = obj[k]
            obj[path_[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass
    _predict_with_meta(scratch, header, meta, good[8 + n :], predict)


@pytest.mark.parametrize(
    "change",
    [
        {"class_names": None},
        {"data_config": {"mean": {}}},
        {"data_config": {"mean": []}},
        {"data_config": {"crop_pct": 33}},
        {"data_config": {"input_size": [3, 100000, 100000]}},
        {"data_config": {"std": [0, 0, 0]}},
        {"num_classes": "2"},
    ],
)
def test_softcamify_metadata_found_by_hypothesis(scratch, valid_files, change):
    """Malformed fields hypothesis found (each crashed predict with a TypeError/ZeroDivisionError/...)."""
    from softcamify.prediction import predict

    good = valid_files["softcam"]
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["softcamify"])
    for k, v in change.items():
        if isinstance(v, dict):
            meta[k] = {**meta[k], **v}
        else:
            meta[k] = v
    with pytest.raises(InputError, match="metadata"):
        _predict_with_meta(scratch, header, meta, good[8 + n :], predict, swallow=False)


def _predict_with_meta(scratch: Path, header: dict, meta: dict, body: bytes, predict, swallow: bool = True) -> None:
    header = {**header, "__metadata__": {"softcamify": json.dumps(meta)}}
    raw = json.dumps(header).encode()
    path = scratch / "meta.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    image = scratch / "i.png"
    if not image.exists():
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(image)
    try:
        predict(path, [image], device="cpu")
    except SoftcamifyError:
        if not swallow:
            raise


# --------------------------------------------------------------------------------------------------
# Reliability v2 (issue 16): labels CSVs that contradict themselves, quantized weights, synthetic datasets
# that cannot fit, messages that name only the command's own options. Same rules as the cases above: the
# documented exit code, one ``error:`` line, nothing half-written; warnings reach the user as notes (in the
# --json output too). The cases run in one batch (:func:`run_batch`), next to nothing else.
# --------------------------------------------------------------------------------------------------


def _csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def make_v2_inputs(root: Path) -> dict[str, Any]:
    """The labels CSVs (and their images) of the v2 cases."""
    rng = np.random.default_rng(7)
    data = root / "csvdata"
    _image_set(data / "healthy", 6, rng, False)
    _image_set(data / "lesion", 6, rng, True)
    rows = [f"{c}/{i:03d}.png,{c}" for c in ("healthy", "lesion") for i in range(6)]
    csvs = {
        # the same image under two labels, twice (once written as ./lesion/001.png: the same file)
        "conflict": _csv(
            root / "conflict.csv", "path,label", rows + ["healthy/000.png,lesion", "./lesion/001.png,healthy"]
        ),
        # identical rows again (also spelled differently): used once, with a note
        "duplicate": _csv(
            root / "duplicate.csv", "path,label", rows + ["healthy/000.png,healthy", "./lesion/002.png,lesion"]
        ),
    }
    split = [f"{c}/{i:03d}.png,{c},{'train' if i < 4 else 'val'}" for c in ("healthy", "lesion") for i in range(6)]
    # healthy/000.png is in train and val, lesion/001.png in train and test: leakage, kept with a note
    csvs["leak"] = _csv(
        root / "leak.csv", "path,label,split", split + ["healthy/000.png,healthy,val", "lesion/001.png,lesion,test"]
    )
    csvs["leak_conflict"] = _csv(
        root / "leak_conflict.csv",
        "path,label,split",  # two splits, two labels
        split + ["healthy/000.png,lesion,val"],
    )
    return {
        "data": data,
        **csvs,
        **make_quantized_checkpoints(root / "quant"),
        "onnx_nometa": _write(root / "nometa.onnx", _tiny_onnx({})),
    }


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_quantized_checkpoints(root: Path) -> dict[str, Any]:
    """Weights softcamify cannot use as they are: int8 values, a torch.ao quantized model (its state dict and
    the pickled module), weights whose logits are absurd; and quantized tensors it dequantizes exactly."""
    import timm
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    big = [k for k, v in sd.items() if v.is_floating_point() and v.ndim >= 2]  # conv and classifier weights
    out: dict[str, Any] = {"first_int8": big[0], "n_int8": len(big)}
    # int8 values of every conv/linear weight, as a quantization tool stores them (scales elsewhere or lost)
    int8 = {k: (v / v.abs().max() * 127).round().to(torch.int8) if k in big else v for k, v in sd.items()}
    save_file(int8, str(root / "int8.safetensors"))
    torch.save(int8, root / "int8.pth")
    out["int8"], out["int8_pth"] = str(root / "int8.safetensors"), str(root / "int8.pth")
    # torch quantized tensors carry their scale and zero point: dequantized exactly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_per_* are deprecated
        quant = {
            k: (
                torch.quantize_per_channel(
                    v,
                    v.abs().amax(dim=tuple(range(1, v.ndim))) / 127 + 1e-8,
                    torch.zeros(v.shape[0], dtype=torch.long),
                    0,
                    torch.qint8,
                )
                if k.startswith("conv")
                else torch.quantize_per_tensor(v, float(v.abs().max()) / 127, 0, torch.qint8)
            )
            if k in big
            else v
            for k, v in sd.items()
        }
        torch.save(quant, root / "quantized.pth")
        save_file(
            {k: v.dequantize() if v.is_quantized else v for k, v in quant.items()},
            str(root / "dequantized.safetensors"),
        )
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        torch.save(qmodel.state_dict(), root / "ao_state_dict.pth")
        torch.save(qmodel, root / "ao_module.pth")
    out["n_quantized"] = len(big)
    for name in ("quantized", "ao_state_dict", "ao_module"):
        out[name] = str(root / f"{name}.pth")
    out["dequantized"] = str(root / "dequantized.safetensors")
    huge = dict(sd)
    huge["fc.weight"] = sd["fc.weight"] * 1e12  # finite, but logits of ~1e12: any difference would "pass"
    save_file(huge, str(root / "huge_logits.safetensors"))
    out["huge"] = str(root / "huge_logits.safetensors")
    return out


def build_v2_cases(p: Paths, v: dict[str, Any]) -> dict[str, Case]:
    c: dict[str, Case] = {}
    M, data = str(p.model), str(v.get("data", "/DATA"))  # noqa: N806
    ft = ["-j", "0", "--epochs", "1", "-b", "4", "--json"]

    def o(cid: str) -> str:
        return str(p.out / cid)

    # 1. labels CSVs
    csv = {k: str(v.get(k, f"/CSV/{k}.csv")) for k in ("conflict", "duplicate", "leak", "leak_conflict")}
    c["v2-finetune-csv-image-with-two-labels"] = Case(
        ["finetune", M, data, "--labels", csv["conflict"], "-o", o("c1"), *ft],
        EXIT_INPUT,
        (
            csv["conflict"],
            "2 image(s) more than one label",
            f"{data}/healthy/000.png",
            "'healthy' on line 2",
            "'lesion' on line 14",
        ),
        (o("c1"),),
    )
    c["v2-finetune-csv-image-in-two-splits-with-two-labels"] = Case(
        ["finetune", M, data, "--labels", csv["leak_conflict"], "-o", o("c2"), *ft],
        EXIT_INPUT,
        (csv["leak_conflict"], "1 image(s) more than one label", "'healthy'", "'lesion'"),
        (o("c2"),),
    )
    c["v2-finetune-csv-duplicate-rows"] = Case(
        ["finetune", M, data, "--labels", csv["duplicate"], "-o", o("c3"), *ft],
        0,
        batch=1,
        check=lambda r, p: _check_csv_note(r, csv["duplicate"], "lists 2 row(s) again", (10, 2)),
    )
    c["v2-finetune-csv-leakage"] = Case(
        ["finetune", M, data, "--labels", csv["leak"], "-o", o("c4"), *ft],
        0,
        batch=1,
        check=lambda r, p: _check_csv_note(r, csv["leak"], "puts 2 image(s) in more than one split", (8, 5)),
    )
    c["v2-sweep-csv-leakage"] = Case(  # the sweep scores runs on that validation split: its notes say so too
        [
            "sweep",
            M,
            data,
            "--labels",
            csv["leak"],
            "-o",
            o("c5"),
            "--l1",
            "0.1",
            "--epochs",
            "1",
            "-j",
            "0",
            "-b",
            "4",
            "--warmup-epochs",
            "0",
            "--device",
            "cpu",
            "--json",
        ],
        0,
        batch=0,
        check=lambda r, p: any(
            n.startswith(f"Labels file {csv['leak']} puts 2 image(s) in more than one split")
            for n in json.loads(r.stdout)["notes"]
        ),
    )

    # 2. quantized weights: int8 values are refused by every command, quantized tensors dequantized exactly
    q = {
        k: str(v.get(k, f"/Q/{k}"))
        for k in ("int8", "int8_pth", "quantized", "dequantized", "ao_state_dict", "ao_module", "huge")
    }
    first = str(v.get("first_int8", "conv1.0.weight"))
    for cmd in ("inspect", "convert", "export", "explain", "evaluate", "finetune"):
        cid = f"v2-{cmd}-int8-weights"
        argv, outs = model_argv(cmd, "test_resnet", o(cid), p)
        c[cid] = Case(
            argv + ["-w", q["int8"], "--input-size", "32"],
            EXIT_INPUT,
            (
                q["int8"],
                f"tensor {first} as int8 (and {int(v.get('n_int8', 2)) - 1} more tensors)",
                "quantized",
                "dequantize",
            ),
            outs,
            batch=zlib.crc32(cid.encode()) % 2,
        )
    c["v2-convert-int8-pth"] = Case(
        ["convert", "test_resnet", "-w", q["int8_pth"], "-o", o("i8.safetensors")],
        EXIT_INPUT,
        (q["int8_pth"], first, "int8"),
        (o("i8.safetensors"),),
    )
    conv = ["--input-size", "32", "--samples", "2", "--json"]
    c["v2-convert-dequantized-reference"] = Case(
        ["convert", "test_resnet", "-w", q["dequantized"], "-o", o("deq.safetensors"), *conv], 0
    )
    c["v2-convert-quantized-tensors"] = Case(
        ["convert", "test_resnet", "-w", q["quantized"], "-o", o("q.safetensors"), *conv],
        0,
        check=lambda r, p: _check_dequantized(r, p, int(v.get("n_quantized", 0))),
    )
    c["v2-convert-torch-ao-quantized-state-dict"] = Case(
        ["convert", "test_resnet", "-w", q["ao_state_dict"], "-o", o("ao.safetensors")],
        EXIT_INPUT,
        (q["ao_state_dict"], "quantized model", "fc._packed_params"),
        (o("ao.safetensors"),),
    )
    c["v2-convert-pickled-quantized-module"] = Case(
        ["convert", q["ao_module"], "--trust-pickle", "-o", o("aom.safetensors"), "--input-size", "32"],
        EXIT_INPUT,
        (q["ao_module"], "is quantized", "fc is a torch.ao.nn.quantized.dynamic.Linear"),
        (o("aom.safetensors"),),
    )
    for cmd, out in (("convert", o("huge.safetensors")), ("export", o("huge.onnx"))):
        c[f"v2-{cmd}-absurd-logits"] = Case(
            [cmd, "test_resnet", "-w", q["huge"], "-o", out, "--input-size", "32"],
            EXIT_INPUT,
            ("test_resnet's logits reach", "cannot be verified"),
            (out,),
            lacks=("exact",),
        )

    # 3. synthetic datasets that cannot be read back, or do not fit in memory or on the disk: refused before
    # anything is written (the first image is drawn to estimate the disk space)
    c["v2-synth-size-beyond-what-softcamify-reads"] = Case(
        ["datasets", "synth", o("s1"), "--size", "10000"],
        EXIT_USAGE,
        ("--size 10000 makes images of 100,000,000 pixels", "use at most 9459"),
        (o("s1"),),
    )
    c["v2-synth-does-not-fit-on-the-disk"] = Case(
        ["datasets", "synth", o("s2"), "--n", "1000000000", "--size", "512"],
        EXIT_OUTPUT,
        ("Cannot write 1,000,000,000 images of 512 px", o("s2"), "the disk is full", "lower --n or --size"),
        (o("s2"),),
    )

    # 4. an ONNX file without softcamify metadata: the advice names the options the command has (explain and
    # evaluate take --mean/--std since issue 17, as predict does)
    nometa = str(v.get("onnx_nometa", "/X/nometa.onnx"))
    ok = str(p.img / "ok.png") if v else "/IMG/ok.png"
    for cmd, argv in (
        ("explain", ["explain", nometa, ok, "-o", o("xm")]),
        ("evaluate", ["evaluate", nometa, data, "-o", o("em")]),
    ):
        c[f"v2-{cmd}-onnx-without-metadata"] = Case(
            argv,
            EXIT_USAGE,
            (nometa, "no softcamify metadata", "--mean", "--std"),
            (o("xm" if cmd == "explain" else "em"),),
        )
    c["v2-predict-onnx-without-metadata"] = Case(
        ["predict", nometa, ok],
        EXIT_USAGE,  # predict has them
        (nometa, "--mean", "--std"),
    )
    return c


def _check_dequantized(r: Result, p: Paths, n: int) -> bool:
    """Dequantized on load (a note says so), and the same model as the float weights give."""
    from safetensors.torch import load_file

    d = json.loads(r.stdout)
    assert d["exact"] and d["max_abs_diff"] <= 1e-3, d
    assert any(f"holds {n} quantized tensor(s); they were dequantized" in x for x in d["notes"]), d["notes"]
    got, want = load_file(str(p.out / "q.safetensors")), load_file(str(p.out / "deq.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    return True


def _check_csv_note(r: Result, csv: str, says: str, counts: tuple[int, int]) -> bool:
    """One note about ``csv`` saying ``says``, in --json and on stderr; (train, val) images used."""
    notes = [n for n in json.loads(r.stdout)["notes"] if n.startswith(f"Labels file {csv} ")]
    assert len(notes) == 1 and says in notes[0], json.loads(r.stdout)["notes"]
    assert f"note: {notes[0]}" in " ".join(r.stderr.split()), r.stderr  # shown to the user as it runs
    d = json.loads(r.stdout)["data"]
    assert (d["train_images"], d["val_images"]) == counts, d  # a repeated row counts once
    return True


V2_CASE_IDS = list(build_v2_cases(Paths(Path("/ROOT")), {}))


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    import softcamify
    from softcamify.conversion import as_softcam

    p = Paths(tmp_path_factory.mktemp("v2"))
    p.ck.mkdir(parents=True)
    p.out.mkdir()
    torch.manual_seed(0)
    sc, _ = as_softcam("test_resnet", num_classes=2, input_size=(32, 32))
    softcamify.save(sc, p.model)
    make_images(p.img, np.random.default_rng(0))
    _image_set(p.data / "ds" / "healthy", 4, np.random.default_rng(1), False)
    _image_set(p.data / "ds" / "lesion", 4, np.random.default_rng(2), True)
    v = make_v2_inputs(p.inputs)
    cases = build_v2_cases(p, v)
    before = digest_tree(p.inputs)
    batches = [[(cid, cs.argv) for cid, cs in cases.items() if cs.batch == b] for b in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda b: run_batch(batches[b], p.root / f"batch{b}"), (0, 1)))
    yield p, cases, {**parts[0], **parts[1]}, before, digest_tree(p.inputs)


@pytest.mark.parametrize("cid", V2_CASE_IDS)
def test_v2_case(v2, cid):
    p, cases, results, before, after = v2
    case, r = cases[cid], results[cid]
    if case.code == 0:
        assert r.code == 0, f"{cid}: exit {r.code}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
        assert case.check is None or case.check(r, p)
    else:
        line = assert_refused(r, case.code, *case.says)
        assert not any(word in line for word in case.lacks), line
        for out in case.outputs:
            assert not Path(out).exists(), f"{cid} left {out} behind"
    assert temporaries(p.out, p.inputs) == []
    assert before == after, "an input changed"
