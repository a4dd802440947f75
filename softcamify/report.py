"""A tiny self-contained HTML report writer (no template engine, no JavaScript, stdlib only).

Every helper returns an HTML fragment (a ``str``); :func:`html_page` wraps fragments into one page with
inline CSS, and :func:`write_report` writes it atomically. All text passed in (titles, captions, table
cells, class names, alt text) is escaped with :func:`html.escape`; only the fragments produced by these
helpers are inserted as HTML. Images are referenced by paths relative to the report file, so a report
folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import html
import math
import numbers
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import UsageError
from .io import write_text_atomic

__all__ = [
    "figure",
    "format_value",
    "gallery",
    "html_page",
    "image_tag",
    "line_chart_svg",
    "nice_ticks",
    "paragraph",
    "section",
    "table",
    "write_report",
]

MISSING = "\u2014"  # em dash, shown for None / nan

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1f;
  background: #fafafa; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.6em; margin: 0 0 8px; }
h2 { font-size: 1.2em; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
section { margin-bottom: 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; background: #fff; font-size: 0.92em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px 16px 16px 0; vertical-align: top; }
figcaption { font-size: 0.88em; color: #555; margin-top: 4px; }
img { max-width: 100%; height: auto; image-rendering: auto; }
svg.chart { background: #fff; border: 1px solid #e3e3e3; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; }
.card.ok { border-left: 4px solid #2e7d32; }
.card.bad { border-left: 4px solid #c62828; }
.card .title { font-weight: 600; word-break: break-all; margin-bottom: 6px; }
.card .pred { font-size: 0.92em; margin: 6px 0; }
.card .overlays { display: flex; flex-wrap: wrap; gap: 6px; }
.card .overlays figure { margin: 0; }
.note { color: #555; font-size: 0.9em; }
footer { color: #777; font-size: 0.85em; margin-top: 32px; }
"""

# Colour-blind-friendly palette (Okabe–Ito) for chart series.
_PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """Text for one table cell: floats to 4 significant digits, ``None``/``nan`` as an em dash, bools yes/no."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isnan(f):
            return MISSING
        if math.isinf(f):
            return "\u221e" if f > 0 else "\u2212\u221e"
        return f"{f:.4g}"
    return str(value)


def format_fixed(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (scientific outside 1e-3 … 1e4), ``None``/``nan`` as an em dash:
    the terminal summaries of ``finetune`` and ``demo``."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if value != value:
            return MISSING
        return f"{value:.{digits}f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and type(value).__name__ not in ("bool", "bool_")
    )


def html_page(title: str, sections: Iterable[str], subtitle: str | None = None, footer: str | None = None) -> str:
    """A complete, self-contained HTML5 page (inline CSS, no scripts) with ``sections`` (HTML fragments)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="note">{_esc(subtitle)}</p>')
    parts.extend(sections)
    if footer:
        parts.append(f"<footer>{_esc(footer)}</footer>")
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def section(title: str, *parts: str) -> str:
    """``<section>`` with an escaped ``<h2>`` title followed by HTML fragments ``parts``."""
    return "\n".join([f"<section><h2>{_esc(title)}</h2>", *parts, "</section>"])


