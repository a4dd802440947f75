"""Other libraries' error text made fit for one line of a note or message (no torch import)."""

from __future__ import annotations

import re

__all__ = ["clean_error_text", "strip_ansi"]

# Terminal escape sequences: CSI (colours such as torch's "\x1b[96m…\x1b[0m", cursor moves; 7- and 8-bit),
# OSC (titles, hyperlinks) and other escapes (ESC ( B …); then any other control character but tab and newline.
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_EXC_CLASS = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:\s*")
_SUMMARY = "## Exception summary"  # torch.onnx's dynamo exporter: headline, advice, then this and the causes


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves) and other control characters."""
    return _CONTROL.sub("", _ANSI.sub("", str(text)))


def clean_error_text(error: BaseException | str, limit: int = 240) -> str:
    """One short, plain line for a note or message from an exception (or its text).

    Escape sequences are removed and only the first non-empty line is kept (whitespace collapsed, at
    most ``limit`` characters). For torch.onnx's multi-paragraph errors ("Failed to export the model
    with torch.export. This is step 1/3 … Next steps: … ## Exception summary …") that line is the
    headline followed by the root cause from the summary.
    """
    fallback = type(error).__name__ if isinstance(error, BaseException) else ""
    lines = [ln.strip() for ln in strip_ansi(str(error)).splitlines() if ln.strip()]
    if not lines:
        return fallback
    line = lines[0]
    if _SUMMARY in lines and lines.index(_SUMMARY) + 1 < len(lines):
        i = lines.index(_SUMMARY) + 1
        m = _EXC_CLASS.match(lines[i])
        kind, cause = (f"{m.group(1)}: ", lines[i][m.end() :]) if m else ("", lines[i])
        if cause.endswith(":") and i + 1 < len(lines) and lines[i + 1].startswith("- "):
            cause = lines[i + 1][2:]  # "Found the following conflicts …:" — the first of them says more
        cause = kind + cause
        headline = re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")
        line = f"{headline}: {cause}"
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
