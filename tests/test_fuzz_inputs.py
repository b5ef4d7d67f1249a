"""Bad inputs through every entry point (fast subset of benchmarks/fuzz_inputs.py): a clear message that names
the file, the good files still processed, and no other exception ("crash")."""

from __future__ import annotations

import pytest

from tests import fuzz_cases as F


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tiny(work):
    """PatchCore (coreset 5 %) fitted once on 10 generated 48 px normals, saved to a folder."""
    det = F.tiny_model(work / "model")
    return det, work / "model"


def _assert_clean(report: F.FuzzReport, min_tried: int) -> None:
    t = report.totals()
    crashes = "\n".join(f"{o.entry}/{o.kind} {o.name!r}: {o.message[:300]}" for o in report.crashes)
    assert not report.crashes, f"{len(report.crashes)} crash(es):\n{crashes}"
    assert t["tried"] >= min_tried


def test_generator_covers_the_kinds():
    cases = F.image_cases(1)
    assert len({c.kind for c in cases}) >= 20
    assert all(isinstance(c.data, bytes) for c in cases)
    assert F.image_cases(2, seed=3)[5].data == F.image_cases(2, seed=3)[5].data  # deterministic


def test_upload_scoring(tiny):
    det, _ = tiny
    report = F.FuzzReport()
    F.run_uploads(report, det, F.image_cases(2))
    _assert_clean(report, 2 * len(F.IMAGE_KINDS))
    by = {(r["kind"]): r for r in report.by_kind()}
    assert by["bomb_header"]["rejected"] == by["bomb_header"]["tried"]
    assert by["rgba"]["accepted"] == by["rgba"]["tried"]


def test_upload_size_limit(tiny):
    from core.workbench import score_uploads

    det, _ = tiny
    cases = F.image_cases(1, kinds=["cmyk_jpeg", "rgba"])
    big = max(len(c.data) for c in cases)
    res = score_uploads(det, [(c.name, c.data) for c in cases] + [("big file.png", b"\0" * (big + 1))], max_bytes=big)
    assert [r.ok for r in res] == [True, True, False]
    assert "big file.png" in res[2].error and "limit" in res[2].error


def test_score_paths_and_readers(tiny, work):
    det, _ = tiny
    report = F.FuzzReport()
    cases = F.image_cases(1, seed=5)
    F.run_score_paths(report, det, work / "paths", cases)
    F.run_read_image(report, work / "read", cases)
    _assert_clean(report, 3 * len(cases))


def test_mask_of_wrong_size_is_named(work):
    from core.data import read_mask
    from core.errors import DatasetError

    p = F.write_png(work / "masks" / "m_mask.png", F.good_images(1)[0][:, :, 0])
    with pytest.raises(DatasetError, match="m_mask.png"):
        read_mask(p, shape=(10, 10))


def test_datasets_index_and_fit(work):
    report = F.FuzzReport()
    cases = F.dataset_cases(work / "datasets")
    F.run_index(report, cases)
    fit_cases = [c for c in cases if c.kind in {"no_train_good", "empty_train_good", "all_train_corrupt",
                                                "mixed_bad_train", "symlink_loop", "empty_folder", "unicode_dataset"}]
    (work / "models").mkdir(exist_ok=True)
    F.run_fit(report, fit_cases, work / "models")
    _assert_clean(report, len(cases) + len(fit_cases))
    mixed = [o for o in report.outcomes if o.entry == "fit" and o.kind == "mixed_bad_train"]
    assert mixed and mixed[0].result == "accepted"  # fitting went on with the good images


def test_zips(work, monkeypatch):
    from core.workbench import zip_uploads

    monkeypatch.setattr(zip_uploads, "MAX_UNZIPPED_BYTES", 2_000_000)
    report = F.FuzzReport()
    F.run_zips(report, F.zip_cases(1, unzipped_limit=2_000_000), work / "up" / "uploads")
    _assert_clean(report, 10)
    assert not (work / "evil.png").exists() and not (work / "up" / "evil.png").exists()


def test_bad_model_folders(tiny, work):
    _, good = tiny
    report = F.FuzzReport()
    F.run_models(report, good, work / "bad_models")
    _assert_clean(report, 2 * len(F.MODEL_KINDS))
    assert all(o.result == "rejected" for o in report.outcomes if o.entry == "load_model")


def test_cli_score_and_fit(tiny, work):
    _, model = tiny
    folder = work / "cli_inputs"
    F.write_cases(folder, F.image_cases(1, kinds=["zero_byte", "text_as_image", "bomb_header", "rgba"]))
    report = F.FuzzReport()
    F.run_cli(report, ["score", str(model), str(folder), "--csv", str(work / "o.csv")], "cli_score", str(folder))
    F.run_cli(report, ["score", str(work / "bad_models_nope"), str(folder)], "cli_missing_model", "bad_models_nope",
              expect="reject")
    (work / "cli_empty").mkdir(exist_ok=True)
    F.run_cli(report, ["index", str(work / "cli_empty")], "cli_index_empty", str(work / "cli_empty"), expect="reject")
    _assert_clean(report, 3)
    csv_text = (work / "o.csv").read_text()
    assert "empty_0" in csv_text and "rgba_0" in csv_text


def test_evaluation_leaves_out_a_wrong_size_mask_by_name(work):
    """A mask whose size differs from its image is named and left out of the pixel metrics, never resized."""
    import shutil

    import cv2

    from core.data import ensure_demo, index_dataset
    from core.evaluation import ground_truth_masks

    root = work / "masks_ds"
    shutil.copytree(ensure_demo(), root)
    bad = sorted((root / "ground_truth" / "crack").glob("*_mask.png"))[0]
    m = cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(bad), cv2.resize(m, (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_NEAREST))
    index = index_dataset(root)
    records = index.split("test")
    problems: list[str] = []
    masks, usable = ground_truth_masks(index, records, 64, problems)
    assert len(problems) == 1 and bad.name in problems[0] and "pixel metrics" in problems[0]
    with_mask = [i for i, r in enumerate(records) if r.label == 1 and index.mask_path(r) is not None]
    assert len(with_mask) - 1 == sum(usable[i] for i in with_mask), "only the bad mask is left out"
    assert masks[usable].any()
