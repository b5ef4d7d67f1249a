"""The service layer the Streamlit pages call: plain Python over ``core``, never importing streamlit.

Pages read state, call a function here (``from core import workbench as wb``; ``wb.<name>``) and draw the result.
Everything that touches files (model folders, uploaded zips, config rewrites) or does arithmetic on scores
(curves, thresholds, grouping) lives here, so it can be tested and reused without a browser.

| module | what |
|---|---|
| ``datasets`` | the datasets the app may browse: list, overview, thumbnails, splits |
| ``zip_uploads`` | uploaded dataset zips, extracted safely into ``<cache>/uploads/<sha256 prefix>/``; size limits |
| ``models`` | the fit form's choices, fitting, saved model folders (``WORKBENCH_MODELS_DIR`` or ``models/``) |
| ``split_scores`` | scores of a split, and histograms, curves, confusion, thresholds on them |
| ``heatmap_views`` | overlays, one image rescored at full size, PatchCore's nearest-patch explanation |
| ``image_uploads`` | scoring uploaded files, a folder or a zip of images (through the cascade when there is one), \
overlays, CSV, thresholds JSON |
| ``cascade_gate`` | a model's cascade gate: fitted, measured once per image, read back |
| ``review`` | review feedback: mark as normal / defect, model versions and their restore, the review log |
| ``cascade_tuning`` | (T_low, T_high) sweep, Pareto front and saved policy, on the cached measurements only |

Every public name is re-exported here, and the GAIN-MTL and experiment services as ``wb.gain`` and
``wb.experiments``: the pages import nothing of ``core`` but this package. Re-exported constants are copies: to move
one in a test, patch the module that reads it (e.g. ``core.workbench.zip_uploads.UPLOADS_DIR``). A function replaced
on this package reaches the pages, which call ``wb.<name>`` (e.g. ``wb.score_split`` in benchmarks/app_speed.py),
but not the modules here, which import each other's functions directly.
"""

from __future__ import annotations

from core.data import read_image
from core.experiments import service as experiments
from core.gain import service as gain
from core.metrics import per_class_metrics
from core.visualize import series_colours
from core.workbench.cascade_gate import (
    CASCADE_DIRNAME,
    GATE_HELP,
    GATE_ORDER,
    CascadeState,
    GateFitOutcome,
    cascade_dir,
    cascade_stamp,
    fit_gate,
    gate_kinds,
    load_cascade,
)
from core.workbench.cascade_tuning import (
    BANDS,
    band_counts,
    cascade_pick_for_recall,
    cascade_point,
    cascade_sweep,
    fast_pareto_front,
    held_out_measurements,
    operating_marks,
    save_cascade_policy,
    score_bins,
)
from core.workbench.datasets import (
    DatasetOverview,
    check_browsable,
    dataset_overview,
    dataset_splits,
    list_datasets,
    thumbnails,
)
from core.workbench.heatmap_views import (
    Explanation,
    ImageDetail,
    explain_patchcore,
    export_bundle_zip,
    heat_only,
    overlay_image,
    score_one,
    worst_region_view,
)
from core.workbench.image_uploads import (
    MAX_BATCH_IMAGES,
    MAX_UPLOAD_IMAGE_BYTES,
    CascadeSettings,
    UploadResult,
    cascade_for_scoring,
    images_from_folder,
    images_from_zip,
    png_bytes,
    read_thresholds,
    results_csv,
    score_uploads,
    scoring_summary,
    thresholds_json,
    upload_overlay,
)
from core.workbench.models import (
    FitOutcome,
    FitProgress,
    FitSettings,
    ModelInfo,
    backbone_choices,
    check_model_name,
    coreset_methods,
    default_model_name,
    delete_model,
    detector_form,
    detector_kinds,
    explains_patches,
    fit_model,
    fit_summary,
    image_size_choices,
    list_models,
    load_model,
    model_info,
    models_dir,
    rename_model,
    resolve_model,
    save_threshold,
    threshold_origin,
)
from core.workbench.review import (
    ReviewOutcome,
    check_reviewer,
    keep_version,
    list_versions,
    mark_defect,
    mark_normal,
    restore_version,
    review_labels,
    review_log_csv,
)
from core.workbench.split_scores import (
    MAP_STORE_SIZE,
    SplitScores,
    confusion,
    curves,
    flag_rate,
    group_scores,
    normalisation_of,
    outcomes,
    pixel_metrics,
    score_split,
    threshold_for_recall,
    tuning_split_warning,
)
from core.workbench.zip_uploads import (
    MAX_UNZIPPED_BYTES,
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    UPLOADS_DIR,
    extract_zip,
    touch_upload,
    uploads_bytes,
)

__all__ = [
    # the other services the pages use, through this one door, and two engine helpers they draw with
    "experiments", "gain", "per_class_metrics", "read_image",
    # datasets
    "DatasetOverview", "check_browsable", "dataset_overview", "dataset_splits", "list_datasets", "thumbnails",
    # zip_uploads
    "MAX_UNZIPPED_BYTES", "MAX_ZIP_BYTES", "MAX_ZIP_MEMBERS", "UPLOADS_DIR", "extract_zip",
    "touch_upload", "uploads_bytes",
    # models
    "FitOutcome", "FitProgress", "FitSettings", "ModelInfo", "backbone_choices",
    "check_model_name", "coreset_methods", "default_model_name", "delete_model", "detector_form", "detector_kinds",
    "explains_patches", "fit_model", "fit_summary",
    "image_size_choices",
    "list_models", "load_model", "model_info", "models_dir", "rename_model", "resolve_model", "save_threshold",
    "threshold_origin",
    # split_scores
    "MAP_STORE_SIZE", "SplitScores", "confusion", "curves", "flag_rate",
    "group_scores", "normalisation_of", "outcomes", "pixel_metrics", "score_split", "threshold_for_recall",
    "tuning_split_warning", "series_colours",
    # review
    "ReviewOutcome", "check_reviewer", "keep_version", "list_versions", "mark_defect", "mark_normal",
    "restore_version", "review_labels", "review_log_csv",
    # heatmap_views
    "Explanation", "ImageDetail", "explain_patchcore", "export_bundle_zip", "heat_only", "overlay_image", "score_one",
    "worst_region_view",
    # image_uploads
    "MAX_BATCH_IMAGES", "MAX_UPLOAD_IMAGE_BYTES", "CascadeSettings", "UploadResult", "cascade_for_scoring",
    "images_from_folder", "images_from_zip", "png_bytes", "read_thresholds", "results_csv", "score_uploads",
    "scoring_summary",
    "thresholds_json", "upload_overlay",
    # cascade_gate
    "CASCADE_DIRNAME", "GATE_HELP", "GATE_ORDER", "CascadeState", "GateFitOutcome", "cascade_dir", "cascade_stamp",
    "fit_gate", "gate_kinds", "load_cascade",
    # cascade_tuning
    "BANDS", "band_counts", "cascade_pick_for_recall", "cascade_point", "cascade_sweep", "fast_pareto_front",
    "held_out_measurements", "operating_marks", "save_cascade_policy", "score_bins",
]
