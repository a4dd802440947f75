"""softcamify.volumes.write: evidence NIfTI in the scan's geometry, tri-planar PNG, the HTML slice viewer."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from softcamify.errors import InputError, OutputError
from softcamify.volumes import VolumeConfig, VolumeGeometry, evidence_to_scan, read_volume, resample
from softcamify.volumes.write import (
    evidence_file_bytes,
    slice_viewer_html,
    strongest_voxel,
    triplanar,
    write_evidence,
    write_slice_viewer,
    write_triplanar,
    write_volume_explanation,
)

nib = pytest.importorskip("nibabel")

# a reordered, flipped, anisotropic scan geometry: file axis 0 runs to P (2 mm), 1 to S (1.5 mm), 2 to R (1 mm)
AFFINE = np.array(
    [
        [0.0, 0.0, 1.0, -10.0],
        [-2.0, 0.0, 0.0, 40.0],
        [0.0, 1.5, 0.0, -20.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (20, 16, 24)


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(40, 10, size=SHAPE).astype(np.float32)
    lesion = np.zeros(SHAPE, bool)
    lesion[12:15, 3:6, 17:21] = True
    data[lesion] = 250.0
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return read_volume(path), lesion


def _evidence(vol, lesion):
    """Coarse evidence on a preprocessed 16³ grid (strides of 4) peaking over the lesion, in scan geometry."""
    cfg = VolumeConfig(target_shape=(16, 16, 16), window=(-1000, 400))
    coarse = resample(lesion.astype(np.float32), (4, 4, 4))
    return evidence_to_scan(coarse, vol.geometry, cfg)


def test_evidence_nifti_in_the_input_geometry(scan, tmp_path):
    vol, lesion = scan
    ev = _evidence(vol, lesion)
    out = write_evidence(tmp_path / "evidence.nii.gz", ev, vol.geometry)
    img = nib.load(str(out))
    assert img.shape == SHAPE
    np.testing.assert_array_equal(img.affine, vol.affine)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(AFFINE)
    back = np.asarray(img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(back, ev)
    assert back[lesion].mean() > 3 * back[~lesion].mean()  # the values are where the lesion is
    peak = np.array(strongest_voxel(back))
    centre = np.argwhere(lesion).mean(axis=0)
    assert np.abs(peak - centre).max() <= 3  # within a coarse cell's reach of the lesion
    # reproducible bytes, K maps as a 4-D file, npy by ending
    assert evidence_file_bytes(ev, vol.geometry) == evidence_file_bytes(ev, vol.geometry)
    write_evidence(tmp_path / "k.nii", np.stack([ev, -ev]), vol.geometry)
    k = nib.load(str(tmp_path / "k.nii"))
    assert k.shape == (*SHAPE, 2)
    np.testing.assert_array_equal(np.asarray(k.dataobj)[..., 1], -ev)
    write_evidence(tmp_path / "e.npy", ev, vol.geometry)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), ev)


def test_evidence_writer_refuses_other_shapes_and_overwrites(scan, tmp_path):
    vol, lesion = scan
    ev = _evidence(vol, lesion)
    with pytest.raises(InputError, match="evidence_to_scan"):
        write_evidence(tmp_path / "x.nii.gz", ev[:-1], vol.geometry)
    assert not any(tmp_path.glob("x.nii.gz*")) and not any(tmp_path.glob(".x.nii.gz*"))
    write_evidence(tmp_path / "e.nii.gz", ev, vol.geometry)
    with pytest.raises(OutputError, match="already exists"):
        write_evidence(tmp_path / "e.nii.gz", ev * 0, vol.geometry)
    np.testing.assert_array_equal(nib.load(str(tmp_path / "e.nii.gz")).get_fdata(), ev)  # untouched
    write_evidence(tmp_path / "e.nii.gz", ev * 0, vol.geometry, force=True)
    assert nib.load(str(tmp_path / "e.nii.gz")).get_fdata().max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.nii.gz", "scan.nii.gz"]  # no temporaries left


def test_triplanar_slices_through_the_strongest_voxel(scan, tmp_path):
    vol, lesion = scan
    H = 128
    ev = _evidence(vol, lesion)
    pic = triplanar(vol.array, ev, vol.geometry, window=(-160, 240), height=H)
    assert pic.mode == "RGB" and pic.height == 36 + H + 40 + 8
    # physical aspect ratios: axial is R (24·1 mm) wide and A (20·2 mm) high, coronal R wide and S (16·1.5 mm)
    # high, sagittal A wide and S high; panels H px high, with 8 px gaps around them
    widths = [round(H * 24 / 40), round(H * 24 / 24), round(H * 40 / 24)]  # axial, coronal, sagittal
    assert pic.width == sum(widths) + 4 * 8
    plain = triplanar(vol.array, ev, vol.geometry, window=(-160, 240), height=H, alpha=0.0)
    diff = np.asarray(pic).astype(int) - np.asarray(plain).astype(int)
    redder = (diff[..., 0] - diff[..., 2]) > 20  # positive evidence drawn in red over the scan
    x = 8
    for w in widths:  # in every panel, as the three slices cross at the strongest voxel
        assert redder[36 : 36 + H, x : x + w].sum() > 5
        x += w + 8
    assert not redder[:36].any() and not redder[36 + H :].any()
    out = write_triplanar(tmp_path / "tri.png", pic)
    assert Image.open(out).size == pic.size
    with pytest.raises(OutputError):
        write_triplanar(tmp_path / "tri.png", pic)


def test_triplanar_radiological_orientation():
    """A bright voxel at the patient's right, anterior, superior corner lands top-left in the axial and
    coronal views (right on the left) and top-left in the sagittal view (anterior on the left)."""
    g = VolumeGeometry((8, 8, 8), np.eye(4), (1.0, 1.0, 1.0))  # RAS
    scan = np.zeros((8, 8, 8), np.float32)
    ev = np.zeros((8, 8, 8), np.float32)
    ev[7, 7, 7] = 1.0
    pic = np.asarray(triplanar(scan, ev, g, height=16, alpha=1.0)).astype(int)
    panel = pic[36 : 36 + 16]
    for x in (8, 8 + 16 + 8, 8 + 2 * (16 + 8)):
        tile = panel[:, x : x + 16]
        red = tile[..., 0] - tile[..., 2]
        r, c = np.unravel_index(np.argmax(red), red.shape)
        assert r < 4 and c < 4, (x, r, c)


def test_slice_viewer_is_self_contained(scan, tmp_path):
    vol, lesion = scan
    ev = _evidence(vol, lesion)
    page = slice_viewer_html(vol.array, ev, vol.geometry, title="lesion", window=(-160, 240), height=48, max_slices=8)
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page
    assert not re.search(r"(src|href)=\"(https?:|//)", page)  # no network
    data = json.loads(re.search(r'id="softcamify-slices">(.*?)</script>', page, re.S).group(1))
    assert set(data) == {"axial", "coronal", "sagittal"}
    # slices along R (file axis 2: 24), A (file axis 0: 20), S (file axis 1: 16)
    assert (data["sagittal"]["count"], data["coronal"]["count"], data["axial"]["count"]) == (24, 20, 16)
    for view, d in data.items():
        assert len(d["index"]) <= 9 and len(d["plain"]) == len(d["overlay"]) == len(d["index"])
        png = Image.open(io.BytesIO(base64.b64decode(d["overlay"][0].split(",", 1)[1])))
        assert png.height == 48, view
        slider = re.search(rf'id="slider-{view}" min="0" max="(\d+)" value="(\d+)"', page)
        assert int(slider.group(1)) == len(d["index"]) - 1
    out = write_slice_viewer(tmp_path / "viewer.html", page)
    assert out.read_text(encoding="utf-8") == page
    with pytest.raises(OutputError):
        write_slice_viewer(tmp_path / "viewer.html", page)


def test_slice_viewer_script_runs(scan):
    """The page's script in node with a stand-in DOM: moving a slider shows that slice, the switch hides the
    overlay."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    vol, lesion = scan
    page = slice_viewer_html(vol.array, _evidence(vol, lesion), vol.geometry, height=24, max_slices=6)
    payload = re.search(r'id="softcamify-slices">(.*?)</script>', page, re.S).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    starts = {v: re.search(rf'id="slider-{v}" min="0" max="\d+" value="(\d+)"', page).group(1) for v in
              ("axial", "coronal", "sagittal")}  # fmt: skip
    harness = f"""
const els = {{}};
function el(id) {{
  if (!els[id]) els[id] = {{id, value: "0", src: "", textContent: "", checked: true, handlers: {{}},
    addEventListener(t, f) {{ this.handlers[t] = f; }}}};
  return els[id];
}}
el("softcamify-slices").textContent = {json.dumps(payload)};
const starts = {json.dumps(starts)};
for (const v in starts) el("slider-" + v).value = starts[v];
globalThis.document = {{ getElementById: el }};
{script}
const data = JSON.parse(el("softcamify-slices").textContent);
const out = {{start: el("img-axial").src === data.axial.overlay[Number(starts.axial)]}};
el("slider-axial").value = "2"; el("slider-axial").handlers.input();
out.moved = el("img-axial").src === data.axial.overlay[2];
out.label = el("label-axial").textContent;
el("softcamify-overlay").checked = false; el("softcamify-overlay").handlers.change();
out.plain = el("img-coronal").src === data.coronal.plain[Number(starts.coronal)];
console.log(JSON.stringify(out));
"""
    r = subprocess.run([node, "-e", harness], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(payload.replace("<\\/", "</"))
    out = json.loads(r.stdout)
    assert out == {
        "start": True,
        "moved": True,
        "label": f"slice {data['axial']['index'][2]} of {data['axial']['count']}",
        "plain": True,
    }


def test_write_volume_explanation_checks_every_destination_first(scan, tmp_path):
    vol, lesion = scan
    ev = _evidence(vol, lesion)
    (tmp_path / "case_lesion.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="case_lesion.png already exists"):
        write_volume_explanation(tmp_path / "case_lesion", vol, ev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_lesion.png", "scan.nii.gz"]  # nothing written
    out = write_volume_explanation(tmp_path / "case_lesion", vol, ev, title="lesion", window=(-160, 240), force=True)
    assert out.evidence.name == "case_lesion.nii.gz" and out.viewer is not None and out.viewer.suffix == ".html"
    np.testing.assert_array_equal(nib.load(str(out.evidence)).affine, vol.affine)
    assert Image.open(out.triplanar).size[1] == 36 + 192 + 40 + 8
    assert "softcamify-slices" in out.viewer.read_text(encoding="utf-8")