def paragraph(text: str, note: bool = False) -> str:
    """An escaped ``<p>`` (``note=True``: small grey text)."""
    cls = ' class="note"' if note else ""
    return f"<p{cls}>{_esc(text)}</p>"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], caption: str | None = None) -> str:
    """An HTML table; every header and cell is escaped, numbers are right-aligned (see :func:`format_value`)."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if _is_number(v) else ""
            cells.append(f"<td{cls}>{_esc(format_value(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _relative_src(rel_path: str | os.PathLike) -> str:
    raw = os.fspath(rel_path)
    if not raw:
        raise UsageError("An image path in the report is empty.")
    posix = raw.replace("\\", "/")
    if (
        PurePosixPath(posix).is_absolute()
        or PureWindowsPath(raw).is_absolute()
        or PureWindowsPath(raw).drive
        or _SCHEME.match(posix)
    ):
        raise UsageError(f"Image path {raw!r} must be relative to the report file, not absolute or a URL.")
    # Percent-encode only what would break a URL ('#', '?', '%', spaces, non-ASCII); plain names pass as is.
    return urllib.parse.quote(posix, safe="/-._~!$&'()*+,;=@")


def image_tag(rel_path: str | os.PathLike, alt: str, width: int | None = None) -> str:
    """``<img>`` for an image at ``rel_path`` (relative to the report; ``\\`` becomes ``/``), escaped ``alt``.

    Absolute paths and URLs raise :class:`~softcamify.errors.UsageError`. Characters that would break a URL
    (``#``, ``?``, ``%``, spaces, non-ASCII) are percent-encoded; ordinary file names are kept as given.
    """
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{_esc(_relative_src(rel_path))}" alt="{_esc(alt)}"{w} loading="lazy">'


def figure(content: str, caption: str | None = None) -> str:
    """``<figure>`` around an HTML fragment (from :func:`image_tag` or :func:`line_chart_svg`) with an
    escaped caption."""
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{content}{cap}</figure>"


# --------------------------------------------------------------------------------------------------------
# Inline SVG line chart
# --------------------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick positions (1-2-5 steps) covering [lo, hi] (``hi > lo``); one within rounding of 0 is 0."""
    span = hi - lo
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _fnum(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def line_chart_svg(
    series: Mapping[str, Sequence[float | None]],
    x_label: str,
    y_label: str,
    width: int = 480,
    height: int = 240,
    x_values: Sequence[float] | None = None,
    title: str | None = None,
) -> str:
    """An inline ``<svg>`` line chart (no JavaScript), e.g. train/val loss per epoch.

    Each series is plotted against ``x_values`` (default 1, 2, …, i.e. epochs); ``None``/``nan`` values
    leave a gap. Axes get round ticks, the series a legend (Okabe–Ito colours). The result is well-formed
    XML (``xml.etree`` parses it) and can be embedded directly in the page.
    """
    if width < 160 or height < 120:
        raise UsageError(f"A chart needs at least 160×120 pixels, got {width}×{height}.")
    left, right, top, bottom = 62, 14, 30 if series else 14, 44
    pw, ph = width - left - right, height - top - bottom

    pts = _chart_points(series, x_values)
    finite = [p for row in pts.values() for p in row if p is not None]

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>{_esc(title or f'{y_label} vs {x_label}')}</title>",
    ]
    if not finite:
        out.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" fill="#777">no data</text>')
        out.append("</svg>")
        return "\n".join(out)

    frame, xt, yt = _chart_frame(finite, left, top, pw, ph)
    out.extend(_chart_axes(frame, xt, yt, x_label, y_label, height))
    out.extend(_chart_series(frame, pts))
    out.append("</svg>")
    return "\n".join(out)


def _chart_points(
    series: Mapping[str, Sequence[float | None]], x_values: Sequence[float] | None
) -> dict[str, list[tuple[float, float] | None]]:
    """:func:`line_chart_svg`'s (x, y) points per series; ``None`` where a value is missing or not finite."""
    pts: dict[str, list[tuple[float, float] | None]] = {}
    for name, ys in series.items():
        xs = list(x_values) if x_values is not None else list(range(1, len(ys) + 1))
        if len(xs) < len(ys):
            raise UsageError(f"Series {name!r} has {len(ys)} values but only {len(xs)} x values were given.")
        row: list[tuple[float, float] | None] = []
        for x, y in zip(xs, ys, strict=False):  # extra x values are ignored
            ok = y is not None and math.isfinite(float(y)) and math.isfinite(float(x))
            row.append((float(x), float(y)) if ok else None)  # type: ignore[arg-type]
        pts[name] = row
    return pts


@dataclass(frozen=True)
class _ChartFrame:
    """A chart's plot area (pixels) and the data ranges it shows."""

    left: int
    top: int
    pw: int
    ph: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def sx(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def sy(self, y: float) -> float:
        return self.top + (1.0 - (y - self.y_lo) / (self.y_hi - self.y_lo)) * self.ph


def _chart_frame(
    finite: list[tuple[float, float]], left: int, top: int, pw: int, ph: int
) -> tuple[_ChartFrame, list[float], list[float]]:
    """The data ranges (padded when flat, widened to the ticks) and the x and y ticks."""
    x_lo, x_hi = min(p[0] for p in finite), max(p[0] for p in finite)
    y_lo, y_hi = min(p[1] for p in finite), max(p[1] for p in finite)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    if y_hi == y_lo:
        pad = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    yt = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, yt[0]), max(y_hi, yt[-1])
    xt = nice_ticks(x_lo, x_hi, target=min(8, max(2, int(x_hi - x_lo)))) if x_hi - x_lo >= 1 else [x_lo, x_hi]
    return _ChartFrame(left, top, pw, ph, x_lo, x_hi, y_lo, y_hi), xt, yt


def _chart_axes(
    f: _ChartFrame, xt: Sequence[float], yt: Sequence[float], x_label: str, y_label: str, height: int
) -> list[str]:
    """Grid, axes, ticks and axis labels."""
    left, top, pw, ph = f.left, f.top, f.pw, f.ph
    out = []
    for t in yt:
        y = f.sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#333">{_esc(format_value(t))}</text>')
    for t in xt:
        if f.x_lo - 1e-9 <= t <= f.x_hi + 1e-9:
            x = f.sx(t)
            out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#333"/>')
            out.append(
                f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#333">{_esc(format_value(t))}</text>'
            )
    out.append(f'<polyline points="{left},{top} {left},{top + ph} {left + pw},{top + ph}" fill="none" stroke="#333"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#111">{_esc(x_label)}</text>'
    )
    cy = top + ph / 2
    out.append(
        f'<text x="14" y="{cy:.1f}" text-anchor="middle" fill="#111" '
        f'transform="rotate(-90 14 {cy:.1f})">{_esc(y_label)}</text>'
    )
    return out


def _chart_series(f: _ChartFrame, pts: Mapping[str, list[tuple[float, float] | None]]) -> list[str]:
    """Each series as polylines (gaps at missing values; a lone point as a dot), and the legend."""
    out = []
    lx = f.left
    for i, (name, row) in enumerate(pts.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        segments: list[list[tuple[float, float]]] = [[]]
        for p in row:
            if p is None:
                if segments[-1]:
                    segments.append([])
            else:
                segments[-1].append(p)
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0]
                out.append(f'<circle cx="{f.sx(x):.1f}" cy="{f.sy(y):.1f}" r="2.5" fill="{colour}"/>')
            elif seg:
                coords = " ".join(f"{f.sx(x):.1f},{f.sy(y):.1f}" for x, y in seg)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        ly = f.top - 14
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{lx + 22}" y="{f.top - 10}" fill="#111">{_esc(name)}</text>')
        lx += 30 + 7 * len(str(name))
    return out


# --------------------------------------------------------------------------------------------------------
# Gallery of predictions
# --------------------------------------------------------------------------------------------------------


def _overlay_items(overlays: Any) -> list[tuple[str, str]]:
    if not overlays:
        return []
    if isinstance(overlays, Mapping):
        return [(str(src), str(cap)) for cap, src in overlays.items()]
    items = []
    for ov in overlays:
        if isinstance(ov, Mapping):
            if "src" not in ov:
                raise UsageError("Each gallery overlay needs a 'src' (relative image path).")
            items.append((ov["src"], str(ov.get("caption", ov.get("label", "")))))
        else:
            items.append((ov, ""))
    return items


def gallery(items: Sequence[Mapping[str, Any]], thumb_width: int = 224, overlay_width: int = 112) -> str:
    """A grid of cards, one per image. Recognised keys of each item (all optional):

    * ``title``: heading (e.g. the file name);
    * ``image``: relative path of the thumbnail;
    * ``prediction`` (class name) and ``probability`` (float, shown with 4 significant digits);
    * ``label``: the true class; when given the card is marked correct (green) or wrong (red);
    * ``overlays``: per-class overlays, a list of ``{"src": path, "caption": text}`` (or paths), or a
      mapping ``caption -> path``;
    * ``note``: a line of extra text.

    Other keys are ignored; everything is escaped.
    """
    if not items:
        return '<p class="note">No images.</p>'
    cards = ['<div class="gallery">']
    for it in items:
        label = it.get("label")
        pred = it.get("prediction")
        cls = "card"
        if label is not None and pred is not None:
            cls += " ok" if str(label) == str(pred) else " bad"
        title = it.get("title")
        parts = [f'<div class="{cls}">']
        if title is not None:
            parts.append(f'<div class="title">{_esc(title)}</div>')
        if it.get("image"):
            parts.append(image_tag(it["image"], alt=str(title or "input image"), width=thumb_width))
        if pred is not None or it.get("probability") is not None:
            text = f"predicted <b>{_esc(pred if pred is not None else MISSING)}</b>"
            if it.get("probability") is not None:
                text += f" (p = {_esc(format_value(it['probability']))})"
            if label is not None:
                text += f", true <b>{_esc(label)}</b>"
            parts.append(f'<div class="pred">{text}</div>')
        ovs = _overlay_items(it.get("overlays"))
        if ovs:
            parts.append('<div class="overlays">')
            for src, cap in ovs:
                parts.append(figure(image_tag(src, alt=cap or "overlay", width=overlay_width), cap or None))
            parts.append("</div>")
        if it.get("note"):
            parts.append(f'<div class="note">{_esc(it["note"])}</div>')
        parts.append("</div>")
        cards.append("\n".join(parts))
    cards.append("</div>")
    return "\n".join(cards)


def write_report(path: str | os.PathLike, html_text: str, force: bool = False) -> Path:
    """Write the page atomically (UTF-8); refuses to overwrite an existing file unless ``force``."""
    return write_text_atomic(path, html_text, force=force)
