"""One-shot device check of softcamify: equivalence, AMP, throughput, finetune with AMP, onnxruntime CUDA.

Meant to be run once on a GPU machine (sized to take well under 3 minutes on an H100/H200: an
estimate from the work it does, since it has not run on one yet) and equally runnable on a CPU-only
machine, where it says that CUDA is absent and measures the CPU figures only, at small sizes and with
one torch thread (about 20 s on 2 cores). Sizes are picked by device; the options below override them.
Everything uses the library's own API (``softcamify.convert``, ``softcamify.conversion.compare``,
``softcamify.data.synth.make_lesions``, ``softcamify.training.finetune``,
``softcamify.onnx_runtime.providers_for``) on timm models with random weights (never downloads).

Checks (PASS/FAIL; "info" rows are reported, not judged):

(a) converted-model equivalence on the device: max |Δlogit| of the SoftCAM model vs the original timm
    model in float32 (TF32 off; the library's own tolerance, atol + rtol × logit scale), then under
    bf16 and fp16 autocast: the converted model's AMP error against its float32 logits must be finite
    and stay within twice the original model's own AMP error (+ 0.1 % of the logit scale); top-1
    agreement with float32 is reported for both (random weights give near ties, which any reduced
    precision flips, so it is not judged on its own). float32 with the torch defaults (cuDNN TF32
    convolutions on CUDA) and ``convert()`` of a model already on the device are reported as info.
(b) forward images/s, original vs converted, in fp32, fp32 + channels_last and (CUDA) bf16 autocast
    with and without channels_last; rounds alternate and the best round counts. On CUDA the ratio
    converted / original must be at least 0.9; on a CPU it is info (shared CPUs are too noisy).
(c) one epoch of ``finetune`` on a ``make_lesions`` dataset with ``amp`` off and (CUDA) on with bf16
    and fp16: the training loss must be finite and the run must record the AMP dtype it used; the
    images/s are the library's ``FinetuneResult.train_images_per_s``.
(d) onnxruntime's execution providers: whether ``CUDAExecutionProvider`` is there (info only).

Usage::

    python benchmarks/gpu_check.py                  # table; exit 0 when every check passes, 1 otherwise
    python benchmarks/gpu_check.py --json out.json  # the same, plus every figure as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never reach for the hub
if importlib.util.find_spec("softcamify") is None:  # not installed (e.g. a bare GPU image): use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

_CPUS = os.cpu_count() or 1

# Sizes by device. CUDA: ImageNet-sized work meant to keep the whole script below 3 minutes on an
# H100/H200 (estimated, not yet measured); CPU: about 20 s on 2 shared cores (limit: 60 s).
PROFILES: dict[str, dict[str, Any]] = {
    "cuda": {
        "models": ["resnet18", "resnet50"],
        "size": 224,
        "classes": 1000,
        "eq_batch": 32,
        "tp_batch": 128,
        "tp_iters": 10,
        "tp_rounds": 5,
        "ft_model": "resnet50",
        "ft_images": 1536,
        "ft_size": 128,
        "ft_batch": 64,
        "ft_workers": min(8, _CPUS - 1),
    },
    "cpu": {
        "models": ["resnet18", "resnet50"],
        "size": 96,
        "classes": 1000,
        "eq_batch": 8,
        "tp_batch": 8,
        "tp_iters": 3,
        "tp_rounds": 3,
        "ft_model": "resnet18",
        "ft_images": 48,
        "ft_size": 64,
        "ft_batch": 8,
        "ft_workers": 0,
    },
}

THROUGHPUT_MIN_RATIO = 0.9  # converted / original forward images/s on CUDA
AMP_ERROR_FACTOR = 2.0  # converted model's AMP error may be this many times the original's own ...
AMP_ERROR_SLACK = 1e-3  # ... plus this share of the logit scale


@dataclass
class Check:
    section: str  # a, b, c, d
    name: str
    value: str
    ok: bool | None  # None: info, not judged
    data: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _tf32(enabled: bool):
    """cuDNN convolutions and matmuls with or without TF32 (CUDA); restores the previous settings."""
    prev = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if math.isfinite(v) else str(v)


def environment(device: torch.device) -> dict[str, Any]:
    import timm

    import softcamify

    env: dict[str, Any] = {
        "device": str(device),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "timm": timm.__version__,
        "softcamify": softcamify.__version__,
        "python": platform.python_version(),
        "cpus": _CPUS,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            gpu=p.name,
            capability=f"{p.major}.{p.minor}",
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return env


# --------------------------------------------------------------------------------------------------------
# (a) equivalence
# --------------------------------------------------------------------------------------------------------


def build_models(name: str, size: int, classes: int) -> tuple[torch.nn.Module, Any]:
    """A timm model with random weights (CPU, eval) and its conversion by ``softcamify.convert`` on the CPU."""
    import timm

    import softcamify

    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, num_classes=classes).eval()
    converted = softcamify.convert(original, input_size=(size, size))  # verifies on CPU (float32)
    return original, converted


@torch.inference_mode()
def _logits(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with _autocast(x.device, dtype):
        return model(x).float()


def check_equivalence(name: str, original, converted, device: torch.device, p: dict[str, Any]) -> list[Check]:
    from softcamify.conversion import DEFAULT_ATOL, DEFAULT_RTOL, compare

    checks: list[Check] = []
    size = p["size"]
    x = torch.randn(p["eq_batch"], 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    orig = copy.deepcopy(original).to(device).eval()
    conv = copy.deepcopy(converted).to(device).eval()
    prev_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # the same (heuristic) kernels for both backbones
    try:
        with _tf32(False):
            st = compare(orig, conv, x)
        tol = DEFAULT_ATOL + DEFAULT_RTOL * st["logit_scale"]
        checks.append(
            Check(
                "a",
                f"{name} fp32 (TF32 off)",
                f"max|Δ| {_fmt(st['max_abs_diff'])} (tol {_fmt(tol)}), top-1 {st['top1_agreement']:.0%}",
                st["max_abs_diff"] <= tol and st["maps_mean_diff"] <= tol,
                {**st, "tol": tol},
            )
        )
        if device.type == "cuda":
            st = compare(orig, conv, x)  # torch defaults: cuDNN TF32 convolutions (the 1x1 evidence conv too)
            tol_d = DEFAULT_ATOL + DEFAULT_RTOL * st["logit_scale"]
            checks.append(
                Check(
                    "a",
                    f"{name} fp32 (torch defaults, TF32 conv)",
                    f"max|Δ| {_fmt(st['max_abs_diff'])} ({'within' if st['max_abs_diff'] <= tol_d else 'beyond'} "
                    f"the convert tolerance {_fmt(tol_d)})",
                    None,
                    {**st, "tol": tol_d},
                )
            )
        with _tf32(False):
            ref_o = _logits(orig, x, None)
            ref_c = _logits(conv, x, None)
        scale = float(ref_o.abs().max())
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                checks.append(Check("a", f"{name} {label} autocast", "no bf16 on this GPU", None))
                continue
            amp_o = _logits(orig, x, dtype)
            amp_c = _logits(conv, x, dtype)
            err_o = float((amp_o - ref_o).abs().max())
            err_c = float((amp_c - ref_c).abs().max())
            gap = float((amp_c - amp_o).abs().max())
            agree_o = float((amp_o.argmax(1) == ref_o.argmax(1)).float().mean())
            agree_c = float((amp_c.argmax(1) == ref_c.argmax(1)).float().mean())
            bound = AMP_ERROR_FACTOR * err_o + AMP_ERROR_SLACK * scale
            finite = bool(torch.isfinite(amp_c).all() and torch.isfinite(amp_o).all())
            # judged on max|Δ| (it bounds every logit, so no top-1 can flip where the fp32 margin exceeds
            # 2 x bound); top-1 agreement is reported: random weights give near ties, flipped by any precision
            ok = finite and err_c <= bound
            checks.append(
                Check(
                    "a",
                    f"{name} {label} autocast",
                    f"vs fp32 max|Δ| conv {_fmt(err_c)} / orig {_fmt(err_o)}, top-1 {agree_c:.0%} / {agree_o:.0%}, "
                    f"conv-orig {_fmt(gap)}",
                    ok,
                    {
                        "max_abs_diff_converted": err_c,
                        "max_abs_diff_original": err_o,
                        "bound": bound,
                        "converted_vs_original": gap,
                        "top1_agreement_converted": agree_c,
                        "top1_agreement_original": agree_o,
                        "finite": finite,
                        "logit_scale": scale,
                    },
                )
            )
    finally:
        torch.backends.cudnn.benchmark = prev_bench
    if device.type != "cpu":
        # the Python API on a model already on the device (the CLI converts on the CPU, then moves it)
        import softcamify

        try:
            softcamify.convert(orig, input_size=(size, size))
            checks.append(Check("a", f"{name} convert() of a model on {device.type}", "works", None))
        except Exception as e:  # noqa: BLE001 - reported, not judged
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}" if str(e) else type(e).__name__
            checks.append(Check("a", f"{name} convert() of a model on {device.type}", f"fails ({msg})", None))
    del orig, conv
    return checks


# --------------------------------------------------------------------------------------------------------
# (b) forward throughput
# --------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def _time(model, x, dtype, iters: int, device: torch.device) -> float:
    with _autocast(device, dtype):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
    return time.perf_counter() - t0


def check_throughput(name: str, original, converted, device: torch.device, p: dict[str, Any]) -> list[Check]:
    cuda = device.type == "cuda"
    modes = [("fp32", None, False), ("fp32+channels_last", None, True)]
    if cuda and torch.cuda.is_bf16_supported():
        modes += [("bf16", torch.bfloat16, False), ("bf16+channels_last", torch.bfloat16, True)]
    size, batch, iters = p["size"], p["tp_batch"], p["tp_iters"]
    x0 = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)
    prev_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda  # what finetune uses on CUDA (unless deterministic)
    checks: list[Check] = []
    try:
        for label, dtype, cl in modes:
            fmt = torch.channels_last if cl else torch.contiguous_format
            models = {
                k: copy.deepcopy(m).to(device).eval().to(memory_format=fmt)
                for k, m in (("original", original), ("converted", converted))
            }
            x = x0.contiguous(memory_format=fmt)
            for m in models.values():  # warm-up: kernel selection, allocator
                _time(m, x, dtype, 3, device)
            best = dict.fromkeys(models, math.inf)
            for r in range(p["tp_rounds"]):  # alternate, and swap who goes first every round
                for k in list(models) if r % 2 == 0 else list(models)[::-1]:
                    best[k] = min(best[k], _time(models[k], x, dtype, iters, device))
            ips = {k: batch * iters / t for k, t in best.items()}
            ratio = ips["converted"] / ips["original"]
            ok = ratio >= THROUGHPUT_MIN_RATIO if cuda else None
            checks.append(
                Check(
                    "b",
                    f"{name} {label} img/s",
                    f"orig {ips['original']:.1f}, conv {ips['converted']:.1f}, ratio {ratio:.3f}",
                    ok,
                    {
                        "mode": label,
                        "batch": batch,
                        "size": size,
                        "images_per_s": ips,
                        "ratio": ratio,
                        "min_ratio": THROUGHPUT_MIN_RATIO if cuda else None,
                    },
                )
            )
            del models
    finally:
        torch.backends.cudnn.benchmark = prev_bench
    return checks


# --------------------------------------------------------------------------------------------------------
# (c) finetune with AMP on and off
# --------------------------------------------------------------------------------------------------------


def check_finetune(device: torch.device, p: dict[str, Any], tmp: Path) -> list[Check]:
    import timm

    import softcamify
    from softcamify.data.synth import make_lesions
    from softcamify.training import FinetuneConfig, finetune

    cuda = device.type == "cuda"
    size = p["ft_size"]
    data = tmp / "lesions"
    manifest = make_lesions(data, n=p["ft_images"], size=size, seed=0, workers=None if cuda else 1)
    classes = list(manifest["classes"])
    n_train = sum(manifest["counts"]["train"].values())
    torch.manual_seed(0)
    original = timm.create_model(p["ft_model"], pretrained=False, num_classes=len(classes)).eval()
    model = softcamify.convert(original, input_size=(size, size), class_names=classes)
    runs: list[tuple[str, bool, str]] = [("off", False, "bf16")]
    if cuda:
        runs += [("bf16", True, "bf16"), ("fp16", True, "fp16")]

    def run(tag: str, amp: bool, amp_dtype: str):
        cfg = FinetuneConfig(
            epochs=1,
            batch_size=p["ft_batch"],
            workers=p["ft_workers"],
            device=str(device),
            amp=amp,
            amp_dtype=amp_dtype,
            force=True,
            augment="light",
            seed=0,
        )
        return finetune(model, data, tmp / f"run_{tag}", cfg)

    if cuda:
        run("warmup", False, "bf16")  # untimed: cuDNN autotuning of the training shapes, worker start-up
    checks: list[Check] = []
    speeds: dict[str, float] = {}
    for tag, amp, amp_dtype in runs:
        res = run(tag, amp, amp_dtype)
        train = (res.last or {}).get("train", {})
        loss = train.get("loss")
        finite = loss is not None and math.isfinite(loss)
        expect = amp_dtype if amp else None
        if amp and amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            expect = "fp16"  # the library falls back to float16 with gradient scaling
        speeds[tag] = res.train_images_per_s
        checks.append(
            Check(
                "c",
                f"finetune {p['ft_model']} 1 epoch, amp {tag}",
                f"{res.train_images_per_s:.1f} img/s, loss {_fmt(loss) if loss is not None else 'nan'}, amp={res.amp}",
                finite and res.amp == expect,
                {
                    "train_images_per_s": res.train_images_per_s,
                    "loss": loss,
                    "amp": res.amp,
                    "expected_amp": expect,
                    "images": train.get("images"),
                    "dataset_train_images": n_train,
                    "elapsed_s": res.elapsed_s,
                    "notes": res.notes,
                    "batch_size": p["ft_batch"],
                    "size": size,
                    "workers": p["ft_workers"],
                },
            )
        )
    if not cuda:
        checks.append(Check("c", "finetune amp on", "not run: --amp applies on CUDA only", None))
    for tag in ("bf16", "fp16"):
        if tag in speeds:
            checks.append(
                Check(
                    "c",
                    f"finetune speed-up amp {tag} / off",
                    f"{speeds[tag] / speeds['off']:.2f}x",
                    None,
                    {"ratio": speeds[tag] / speeds["off"]},
                )
            )
    return checks


# --------------------------------------------------------------------------------------------------------
# (d) onnxruntime
# --------------------------------------------------------------------------------------------------------


def check_onnxruntime() -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("d", "onnxruntime", "not installed", None)]
    from softcamify.onnx_runtime import providers_for

    available = list(ort.get_available_providers())
    has_cuda = "CUDAExecutionProvider" in available
    chosen = providers_for("auto")
    return [
        Check(
            "d",
            "onnxruntime CUDAExecutionProvider",
            f"{'available' if has_cuda else 'absent'} (onnxruntime {ort.__version__}; --device auto uses "
            f"{', '.join(chosen)})",
            None,
            {"onnxruntime": ort.__version__, "available": available, "cuda": has_cuda, "auto_providers": chosen},
        )
    ]


# --------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------


def _guarded(section: str, what: str, fn, *args) -> list[Check]:
    """Run one part; an exception becomes a failed check (the rest still runs: one GPU run, all answers)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        tb = traceback.format_exc(limit=3)
        return [Check(section, what, f"error: {type(e).__name__}: {str(e)[:160]}", False, {"traceback": tb})]


