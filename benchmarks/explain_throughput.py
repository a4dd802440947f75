"""Throughput of explanations: SoftCAM's all-class maps vs pytorch-grad-cam's Grad-CAM, measured in one run.

Same architecture, same batch, same device, same process, rounds interleaved so that load changes on a
shared machine hit every method alike:

* **SoftCAM, all K classes**: one forward pass (``forward_maps`` in inference mode) returns the logits and
  the K evidence maps.
* **Grad-CAM, one class**: pytorch-grad-cam's ``GradCAM`` on the original classifier, hooked on its last
  feature map (the output of layer4 for a ResNet), one target class per image: a forward and a backward pass.
  Measured as a user runs it (weights require grad, so the backward also computes weight gradients) and
  in a tuned variant that starts autograd at the feature map (no weight gradients: the fastest Grad-CAM can be).
* **Grad-CAM, all K classes**: K such calls, one per class.

Reports images/s (the best round by default, the least disturbed by other load; ``--stat median``) and
the ratios. Random weights (timm ``pretrained=False``): speed
does not depend on the weights. Usage::

    python benchmarks/explain_throughput.py --model resnet50 --classes 10 --batch 8 --size 224 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="timm architecture (random weights)")
    ap.add_argument("--classes", type=int, default=10, help="number of classes K")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds")
    ap.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="time per method over rounds: min (best round: least disturbed by other load) or median",
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    import timm
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import softcamify
    from softcamify.evaluation.baselines import original_target

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    k, n = args.classes, args.batch
    original = timm.create_model(args.model, pretrained=False, num_classes=k).eval()
    softcam = softcamify.convert(original, input_size=(args.size, args.size), samples=2).to(device).eval()
    original = original.to(device)
    x = torch.randn(n, 3, args.size, args.size, device=device)

    # Grad-CAM as a user runs it: the model's own parameters require grad; hooked on the last feature map.
    target = original_target(original, (3, args.size, args.size), detach_features=False)
    user_cam = GradCAM(model=target, target_layers=[target.tap])
    tuned_target = original_target(original, (3, args.size, args.size), detach_features=True)
    tuned_cam = GradCAM(model=tuned_target, target_layers=[tuned_target.tap])

    def softcam_all() -> None:
        with torch.inference_mode():
            logits, maps = softcam.forward_maps(x)
        assert maps.shape[:2] == (n, k)

    def gradcam_one(cam) -> None:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * n)
        assert out.shape == (n, args.size, args.size)

    def gradcam_all(cam) -> None:
        for c in range(k):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(c)] * n)

    # warm-up (allocator, kernels, hooks)
    softcam_all()
    gradcam_one(user_cam)
    gradcam_one(tuned_cam)
    times: dict[str, list[float]] = {"softcam_all": [], "gradcam_one": [], "gradcam_one_tuned": [], "gradcam_all": []}
    for _ in range(args.rounds):
        times["softcam_all"].append(_timed(softcam_all, device))
        times["gradcam_one"].append(_timed(lambda: gradcam_one(user_cam), device))
        times["gradcam_one_tuned"].append(_timed(lambda: gradcam_one(tuned_cam), device))
        times["gradcam_all"].append(_timed(lambda: gradcam_all(user_cam), device))
    pick = min if args.stat == "min" else statistics.median
    ips = {key: n / pick(v) for key, v in times.items()}
    ips_median = {key: n / statistics.median(v) for key, v in times.items()}
    ratios = {
        "softcam_all_vs_gradcam_one": ips["softcam_all"] / ips["gradcam_one"],
        "softcam_all_vs_gradcam_one_tuned": ips["softcam_all"] / ips["gradcam_one_tuned"],
        "softcam_all_vs_gradcam_all": ips["softcam_all"] / ips["gradcam_all"],
    }
    result = {
        "model": args.model,
        "classes": k,
        "batch": n,
        "size": args.size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "stat": args.stat,
        "images_per_s": ips,
        "images_per_s_median": ips_median,
        "ratios": ratios,
        "seconds": times,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.model}, K={k} classes, batch {n}, {args.size}×{args.size}, {device}, "
        f"{torch.get_num_threads()} threads, {args.stat} of {args.rounds} rounds (interleaved)"
    )
    print(f"  SoftCAM maps, all {k} classes (1 forward):        {ips['softcam_all']:9.2f} images/s")
    print(f"  Grad-CAM, 1 class (forward + backward):           {ips['gradcam_one']:9.2f} images/s")
    print(f"  Grad-CAM, 1 class, no weight gradients (tuned):   {ips['gradcam_one_tuned']:9.2f} images/s")
    print(f"  Grad-CAM, all {k} classes ({k} × fwd + bwd):       {ips['gradcam_all']:9.2f} images/s")
    print(f"  ratio SoftCAM all / Grad-CAM 1 class:        {ratios['softcam_all_vs_gradcam_one']:6.2f}×")
    print(f"  ratio SoftCAM all / Grad-CAM 1 class tuned:  {ratios['softcam_all_vs_gradcam_one_tuned']:6.2f}×")
    print(f"  ratio SoftCAM all / Grad-CAM all classes:    {ratios['softcam_all_vs_gradcam_all']:6.2f}× (K = {k})")


if __name__ == "__main__":
    main()
