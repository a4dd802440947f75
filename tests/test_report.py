"""The HTML report writer: escaping, tables, inline SVG, relative image paths, atomic writes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from softcamify import report as H
from softcamify.errors import OutputError, UsageError

HOSTILE = '<script>alert("x")</script>&'


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img_src: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(html_text: str) -> _Collector:
    p = _Collector()
    p.feed(html_text)
    p.close()
    return p


def test_hostile_strings_are_escaped_everywhere():
    parts = [
        H.table([HOSTILE], [[HOSTILE, 1.0]], caption=HOSTILE),
        H.figure(H.image_tag("a.png", alt=HOSTILE), caption=HOSTILE),
        H.section(HOSTILE, H.paragraph(HOSTILE)),
        H.line_chart_svg({HOSTILE: [1.0, 2.0]}, x_label=HOSTILE, y_label=HOSTILE),
        H.gallery([{"title": HOSTILE, "prediction": HOSTILE, "label": HOSTILE, "note": HOSTILE}]),
    ]
    page = H.html_page(HOSTILE, parts, subtitle=HOSTILE, footer=HOSTILE)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    parsed = _parse(page)
    assert "script" not in parsed.tags
    assert any(HOSTILE in t for t in parsed.text)  # shown literally


def test_table_renders_values():
    html_text = H.table(
        ["name", "value", "n", "ok", "missing", "nan"],
        [["auc", 0.123456789, 42, True, None, float("nan")], ["big", 12345.678, 0, False, "—", 1e-7]],
        caption="Metrics",
    )
    assert "<caption>Metrics</caption>" in html_text
    assert ">0.1235<" in html_text and ">42<" in html_text and ">1.235e+04<" in html_text
    assert ">yes<" in html_text and ">no<" in html_text and ">1e-07<" in html_text
    assert html_text.count(">\u2014<") == 3  # None, nan, and the literal dash
    assert '<td class="num">0.1235</td>' in html_text


def test_format_value():
    assert H.format_value(None) == "\u2014"
    assert H.format_value(math.nan) == "\u2014"
    assert H.format_value(2 / 3) == "0.6667"
    assert H.format_value(7) == "7"
    assert H.format_value(math.inf) == "\u221e"
    np = pytest.importorskip("numpy")
    assert H.format_value(np.float32(0.5)) == "0.5" and H.format_value(np.int64(3)) == "3"
    assert H.format_value(np.bool_(True)) == "yes"


def test_svg_parses_as_xml():
    svg = H.line_chart_svg(
        {"train loss": [1.0, 0.7, 0.5, None, 0.3], "val loss": [1.1, 0.9, float("nan"), 0.8, 0.85]},
        x_label="epoch",
        y_label="loss",
        title="Loss & accuracy <per epoch>",
    )
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall("s:polyline", ns)) >= 3  # axes + at least one segment per series
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "epoch" in texts and "loss" in texts and "train loss" in texts


@pytest.mark.parametrize(
    "series",
    [{}, {"a": []}, {"a": [None, float("nan")]}, {"a": [3.0]}, {"a": [2.0, 2.0, 2.0]}, {"a": [0.001, 1e5]}],
)
def test_svg_edge_cases_parse(series):
    ET.fromstring(H.line_chart_svg(series, "x", "y"))


def test_svg_x_values_and_bad_sizes():
    ET.fromstring(H.line_chart_svg({"acc": [0.5, 0.6]}, "step", "acc", x_values=[100, 200, 300]))
    with pytest.raises(UsageError):
        H.line_chart_svg({"acc": [0.5, 0.6, 0.7]}, "step", "acc", x_values=[1, 2])
    with pytest.raises(UsageError):
        H.line_chart_svg({"acc": [0.5]}, "x", "y", width=10)


def test_image_tag_requires_relative_paths():
    assert 'src="maps/img 1.png"' not in H.image_tag("maps/img 1.png", "x")  # space is encoded
    assert 'src="maps/a.png"' in H.image_tag("maps\\a.png", "x", width=100)
    assert 'width="100"' in H.image_tag("a.png", "x", width=100)
    for bad in ("/etc/passwd.png", "C:\\x.png", "http://example.com/a.png", "javascript:alert(1)", ""):
        with pytest.raises(UsageError):
            H.image_tag(bad, "x")


def test_written_page_parses_and_img_src_are_relative(tmp_path):
    thumbs = ["images/cat.png", "images/dog_01.png"]
    overlays = {"cat": "overlays/dog_01_cat.png", "dog": "overlays/dog_01_dog.png"}
    items = [
        {"title": "cat.png", "image": thumbs[0], "prediction": "cat", "probability": 0.91234, "label": "cat"},
        {
            "title": "dog_01.png",
            "image": thumbs[1],
            "prediction": "cat",
            "probability": 0.55,
            "label": "dog",
            "overlays": overlays,
        },
    ]
    fig = H.figure(H.image_tag("colorbar.png", "colour scale"), "Evidence scale")
    chart = H.line_chart_svg({"loss": [1.0, 0.5]}, "epoch", "loss")
    page = H.html_page("Report", [H.section("Gallery", H.gallery(items)), fig, chart])
    out = H.write_report(tmp_path / "report.html", page)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text and "<script" not in text
    parsed = _parse(text)
    assert sorted(parsed.img_src) == sorted([*thumbs, *overlays.values(), "colorbar.png"])
    assert 'class="card ok"' in text and 'class="card bad"' in text
    assert "0.9123" in text
    with pytest.raises(OutputError):
        H.write_report(tmp_path / "report.html", page)
    H.write_report(tmp_path / "report.html", "<p>new</p>", force=True)
    assert out.read_text(encoding="utf-8") == "<p>new</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_gallery_empty_and_overlay_list():
    assert "No images" in H.gallery([])
    html_text = H.gallery([{"overlays": [{"src": "a.png", "caption": "class a"}, "b.png"]}])
    assert _parse(html_text).img_src == ["a.png", "b.png"]
    with pytest.raises(UsageError):
        H.gallery([{"overlays": [{"caption": "no src"}]}])
