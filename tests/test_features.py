"""Feature cache: hits, misses, invalidation on changed bytes, corrupt entries, eviction, bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from core.features import FeatureExtractor, FeatureSpec


@pytest.fixture(scope="module")
def images(magnetic_tile, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    src = sorted((magnetic_tile / "train" / "good").iterdir())[:4]
    out = []
    for p in src:
        shutil.copy(p, folder / p.name)
        out.append(folder / p.name)
    return out


def _extractor(cache):
    return FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", (), 224), cache=cache)


def test_second_pass_hits_and_matches(images, tmp_cache):
    ext = _extractor(tmp_cache)
    first = ext.extract_paths(images)
    assert first.cache.misses == 4 and first.cache.hits == 0
    second = ext.extract_paths(images)
    assert second.cache.hits == 4 and second.cache.misses == 0
    for name in ext.spec.layers:
        np.testing.assert_array_equal(first.features[name], second.features[name])
    assert tmp_cache.info()["entries"] == 4


def test_changed_image_bytes_invalidate(images, tmp_cache, tmp_path):
    ext = _extractor(tmp_cache)
    target = tmp_path / "img.png"
    shutil.copy(images[0], target)
    ext.extract_paths([target])
    # same name, different content: must miss and give different features
    shutil.copy(images[1], target)
    res = ext.extract_paths([target])
    assert res.cache.misses == 1 and res.cache.hits == 0


def test_other_layers_or_size_are_other_entries(images, tmp_cache):
    _extractor(tmp_cache).extract_paths(images[:1])
    other = FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", ("blocks.3",), 224), cache=tmp_cache)
    assert other.extract_paths(images[:1]).cache.misses == 1
    bigger = FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", (), 256), cache=tmp_cache)
    assert bigger.extract_paths(images[:1]).cache.misses == 1


def test_bfloat16_pass_is_close_to_float32_and_cached_apart(images, tmp_cache):
    """``precision="bfloat16"`` really computes in bfloat16 (features differ by a few %, not 0), stays close to the
    float32 pass, and is its own cache entry: a float32 entry is never served for it, nor the reverse."""
    f32 = _extractor(tmp_cache).extract_paths(images[:2])
    b16_ext = FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", (), 224, precision="bfloat16"), cache=tmp_cache)
    b16 = b16_ext.extract_paths(images[:2])
    assert b16.cache.misses == 2 and b16.cache.hits == 0
    for name in b16_ext.spec.layers:
        a, b = f32.features[name], b16.features[name]
        assert b.dtype == np.float32 and b.shape == a.shape
        rel = float(np.abs(a - b).mean() / np.abs(a).mean())
        assert 1e-3 < rel < 0.15, rel
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert corr > 0.99, corr
    again = b16_ext.extract_paths(images[:2])
    assert again.cache.hits == 2
    np.testing.assert_array_equal(again.features[name], b16.features[name])
    assert _extractor(tmp_cache).extract_paths(images[:2]).cache.hits == 2  # float32 entries untouched


def test_corrupt_entry_is_dropped_and_recomputed(images, tmp_cache):
    ext = _extractor(tmp_cache)
    clean = ext.extract_paths(images[:1]).features
    (path, _, _), = tmp_cache.entries()
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x55  # flip bits inside the tensor data
    path.write_bytes(bytes(blob))
    res = ext.extract_paths(images[:1])
    assert tmp_cache.stats.corrupt == 1 and res.cache.misses == 1
    for name in ext.spec.layers:
        np.testing.assert_array_equal(res.features[name], clean[name])
    assert ext.extract_paths(images[:1]).cache.hits == 1  # rewritten entry is good again


def test_eviction_keeps_cache_under_limit(images, tmp_cache):
    ext = _extractor(tmp_cache)
    ext.extract_paths(images)
    sizes = [e[1] for e in tmp_cache.entries()]
    removed = tmp_cache.evict(limit_bytes=sum(sizes) - 1)
    assert removed == 1 and tmp_cache.info()["entries"] == 3
    assert tmp_cache.clear() == 3 and tmp_cache.info()["entries"] == 0


def test_writes_keep_cache_under_limit_and_survive_removed_folders(tmp_path):
    """Automatic eviction: once the cache's size is known, writes that take it over the limit evict down to 90 %
    of it without a scan per write; a folder removed behind the cache's back (``cache clear`` elsewhere) is made
    again."""
    from core.features import FeatureCache

    entry = {"x": np.ones((64, 64), np.float32)}  # 16 KiB
    probe = FeatureCache(root=tmp_path / "probe")
    probe.put("00" + "0" * 62, entry)
    size = probe.info()["bytes"]
    cache = FeatureCache(root=tmp_path / "c", limit_bytes=20 * size)
    keys = [f"{i:064x}" for i in range(200)]
    for i, key in enumerate(keys):
        cache.put(key, entry)
        if i >= 64:  # the first scan comes after 64 writes; from then on the size is tracked
            assert cache.info()["bytes"] <= 20 * size
    assert cache.stats.evicted >= 180 and cache.get(keys[-1]) is not None
    shutil.rmtree(cache._path(keys[-1]).parent)
    cache.put(keys[-1], entry)
    assert cache.get(keys[-1]) is not None and cache.stats.write_errors == 0


def test_unreadable_file_is_reported_and_others_extracted(images, tmp_cache, tmp_path):
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    res = _extractor(tmp_cache).extract_paths([images[0], bad, images[1]])
    assert res.ok == [0, 2]
    assert "zero.png" in res.errors[1]
    assert res.features["blocks.2"].shape[0] == 2


def test_unwritable_cache_still_extracts(images, tmp_path):
    """A cache that cannot be written (here: its root is a file; in the field: a full disk) warns once and the
    features are still computed and returned."""
    from core.features import FeatureCache

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    cache = FeatureCache(root=blocker / "features")
    ext = _extractor(cache)
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        res = ext.extract_paths(images)
    assert len(res.ok) == len(images) and not res.errors
    assert cache.stats.write_errors == len(images)
    reference = _extractor(None).extract_paths(images)
    for name in ext.spec.layers:
        np.testing.assert_allclose(res.features[name], reference.features[name], rtol=1e-5, atol=1e-5)
