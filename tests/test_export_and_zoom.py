"""Issue 23's "Export bundle" on the Data & models page and issue 20's 1:1 view of the worst region on the Heatmaps
page, on the real demo model (``fitted``): the exported zip scores like the model, and the zoom is the image's own
pixels."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from core import workbench as wb
from tests.test_app import _errors, _no_exceptions, _page


def test_export_bundle_from_the_models_section(fitted, demo_root, tmp_path):
    at = _page("app.py", fitted).run()
    at.selectbox(key="models_pick").set_value(fitted.name).run()
    at.button(key="models_export").click().run(timeout=300)
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    data = next(v for k, v in at.session_state.filtered_state.items() if k.startswith("bundle::"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert f"{fitted.name}-bundle/manifest.json" in names
        zf.extractall(tmp_path)
    from core.bundle.runtime import load_bundle

    bundle = load_bundle(tmp_path / f"{fitted.name}-bundle")
    images = sorted(str(p) for p in (demo_root / "test").rglob("*.png"))[:4]
    got = bundle.score_paths(images).scores
    want = wb.load_model(fitted).score_paths(images, cache=None).scores
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_heatmaps_page_shows_the_worst_region_at_one_to_one(fitted, demo_root):
    at = _page("app_pages/4_Heatmaps.py", fitted).run()
    _no_exceptions(at)
    zoom = [im for im in at.get("imgs") if "worst region at 1:1" in str(im.proto)]
    assert zoom, "the 1:1 view is drawn"
    det = wb.load_model(fitted)
    image = sorted((demo_root / "test").rglob("*.png"))[0]
    detail = wb.score_one(det, image)
    crop, (y0, x0, y1, x1) = wb.worst_region_view(image, detail.raw_map, det.normalisation)
    assert crop.shape[:2] == (y1 - y0, x1 - x0), "one image pixel per screen pixel"
