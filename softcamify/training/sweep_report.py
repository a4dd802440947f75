"""The files a finished λ sweep writes: ``sweep.json``, ``pareto.png``, ``index.html``, ``best.safetensors``.

Part of :mod:`softcamify.training.sweep` (which re-exports :func:`draw_pareto`). Everything here reads the
``sweep.json`` dict (``SweepResult.to_dict()``), so a saved ``sweep.json`` can be drawn again.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .sweep_scoring import SCORE_KEYS, finite_or_none

if TYPE_CHECKING:
    from .sweep_results import SweepResult

__all__ = [
    "draw_pareto",
    "render_html",
    "write_outputs",
    "SWEEP_JSON",
    "PARETO_PNG",
    "INDEX_HTML",
    "BEST_NAME",
]

SWEEP_JSON = "sweep.json"
PARETO_PNG = "pareto.png"
INDEX_HTML = "index.html"
BEST_NAME = "best.safetensors"

_LABELS = {"share_of_oracle": "share of oracle (masks)", "sparsity": "map sparsity (no masks)"}
_INK, _GREY, _AXIS, _GRID = (40, 40, 40), (60, 60, 60), (90, 90, 90), (232, 232, 236)
_FRONT, _RECOMMENDED, _FLOOR = (0, 114, 178), (0, 158, 115), (200, 120, 0)


def pct(v: float | None) -> str:
    """A score with three decimals, or an em dash."""
    return "—" if v is None else f"{v:.3f}"


def write_outputs(result: SweepResult, out: Path, force: bool) -> None:
    """Write ``pareto.png``, ``index.html``, ``sweep.json`` and the recommended model into ``out``, each
    atomically; without a recommendation, a ``best.safetensors`` left by an earlier sweep is removed
    (``force``)."""
    import json

    from ..io import atomic_output, write_bytes_atomic, write_text_atomic

    d = result.to_dict()
    png = io.BytesIO()
    draw_pareto(d).save(png, format="PNG")
    png_bytes = png.getvalue()
    best = out / BEST_NAME
    if result.recommended is not None and result.recommended.best_path:
        with atomic_output(best, force=force) as tmp:
            shutil.copyfile(result.recommended.best_path, tmp)
    elif best.exists() and force:  # a previous sweep's choice would be mistaken for this one's
        best.unlink()
    write_bytes_atomic(out / PARETO_PNG, png_bytes, force=force)
    write_text_atomic(out / INDEX_HTML, render_html(d, png_bytes), force=force)
    write_text_atomic(out / SWEEP_JSON, json.dumps(d, indent=2, allow_nan=False) + "\n", force=force)


# ----------------------------------------------------------------------------------------------------
# pareto.png
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Plot:
    """The drawing surface of the Pareto plot: the image, its fonts and the data-to-pixel mapping."""

    draw: Any
    width: int
    height: int
    left: int
    top: int
    pw: int
    ph: int
    font: Any
    small: Any
    x_lo: float = 0.0
    x_hi: float = 1.0
    y_lo: float = 0.0
    y_hi: float = 1.0

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * self.pw,
            self.top + (1 - (y - self.y_lo) / (self.y_hi - self.y_lo)) * self.ph,
        )


def draw_pareto(d: Mapping[str, Any], width: int = 760, height: int = 520) -> Any:
    """The Pareto plot of a ``sweep.json`` dict as a PIL image (accuracy on y, localization on x)."""
    from PIL import Image, ImageDraw

    from ..render import font

    ref = d.get("reference") or {}
    runs = list(d.get("runs") or [])
    metric = str(d.get("localization") or "score")
    floor = finite_or_none((d.get("rule") or {}).get("accuracy_floor"))
    pts = [(finite_or_none(r.get("score")), finite_or_none(r.get("accuracy"))) for r in runs]
    ref_pt = (finite_or_none(ref.get("score")), finite_or_none(ref.get("accuracy")))
    xs = [x for x, y in [*pts, ref_pt] if x is not None and y is not None]
    ys = [y for x, y in [*pts, ref_pt] if x is not None and y is not None]
    if floor is not None:
        ys.append(floor)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    left, right, top, bottom = 78, 24, 78, 64
    p = _Plot(
        ImageDraw.Draw(img),
        width,
        height,
        left,
        top,
        width - left - right,
        height - top - bottom,
        font(14),
        font(12),
    )
    label = _LABELS.get(metric, metric)
    p.draw.text((left, 10), f"Validation accuracy vs localization: {label}", fill=(20, 20, 20), font=font(16))
    if not xs:
        p.draw.text(
            (left, top + p.ph / 2),
            "No run has both an accuracy and a localization score to plot.",
            fill=(120, 120, 120),
            font=p.font,
        )
        return img
    _set_range(p, xs, ys)
    _draw_axes(p, label)
    if floor is not None:
        _draw_floor(p, floor)
    _draw_points(p, runs, pts, ref_pt)
    _draw_legend(p)
    return img


def _set_range(p: _Plot, xs: list[float], ys: list[float]) -> None:
    """The plotted ranges: the data plus 8 % on each side (a little around a single value)."""
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    xpad = (x_hi - x_lo) * 0.08 or max(abs(x_hi) * 0.05, 0.01)
    ypad = (y_hi - y_lo) * 0.08 or max(abs(y_hi) * 0.05, 0.01)
    p.x_lo, p.x_hi, p.y_lo, p.y_hi = x_lo - xpad, x_hi + xpad, y_lo - ypad, y_hi + ypad


def _draw_axes(p: _Plot, label: str) -> None:
    from ..report import nice_ticks

    draw, small = p.draw, p.small
    for t in nice_ticks(p.x_lo, p.x_hi):
        x, _ = p.px(t, p.y_lo)
        draw.line([(x, p.top), (x, p.top + p.ph)], fill=_GRID)
        text = f"{t:.4g}"
        draw.text((x - draw.textlength(text, font=small) / 2, p.top + p.ph + 6), text, fill=_AXIS, font=small)
    for t in nice_ticks(p.y_lo, p.y_hi):
        _, y = p.px(p.x_lo, t)
        draw.line([(p.left, y), (p.left + p.pw, y)], fill=_GRID)
        text = f"{t:.4g}"
        draw.text((p.left - 8 - draw.textlength(text, font=small), y - 7), text, fill=_AXIS, font=small)
    draw.rectangle([p.left, p.top, p.left + p.pw, p.top + p.ph], outline=_AXIS)
    xlabel = f"localization: {label} (higher is better)"
    x = p.left + p.pw / 2 - draw.textlength(xlabel, font=p.font) / 2
    draw.text((x, p.height - 28), xlabel, fill=_INK, font=p.font)
    draw.text((8, p.top - 44), "validation accuracy", fill=_INK, font=p.font)


def _draw_floor(p: _Plot, floor: float) -> None:
    """The accuracy floor of the rule, dashed."""
    _, y = p.px(p.x_lo, floor)
    x = p.left
    while x < p.left + p.pw:
        p.draw.line([(x, y), (min(x + 8, p.left + p.pw), y)], fill=_FLOOR, width=1)
        x += 14
    p.draw.text((p.left + 6, y + 2), f"accuracy floor {floor:.3f}", fill=_FLOOR, font=p.small)


def _draw_points(
    p: _Plot,
    runs: list[Mapping[str, Any]],
    pts: list[tuple[float | None, float | None]],
    ref_pt: tuple[float | None, float | None],
) -> None:
    """The Pareto front as a line, the reference as a square, one labelled dot per run (the recommended
    one ringed); labels of coincident points stack instead of overlapping."""
    draw = p.draw
    front = sorted((i for i, r in enumerate(runs) if r.get("pareto")), key=lambda i: pts[i][0])
    if len(front) > 1:
        draw.line([p.px(*pts[i]) for i in front], fill=_FRONT, width=2)
    if ref_pt[0] is not None and ref_pt[1] is not None:
        x, y = p.px(*ref_pt)
        draw.rectangle([x - 6, y - 6, x + 6, y + 6], outline=_GREY, width=2)
        draw.text((x + 9, y + 4), "reference", fill=_GREY, font=p.small)
    placed: list[tuple[float, float, float, float]] = []  # label boxes so far
    for i, r in enumerate(runs):
        if pts[i][0] is None or pts[i][1] is None:
            continue
        x, y = p.px(*pts[i])
        if r.get("recommended"):
            draw.ellipse([x - 11, y - 11, x + 11, y + 11], outline=_RECOMMENDED, width=3)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=_FRONT if r.get("pareto") else (150, 150, 150))
        text = str(r.get("tag", "")) + ("  (recommended)" if r.get("recommended") else "")
        tw = draw.textlength(text, font=p.small)
        tx = x + 13 if x + 13 + tw < p.left + p.pw - 4 else x - 13 - tw
        ty = y - 16
        while any(tx < b[2] and b[0] < tx + tw and ty < b[3] and b[1] < ty + 14 for b in placed):
            ty += 15
        placed.append((tx, ty, tx + tw, ty + 14))
        draw.text((tx, ty), text, fill=(20, 20, 20), font=p.small)


def _draw_legend(p: _Plot) -> None:
    """One row between the title and the plot, right-aligned: it never covers a point."""
    draw, small = p.draw, p.small
    entries = [("front", "Pareto front"), ("recommended", "recommended"), ("reference", "reference (no fine-tuning)")]
    widths = [20 + draw.textlength(text, font=small) for _, text in entries]
    x = p.left + p.pw - sum(widths) - 18 * (len(entries) - 1)
    y = p.top - 22
    for (kind, text), w in zip(entries, widths, strict=True):
        if kind == "front":
            draw.ellipse([x, y + 2, x + 10, y + 12], fill=_FRONT)
        elif kind == "recommended":
            draw.ellipse([x - 2, y, x + 12, y + 14], outline=_RECOMMENDED, width=3)
        else:
            draw.rectangle([x, y + 2, x + 10, y + 12], outline=_GREY, width=2)
        draw.text((x + 16, y), text, fill=_INK, font=small)
        x += w + 18


# ----------------------------------------------------------------------------------------------------
# index.html
# ----------------------------------------------------------------------------------------------------

_RUN_COLUMNS = [
    "run",
    "l1",
    "l2",
    "accuracy",
    "balanced accuracy",
    "share of oracle",
    "activation precision",
    "pointing game",
    "sparsity",
    "stability",
    "qualifies",
    "Pareto",
    "recommended",
]


def _run_row(name: str, r: Mapping[str, Any], ref_row: bool = False) -> list[Any]:
    """One row of the runs table (the reference row has no λ and no rule columns)."""
    rule: list[Any] = (
        ["—"] * 3 if ref_row else [bool(r.get("qualified")), bool(r.get("pareto")), "★" if r.get("recommended") else ""]
    )
    lams = ["—", "—"] if ref_row else [r.get("l1"), r.get("l2")]
    return [name, *lams, *(r.get(k) for k in SCORE_KEYS), *rule]


def _settings_rows(d: Mapping[str, Any]) -> list[list[Any]]:
    data = d.get("data") or {}
    cfg = d.get("config") or {}
    rule = d.get("rule") or {}
    return [
        ["data", data.get("source")],
        ["validation images", data.get("val_images")],
        ["with masks (scored)", data.get("explained_images")],
        ["epochs per run", cfg.get("epochs")],
        ["optimizer", cfg.get("optimizer")],
        ["lr", cfg.get("lr")],
        ["batch size", cfg.get("batch_size")],
        ["seed", cfg.get("seed")],
        ["devices", ", ".join(d.get("devices") or [])],
        ["tolerance", rule.get("tolerance")],
        ["accuracy floor", rule.get("accuracy_floor")],
    ]


def _verdict(d: Mapping[str, Any]) -> str:
    rec = d.get("recommended")
    if not rec:
        return "No run is recommended: none kept the validation accuracy within the tolerance."
    return (
        f"Recommended: {rec['tag']} (validation accuracy {pct(rec.get('accuracy'))}, "
        f"{d.get('localization')} {pct(rec.get('score'))}); its model is best.safetensors."
    )


def render_html(d: Mapping[str, Any], png: bytes) -> str:
    """``index.html`` of a ``sweep.json`` dict: self-contained (the plot is embedded as base64)."""
    import html

    from .. import report as R

    rows = [_run_row("reference", d.get("reference") or {}, True)]
    rows += [_run_row(str(r["tag"]), r) for r in d.get("runs") or []]
    b64 = base64.b64encode(png).decode("ascii")
    img = (
        f'<img src="data:image/png;base64,{b64}" '
        f'alt="{html.escape("validation accuracy against localization")}" width="760">'
    )
    sections = [
        R.section(
            "Recommendation",
            R.paragraph(_verdict(d)),
            R.paragraph("Rule: " + str((d.get("rule") or {}).get("text", "")), note=True),
        ),
        R.section(
            "Accuracy vs localization",
            R.figure(
                img,
                "Each point is one λ pair (its best epoch on the "
                "validation split); the Pareto front is connected, the reference is the starting model.",
            ),
        ),
        R.section("Runs", R.table(_RUN_COLUMNS, rows, caption="Validation split")),
        R.section("Settings", R.table(["setting", "value"], _settings_rows(d))),
    ]
    if d.get("notes"):
        sections.append(R.section("Notes", *[R.paragraph(str(n), note=True) for n in d["notes"]]))
    return R.html_page(
        "softcamify sweep",
        sections,
        subtitle=str(d.get("out_dir", "")),
        footer="softcamify sweep: short fine-tunes over a λ grid (docs/sweep.md).",
    )
