"""The evaluation step's figures as data: classification side by side, localization per method, and the
fine-tuned SoftCAM against Grad-CAM on the black box in one plain sentence."""

from __future__ import annotations

from typing import Any

from ..report import format_fixed as _fmt
from .results import pick

CLASSIFICATION_KEYS = ("accuracy", "balanced_accuracy", "roc_auc")


def classification_figures(before: Any, after: Any) -> dict[str, Any]:
    """Test-split accuracy of the black box, the converted and the fine-tuned model."""
    bb = after.original_classification or {}
    return {
        "test_images": after.counts["images"],
        "black_box": pick(bb, CLASSIFICATION_KEYS),
        "converted": pick(before.classification, CLASSIFICATION_KEYS),
        "fine_tuned": pick(after.classification, CLASSIFICATION_KEYS),
    }


def localization_methods(before: Any, after: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, method summary) for the localization table: SoftCAM fine-tuned and converted, Grad-CAM."""
    label_of = {
        "softcam": "SoftCAM (fine-tuned)",
        "gradcam": "Grad-CAM (on SoftCAM)",
        "original:gradcam": "Grad-CAM (black box)",
    }
    found = {label_of.get(m["key"], m["label"]): m for m in after.method_summaries()}
    for m in before.method_summaries():
        if m["key"] == "softcam":
            found["SoftCAM (converted)"] = m
    order = ["SoftCAM (fine-tuned)", "SoftCAM (converted)", "Grad-CAM (black box)", "Grad-CAM (on SoftCAM)"]
    return [(k, found[k]) for k in order if k in found and found[k]["images"]]


def localization_figures(methods: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per method label: the number of images and the mean of every localization metric."""
    return {
        label: {"images": m["images"], **{k: v.get("mean") for k, v in m["metrics"].items()}} for label, m in methods
    }


def comparison(figures: dict[str, Any]) -> dict[str, Any] | None:
    """The fine-tuned SoftCAM against Grad-CAM on the black box, in figures and one plain sentence."""
    loc = figures.get("localization") or {}
    soft, gc = loc.get("SoftCAM (fine-tuned)"), loc.get("Grad-CAM (black box)")
    if not soft or not gc:
        return None
    cls = figures["classification"]
    d = {
        key: (soft.get(key) or 0.0) - (gc.get(key) or 0.0)
        for key in ("share_of_oracle", "pointing_game", "activation_precision")
    }
    d_acc = (cls["fine_tuned"].get("accuracy") or 0.0) - (cls["black_box"].get("accuracy") or 0.0)
    better = d["share_of_oracle"] > 0 and d["pointing_game"] >= 0
    verdict = "localizes the lesions better than" if better else "does not localize the lesions better than"
    text = (
        f"The fine-tuned SoftCAM {verdict} Grad-CAM on the black box: share of oracle "
        f"{_fmt(soft.get('share_of_oracle'))} vs {_fmt(gc.get('share_of_oracle'))} "
        f"({d['share_of_oracle']:+.3f}), pointing game {_fmt(soft.get('pointing_game'))} vs "
        f"{_fmt(gc.get('pointing_game'))} ({d['pointing_game']:+.3f}), at a test accuracy {d_acc:+.3f} "
        "from the black box's."
    )
    return {
        "share_of_oracle_diff": d["share_of_oracle"],
        "pointing_game_diff": d["pointing_game"],
        "activation_precision_diff": d["activation_precision"],
        "accuracy_diff": d_acc,
        "better": better,
        "text": text,
    }


def finetune_figures(sw: Any, chosen: Any, summary: dict[str, Any], st: Any) -> dict[str, Any]:
    """``figures["sweep"]`` and ``figures["finetune"]`` from the sweep and the chosen run's summary."""
    hist = summary.get("history") or []
    return {
        "sweep": {
            "rule": sw.rule,
            "tolerance": sw.tolerance,
            "localization": sw.localization,
            "reference": sw.reference,
            "recommended_l1": sw.recommended.l1 if sw.recommended else None,
            "runs": [
                pick(
                    r,
                    (
                        "l1",
                        "l2",
                        "accuracy",
                        "share_of_oracle",
                        "activation_precision",
                        "pointing_game",
                        "sparsity",
                        "qualified",
                        "recommended",
                    ),
                )
                for r in sw.runs
            ],
        },
        "finetune": {
            "epochs": summary.get("epochs_completed"),
            "best_epoch": summary.get("best_epoch"),
            "l1": chosen.l1,
            "l2": st.l2,
            "lr": st.lr,
            "batch_size": st.batch_size,
            "device": summary.get("device"),
            "train_images_per_s": summary.get("train_images_per_s"),
            "logit_scale": summary.get("logit_scale"),
            "history": [
                {
                    "epoch": h["epoch"],
                    "train_loss": h["train"]["loss"],
                    "train_ce": h["train"]["ce"],
                    "train_l1": h["train"]["l1"],
                    "train_accuracy": h["train"]["accuracy"],
                    "val_loss": h["val"].get("loss"),
                    "val_accuracy": h["val"].get("accuracy"),
                    "val_sparsity": h["val"].get("sparsity"),
                    "val_map_l1": h["val"].get("map_l1"),
                }
                for h in hist
            ],
        },
    }