def print_table(checks: list[Check]) -> None:
    w = max(len(c.name) for c in checks) + 2
    print(f"{'':3}{'check':<{w}}{'result':<7}value")
    for c in checks:
        res = "info" if c.ok is None else ("PASS" if c.ok else "FAIL")
        print(f"({c.section}) {c.name:<{w}}{res:<7}{c.value}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    ap.add_argument("--models", help="comma-separated timm names for (a) and (b) (default by device)")
    ap.add_argument("--size", type=int, help="input size of (a) and (b)")
    ap.add_argument("--classes", type=int, help="classes of the (a)/(b) models")
    ap.add_argument("--batch", type=int, help="batch of (b); (a) uses min(batch, its default)")
    ap.add_argument("--ft-model", help="timm name for (c)")
    ap.add_argument("--ft-images", type=int, help="images generated for (c) (60 %% train)")
    ap.add_argument("--ft-size", type=int, help="image size of (c)")
    ap.add_argument("--ft-batch", type=int)
    ap.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: 1 on a CPU, where shared cores make OpenMP spin-waits "
        "slow runs down 10x at random; torch's choice on CUDA)",
    )
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: a,b,c,d")
    args = ap.parse_args(argv)

    from softcamify.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "mps":
        device = torch.device("cpu")
    p = dict(PROFILES["cuda" if device.type == "cuda" else "cpu"])
    for key, val in (
        ("models", args.models and [m.strip() for m in args.models.split(",") if m.strip()]),
        ("size", args.size),
        ("classes", args.classes),
        ("tp_batch", args.batch),
        ("ft_model", args.ft_model),
        ("ft_images", args.ft_images),
        ("ft_size", args.ft_size),
        ("ft_batch", args.ft_batch),
    ):
        if val:
            p[key] = val
    if args.batch:
        p["eq_batch"] = min(p["eq_batch"], args.batch)
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)

    t_start = time.perf_counter()
    env = environment(device)
    if device.type == "cuda":
        print(
            f"softcamify {env['softcamify']} GPU check on {device} ({env['gpu']}, sm_{env['capability']}, "
            f"{env['gpu_memory_gib']} GiB, bf16 {'yes' if env['bf16'] else 'no'}), torch {env['torch']}, "
            f"CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, timm {env['timm']}"
        )
    else:
        print(
            f"softcamify {env['softcamify']} device check: CUDA is absent (torch {env['torch']}, "
            f"CUDA build {env['torch_cuda']}); measuring the CPU figures only, at small sizes "
            f"({env['cpus']} CPUs, torch threads {env['threads']}, timm {env['timm']})."
        )
    print(
        f"sizes: (a)/(b) {', '.join(p['models'])} at {p['size']} px, {p['classes']} classes, batch {p['eq_batch']} "
        f"/ {p['tp_batch']}; (c) {p['ft_model']} on {p['ft_images']} generated images at {p['ft_size']} px, "
        f"batch {p['ft_batch']}"
    )

    checks: list[Check] = []
    timings: dict[str, float] = {}
    if not {"a", "b"} <= skip:
        for name in p["models"]:
            t0 = time.perf_counter()
            try:
                original, converted = build_models(name, p["size"], p["classes"])
            except Exception as e:  # noqa: BLE001
                checks.append(Check("a", f"{name} convert", f"error: {type(e).__name__}: {str(e)[:160]}", False))
                continue
            if "a" not in skip:
                checks += _guarded("a", f"{name} equivalence", check_equivalence, name, original, converted, device, p)
            if "b" not in skip:
                checks += _guarded("b", f"{name} throughput", check_throughput, name, original, converted, device, p)
            timings[name] = time.perf_counter() - t0
            del original, converted
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "c" not in skip:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="softcamify-gpu-check-") as tmp:
            checks += _guarded("c", "finetune", check_finetune, device, p, Path(tmp))
        timings["finetune"] = time.perf_counter() - t0
    if "d" not in skip:
        checks += _guarded("d", "onnxruntime", check_onnxruntime)
    total = time.perf_counter() - t_start
    checks.sort(key=lambda c: c.section)  # stable: a, b, c, d in run order within each

    print()
    print_table(checks)
    failed = [c for c in checks if c.ok is False]
    judged = [c for c in checks if c.ok is not None]
    print()
    print(f"time: {total:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in timings.items())})")
    if failed:
        print(f"FAILED {len(failed)} of {len(judged)} checks: " + "; ".join(f"({c.section}) {c.name}" for c in failed))
        for c in failed:
            if "traceback" in c.data:
                print(c.data["traceback"], file=sys.stderr)
    else:
        print(f"all {len(judged)} checks passed")
    if args.json:
        out = {
            "environment": env,
            "profile": p,
            "seconds": total,
            "timings_s": timings,
            "passed": not failed,
            "checks": [asdict(c) for c in checks],
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
