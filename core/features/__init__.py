"""Patch features: the extractor and its disk cache."""

from core.features.cache import FeatureCache, feature_key
from core.features.extractor import ExtractionResult, FeatureExtractor, FeatureSpec

__all__ = ["ExtractionResult", "FeatureCache", "FeatureExtractor", "FeatureSpec", "feature_key"]
