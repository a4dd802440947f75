"""The report's figure: per lesion image, image (lesions outlined) | SoftCAM evidence | Grad-CAM.

:func:`panel_rows` computes the rows (PIL images), :func:`write_panels` writes them to ``OUT_DIR/figures``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..render import font

OUTLINE = (0, 230, 0)  # the lesion masks' outline
FOOTER = "green: lesion masks · SoftCAM: signed evidence (red for, blue against) · Grad-CAM: [0, 1]"


def _label_width(labels: list[str], fnt: Any, pad: int = 8) -> int:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = (int(probe.textlength(line, font=fnt)) for lb in labels for line in lb.split("\n"))
    return max(widths, default=0) + 2 * pad


def _titled(
    tiles: list[Image.Image], titles: list[str], row_label: str = "", label_w: int = 0, tile: int = 224
) -> Image.Image:
    """One row: tiles side by side, each with a title above, and a label (``label_w`` px wide) on the left."""
    fnt = font(15)
    pad, title_h, line_h = 8, 24, 20
    w = label_w + len(tiles) * (tile + pad) + pad
    h = title_h + tile + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    lines = row_label.split("\n") if row_label else []
    y0 = title_h + (tile - len(lines) * line_h) // 2
    for i, line in enumerate(lines):
        draw.text((pad, y0 + line_h * i), line, fill=(30, 30, 30), font=font(15 if i else 16))
    for i, (img, title) in enumerate(zip(tiles, titles, strict=True)):
        x = label_w + pad + i * (tile + pad)
        canvas.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC), (x, title_h))
        tw = draw.textlength(title, font=fnt)
        draw.text((x + max(0, (tile - tw) / 2), 4), title, fill=(20, 20, 20), font=fnt)
    return canvas


def _stack(rows: list[Image.Image], footer: str | None = None) -> Image.Image:
    fnt = font(13)
    foot_h = 22 if footer else 0
    w = max(r.width for r in rows)
    canvas = Image.new("RGB", (w, sum(r.height for r in rows) + foot_h), (255, 255, 255))
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    if footer:
        ImageDraw.Draw(canvas).text((8, y + 3), footer, fill=(90, 90, 90), font=fnt)
    return canvas


def _panel_inputs(picks: list[dict[str, Any]], cfg: dict[str, Any], data_dir: Path):
    """The picked images, their lesion masks and the preprocessed batch (N×3×H×W float32)."""
    from ..images import open_image, preprocess_image

    imgs = [open_image(data_dir / it["path"], channels=3) for it in picks]
    masks = [np.asarray(Image.open(data_dir / it["mask"])) > 0 for it in picks]
    size = tuple(cfg["input_size"][1:])
    x = np.stack(
        [
            preprocess_image(
                im,
                input_size=size,
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"],
                crop_pct=cfg["crop_pct"],
                crop_mode=cfg.get("crop_mode"),
                channels=3,
            )
            for im in imgs
        ]
    )
    x = x.astype(np.float32)
    return imgs, masks, x


def _panel_maps(x: np.ndarray, labels: list[int], tuned: Any, loaded: Any, baselines: list[str]):
    """Class probabilities and evidence maps of the fine-tuned model; Grad-CAM on the black box (or None)."""
    import torch

    with torch.no_grad():
        logits, maps = tuned.forward_maps(torch.from_numpy(x))
    probs = torch.softmax(logits, 1).numpy()
    gc = None
    if baselines:
        from ..evaluation.baselines import PostHocExplainer, original_target

        with PostHocExplainer(original_target(loaded.module, tuned.meta.data_config["input_size"]), "gradcam") as ex:
            gc = ex(x, labels)
    return probs, maps.numpy(), gc


def panel_rows(
    picks: list[dict[str, Any]], tuned: Any, loaded: Any, data_dir: Path, baselines: list[str]
) -> list[Image.Image]:
    """One row per picked lesion image: image | SoftCAM evidence for the true class | Grad-CAM (black box)."""
    from ..evaluation.report import with_outline as _with_outline
    from ..explanations import input_view
    from ..render import overlay, scale_maps

    cfg = tuned.meta.data_config
    names = list(tuned.meta.class_names)
    imgs, masks, x = _panel_inputs(picks, cfg, data_dir)
    labels = [names.index(it["class"]) for it in picks]
    probs, maps, gc = _panel_maps(x, labels, tuned, loaded, baselines)
    preds = [int(np.argmax(p)) for p in probs]
    labels_txt = [
        f"{it['class']}\npredicted:\n{names[preds[i]]}\np = {probs[i][preds[i]]:.2f}" for i, it in enumerate(picks)
    ]
    label_w = _label_width(labels_txt, font(16))
    rows = []
    for i in range(len(picks)):
        view = input_view(imgs[i], cfg)
        grey = view.convert("L").convert("RGB")  # maps read better over a grey fundus than over a red one
        k = labels[i]
        scaled = scale_maps(maps[i])[0]
        tiles = [
            _with_outline(view, masks[i], OUTLINE),
            _with_outline(overlay(grey, scaled[k], alpha=0.6, cmap="RdBu_r"), masks[i], OUTLINE),
        ]
        titles = ["image (lesions outlined)", f"SoftCAM evidence: {names[k]}"]
        if gc is not None:
            tiles.append(_with_outline(overlay(grey, gc[i], alpha=0.6, cmap="inferno"), masks[i], OUTLINE))
            titles.append("Grad-CAM (black box)")
        rows.append(_titled(tiles, titles, row_label=labels_txt[i], label_w=label_w))
    return rows


def write_panels(
    out: Path, picks: list[dict[str, Any]], tuned: Any, loaded: Any, data_dir: Path, baselines: list[str]
) -> str | None:
    """``figures/panel.png`` (every row), ``figures/panel_<i>.png`` (one row each) and
    ``figures/overview.png`` (the first two rows: the README picture, ``--update-docs``); returns the
    panel's path relative to OUT_DIR (None when there is no lesion image to show)."""
    if not picks:
        return None
    rows = panel_rows(picks, tuned, loaded, data_dir, baselines)
    (out / "figures").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        row.save(out / "figures" / f"panel_{i}.png")
    _stack(rows, footer=FOOTER).save(out / "figures" / "panel.png")
    _stack(rows[:2], footer=FOOTER).save(out / "figures" / "overview.png")
    return "figures/panel.png"
