"""Options several CLI verbs share: the dataset, the detector (from the registry, each detector adding its own
options) and the feature cache."""

from __future__ import annotations

import argparse

from core.detectors.registry import detector_class, detector_kinds


def add_detector_options(p: argparse.ArgumentParser) -> None:
    """``DATASET``, ``--detector`` (every registered one) with the settings all detectors share, each detector's
    own options, and ``--no-cache``."""
    p.add_argument("dataset", help="dataset folder, or a name under the data roots ('demo' = built-in demo)")
    p.add_argument("--detector", choices=detector_kinds(), default="patchcore")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--layers", default="", help="comma-separated module names (default: the backbone's)")
    p.add_argument("--image-size", type=int, default=0,
                   help="square input size in px (default 0: the detector chooses its scale from the training "
                        "images: its own default for small ones, else their own size up to a pixel budget with the "
                        "aspect ratio kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    for kind in detector_kinds():
        detector_class(kind).add_cli_options(p)


def detector_from_args(args: argparse.Namespace):
    """The detector ``--detector`` names, built from the shared and its own options."""
    cls = detector_class(args.detector)
    layers = tuple(args.layers.split(",")) if args.layers else ()
    return cls.from_settings(backbone=args.backbone, layers=layers, image_size=args.image_size, seed=args.seed,
                             **cls.settings_from_cli(args))


def feature_cache(args: argparse.Namespace):
    """The project's feature cache, or None with ``--no-cache``."""
    from core.features import FeatureCache

    return None if args.no_cache else FeatureCache()
