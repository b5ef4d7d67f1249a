"""PatchCore and PaDiM fitted for real on a small slice of magnetic_tile (real backbone, real images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from core.cli import main as cli_main
from core.data import index_dataset
from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig, SearchConfig, load_detector
from core.errors import ModelFormatError
from core.metrics import image_metrics

N_TRAIN = 40
N_PER_CLASS = 6  # test images per defect class, and 5x that many normals


def _slice(root):
    index = index_dataset(root)
    train = [str(index.abs_path(r)) for r in index.split("train_normal")[:N_TRAIN]]
    test = index.split("test")
    by_class: dict[str, list] = {}
    for r in test:
        by_class.setdefault(r.defect, []).append(r)
    picked = by_class["good"][: 5 * N_PER_CLASS]
    for name, recs in sorted(by_class.items()):
        if name != "good":
            picked += recs[:N_PER_CLASS]
    return train, [str(index.abs_path(r)) for r in picked], np.array([r.label for r in picked])


@pytest.fixture(scope="module")
def data(magnetic_tile):
    return _slice(magnetic_tile)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from core.features import FeatureCache

    return FeatureCache(root=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def patchcore(data, cache):
    det = PatchCore(PatchCoreConfig(ratio=0.02))  # default rescore_ratio 0.05: a second, larger image-score bank
    report = det.fit(data[0], cache=cache)
    # every image in the bank; half of them, scored left out, fix the threshold (a 0.99 quantile needs many)
    assert report.n_fit_images == N_TRAIN and report.n_calibration_images == N_TRAIN // 2
    return det


def test_patchcore_separates_real_defects(patchcore, data, cache):
    _, test, labels = data
    res = patchcore.score_paths(test, cache=cache)
    m = image_metrics(labels, res.scores)
    assert m.auroc is not None and m.auroc > 0.8, m
    assert patchcore.image_size == 208  # the default input for a CNN
    assert res.maps.shape == (len(test), 208, 208)
    assert np.isfinite(res.maps).all()


def test_scores_do_not_depend_on_the_batch(patchcore, data):
    """The replaced system normalised by each batch's max; here an image scores the same in any company."""
    from core.data import read_image

    imgs = [read_image(p) for p in data[1][:10]]
    alone = np.array([patchcore.score_images([im]).scores[0] for im in imgs[:3]])
    together = patchcore.score_images(imgs).scores[:3]
    reversed_batch = patchcore.score_images(imgs[::-1]).scores[::-1][:3]
    np.testing.assert_allclose(alone, together, rtol=1e-4)
    np.testing.assert_allclose(alone, reversed_batch, rtol=1e-4)
    # the normalised score is a fixed monotone map: same image, same value, whatever the batch
    n1 = patchcore.normalisation.normalise(alone)
    n2 = patchcore.normalisation.normalise(together)
    np.testing.assert_allclose(n1, n2, rtol=1e-4)


def test_save_load_round_trip_gives_same_scores(patchcore, data, tmp_path):
    from core.data import read_image

    imgs = [read_image(p) for p in data[1][:4]]
    before = patchcore.score_images(imgs)
    patchcore.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    after = loaded.score_images(imgs)
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-5)
    np.testing.assert_allclose(before.maps, after.maps, rtol=1e-4, atol=1e-4)
    assert loaded.threshold == patchcore.threshold


def test_patchcore_map_and_score_match_brute_force(patchcore, data, cache):
    """Map = mean distance to the map_neighbors nearest bank patches; leaving an image out skips its own rows."""
    from core.detectors.embedding import to_patches

    feats = patchcore.extractor(cache).extract_paths(data[1][:2] + data[0][:1])
    patches = to_patches(patchcore.embed(feats.features))
    bank = patchcore.bank.astype(np.float64)
    dist = np.sqrt(((patches[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1))  # Q x N, exact
    k = patchcore.cfg.map_neighbors
    assert k == 3
    scores, maps, _ = patchcore.score_embeddings(feats.features)
    # faiss computes |q|^2 - 2 q.b + |b|^2 in float32: distances agree to ~1e-3 relative, not to the last digit
    np.testing.assert_allclose(maps.reshape(-1), np.sort(dist, axis=1)[:, :k].mean(axis=1), rtol=2e-3)
    per_image = len(patches) // 3
    nearest = dist.min(axis=1).reshape(3, per_image)
    assert np.all(scores <= nearest.max(axis=1) + 1e-4)  # the reweighting only ever lowers s*
    # the third image is training image 0: scored "as if unseen", its own bank rows are skipped
    own = patchcore.bank_source[:, 0] == 0
    assert own.any()
    _, maps_lo, _ = patchcore.score_embeddings({n: f[2:] for n, f in feats.features.items()}, leave_out=np.array([0]))
    expected = np.sort(dist[2 * per_image:][:, ~own], axis=1)[:, :k].mean(axis=1)
    np.testing.assert_allclose(maps_lo.reshape(-1), expected, rtol=2e-3)
    assert maps_lo.mean() > maps[2].mean()  # without its own patches the image looks less familiar


def _reweighted_reference(m_test: np.ndarray, s_star: float, m_star_row: int, bank: np.ndarray, k: int = 9) -> float:
    """Paper eq. 7 written out in float64: softmax over the distances from m_test to m*'s k nearest bank rows."""
    to_m_star = np.sqrt(((bank - bank[m_star_row]) ** 2).sum(-1))
    support = bank[np.argsort(to_m_star, kind="stable")[:k]]
    d = np.sqrt(((support - m_test) ** 2).sum(-1))
    w = np.exp(d - d.max())
    return float((1.0 - w[0] / w.sum()) * s_star)


def test_image_score_bank_extends_the_map_bank_and_matches_brute_force(patchcore, data, cache):
    """The map bank is the first 2 % of one greedy run, the image-score bank the first 5 %; the image score is the
    paper's, taken in the larger bank over the 8 patches farthest from the smaller one."""
    from core.detectors.embedding import to_patches

    plain = PatchCore(PatchCoreConfig(ratio=0.02, rescore_ratio=0.0))
    plain.fit(data[0], cache=cache)
    np.testing.assert_array_equal(plain.bank, patchcore.bank)  # greedy picks are a prefix chain
    assert plain.extra_bank is None and len(patchcore.extra_bank) > len(patchcore.bank)
    big, source, _ = patchcore._score_bank()
    big = big.astype(np.float64)
    assert patchcore.state_params()["image_score_bank_size"] == len(big) == len(source)

    feats = patchcore.extractor(cache).extract_paths(data[1][-3:] + data[0][:1]).features
    patches = to_patches(patchcore.embed(feats)).astype(np.float64)
    n = 4
    per_image = len(patches) // n
    scores, maps, _ = patchcore.score_embeddings(feats)
    plain_scores, plain_maps, _ = plain.score_embeddings(feats)
    np.testing.assert_allclose(maps, plain_maps, rtol=1e-6)  # maps come from the map bank alone

    def expected(rows: np.ndarray, keep_small: np.ndarray, keep_big: np.ndarray) -> float:
        small = patchcore.bank.astype(np.float64)[keep_small]
        d_small = np.sqrt(((rows[:, None] - small[None]) ** 2).sum(-1)).min(axis=1)
        top = np.argsort(-d_small, kind="stable")[:8]
        allowed = np.flatnonzero(keep_big)
        d_big = np.sqrt(((rows[top][:, None] - big[allowed][None]) ** 2).sum(-1))
        j = int(d_big.min(axis=1).argmax())
        # the reweighting's support points are m*'s neighbours in the whole bank, as for the map bank
        return _reweighted_reference(rows[top[j]], float(d_big[j].min()), int(allowed[d_big[j].argmin()]), big)

    everything_small, everything_big = np.ones(len(patchcore.bank), bool), np.ones(len(big), bool)
    for i in range(n):
        rows = patches[i * per_image : (i + 1) * per_image]
        # faiss works in float32 (|q|^2 - 2 q.b + |b|^2): agreement to ~1e-3 relative
        np.testing.assert_allclose(scores[i], expected(rows, everything_small, everything_big), rtol=2e-3)
    assert not np.allclose(scores, plain_scores)
    # calibration: training image 0 scored as if unseen, its rows skipped in both banks
    lo, _, _ = patchcore.score_embeddings({k: v[3:] for k, v in feats.items()}, leave_out=np.array([0]))
    rows = patches[3 * per_image :]
    want = expected(rows, patchcore.bank_source[:, 0] != 0, source[:, 0] != 0)
    np.testing.assert_allclose(lo[0], want, rtol=2e-3)


def test_image_score_fine_weight_matches_brute_force_and_leaves_the_map_alone(patchcore, data, cache, tmp_path):
    """image_score_fine_weight 2: the 8 patches farthest from the bank (by the map's distances) are re-measured with
    the stride-8 channels doubled, against the bank doubled alike, and the paper's score is taken there; the bank
    and the map are those of the unweighted model. Saved and loaded, and scored left out, the same way."""
    from core.detectors.embedding import to_patches

    plain = PatchCore(PatchCoreConfig(ratio=0.02, rescore_ratio=0.0))
    plain.fit(data[0], cache=cache)
    det = PatchCore(PatchCoreConfig(ratio=0.02, rescore_ratio=0.0, image_score_fine_weight=2.0))
    det.fit(data[0], cache=cache)
    np.testing.assert_array_equal(det.bank, plain.bank)
    feats = det.extractor(cache).extract_paths(data[1][-3:] + data[0][:1]).features
    fine = feats["blocks.2"].shape[1]
    np.testing.assert_array_equal(det.score_scale, np.r_[np.full(fine, 2.0), np.ones(det.bank.shape[1] - fine)])
    scores, maps, _ = det.score_embeddings(feats)
    plain_scores, plain_maps, _ = plain.score_embeddings(feats)
    np.testing.assert_array_equal(maps, plain_maps)
    patches = to_patches(det.embed(feats)).astype(np.float64)
    per_image = len(patches) // 4
    scale = det.score_scale.astype(np.float64)
    bank = det.bank.astype(np.float64)

    def expected(rows: np.ndarray, keep: np.ndarray) -> float:
        d_map = np.sqrt(((rows[:, None] - bank[keep][None]) ** 2).sum(-1)).min(axis=1)
        top = np.argsort(-d_map, kind="stable")[:8]
        allowed = np.flatnonzero(keep)
        d = np.sqrt((((rows[top][:, None] - bank[allowed][None]) * scale) ** 2).sum(-1))
        j = int(d.min(axis=1).argmax())
        return _reweighted_reference(rows[top[j]] * scale, float(d[j].min()), int(allowed[d[j].argmin()]),
                                     bank * scale)

    everything = np.ones(len(bank), bool)
    for i in range(4):
        rows = patches[i * per_image : (i + 1) * per_image]
        np.testing.assert_allclose(scores[i], expected(rows, everything), rtol=2e-3)
    assert not np.allclose(scores, plain_scores)
    lo, _, _ = det.score_embeddings({k: v[3:] for k, v in feats.items()}, leave_out=np.array([0]))
    np.testing.assert_allclose(lo[0], expected(patches[3 * per_image :], det.bank_source[:, 0] != 0), rtol=2e-3)
    det.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    np.testing.assert_array_equal(loaded.score_scale, det.score_scale)
    np.testing.assert_allclose(loaded.score_embeddings(feats)[0], scores, rtol=1e-6)


def test_model_saved_before_the_knn_map_keeps_its_nearest_neighbour_map(patchcore, data, tmp_path):
    from core.data import read_image

    patchcore.save(tmp_path / "model")
    cfg_path = tmp_path / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["params"]["map_neighbors"]
    cfg_path.write_text(json.dumps(cfg))
    old = load_detector(tmp_path / "model")
    assert old.cfg.map_neighbors == 1
    img = [read_image(data[1][0])]
    new_res, old_res = patchcore.score_images(img), old.score_images(img)
    np.testing.assert_allclose(new_res.scores, old_res.scores, rtol=1e-5)  # the image score never used the k-NN
    assert old_res.maps.mean() < new_res.maps.mean()  # nearest distance <= mean of the 3 nearest


def test_fine_layer_weight_is_saved_and_models_without_it_load_unweighted(patchcore, data, tmp_path):
    from core.data import read_image

    patchcore.save(tmp_path / "model")
    cfg_path = tmp_path / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["params"]["fine_layer_weight"] == 1.0 and cfg["image_size"] == 208
    cfg["params"]["fine_layer_weight"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    weighted = load_detector(tmp_path / "model")
    assert weighted.cfg.fine_layer_weight == 0.5 and weighted.image_size == 208
    feats = patchcore.extractor().extract_images([read_image(data[1][0])])
    plain_emb, weighted_emb = patchcore.embed(feats), weighted.embed(feats)
    fine = feats["blocks.2"].shape[1]
    np.testing.assert_allclose(weighted_emb[:, :fine].numpy(), 0.5 * plain_emb[:, :fine].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(weighted_emb[:, fine:].numpy(), plain_emb[:, fine:].numpy())
    del cfg["params"]["fine_layer_weight"]  # saved before the option existed
    cfg_path.write_text(json.dumps(cfg))
    assert load_detector(tmp_path / "model").cfg.fine_layer_weight == 1.0


def test_default_input_sizes():
    from core.detectors import default_image_size

    assert default_image_size("patchcore", "tf_efficientnet_lite0") == 208
    assert default_image_size("patchcore", "vit_small_patch14_dinov2.lvd142m") == 224  # a multiple of 14
    assert default_image_size("padim", "tf_efficientnet_lite0") == 224
    assert PatchCore(PatchCoreConfig(image_size=256)).image_size == 256  # an explicit size is kept


def test_model_with_an_unknown_precision_is_refused_on_load(patchcore, tmp_path):
    patchcore.save(tmp_path / "model")
    cfg_path = tmp_path / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["params"]["precision"] == "float32"
    cfg["params"]["precision"] = "float8"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="float8"):
        load_detector(tmp_path / "model")


def test_model_made_with_other_weights_is_refused(patchcore, tmp_path):
    patchcore.save(tmp_path / "model")
    cfg_path = tmp_path / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["weights_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    det = load_detector(tmp_path / "model")
    with pytest.raises(ModelFormatError, match="other tf_efficientnet_lite0 weights"):
        det.score_images([np.zeros((64, 64, 3), np.uint8)])


def test_ivfpq_with_rerank_matches_flat_distances(patchcore, data):
    from core.detectors.search import MemoryBankIndex

    bank = patchcore._score_bank()[0]  # 1,352 rows: enough for IVF cells (the 541-row map bank falls back to flat)
    rng = np.random.default_rng(0)
    queries = bank[rng.choice(len(bank), 200, replace=False)] + rng.normal(0, 0.05, (200, bank.shape[1])).astype(
        np.float32
    )
    flat_d, flat_i = MemoryBankIndex(bank, SearchConfig("flat")).search(queries, 1)
    ivf = MemoryBankIndex(bank, SearchConfig("ivfpq", nprobe=16, rerank=True))
    assert ivf.kind == "ivfpq"
    d, i = ivf.search(queries, 1)
    recall = float((i[:, 0] == flat_i[:, 0]).mean())
    assert recall > 0.9
    exact = ((queries - bank[i[:, 0]]) ** 2).sum(axis=1)
    np.testing.assert_allclose(d[:, 0], exact, rtol=1e-4, atol=1e-5)  # re-ranked distances are exact ones


def test_ivfflat_distances_are_exact_and_short_queries_are_searched_exactly(patchcore):
    """IVF-Flat measures exact distances to the rows of the probed cells: with every cell probed it is the flat
    search; with one cell probed, a query whose cell holds fewer than k rows still gets k real rows (exact search)."""
    from core.detectors.search import MemoryBankIndex

    bank = patchcore._score_bank()[0]
    rng = np.random.default_rng(0)
    queries = bank[rng.choice(len(bank), 300, replace=False)] + rng.normal(0, 0.05, (300, bank.shape[1])).astype(
        np.float32
    )
    flat_d, flat_i = MemoryBankIndex(bank, SearchConfig("flat")).search(queries, 5)
    every = MemoryBankIndex(bank, SearchConfig("ivfflat", nlist=16, nprobe=16))
    assert every.kind == "ivfflat" and every.effective == {"nlist": 16}
    d, i = every.search(queries, 5)
    assert_same_neighbours(bank, queries, i, flat_i)
    exact = ((queries[:, None, :] - bank[i]) ** 2).sum(axis=2)  # (faiss's flat GEMM rounds with the norms)
    np.testing.assert_allclose(d, exact, rtol=1e-4, atol=1e-4)
    one = MemoryBankIndex(bank, SearchConfig("ivfflat", nprobe=1))  # ~2 sqrt(n) cells of ~18 rows
    k = max(one.ivf.invlists.list_size(j) for j in range(one.ivf.nlist)) + 1  # more than any one cell holds
    d, i = one.search(queries, k)
    assert (i >= 0).all() and np.isfinite(d).all()
    assert_same_neighbours(bank, queries, i, MemoryBankIndex(bank, SearchConfig("flat")).search(queries, k)[1])
    d1, i1 = one.search(queries, 1)
    exact = ((queries - bank[i1[:, 0]]) ** 2).sum(axis=1)
    np.testing.assert_allclose(d1[:, 0], exact, rtol=1e-4, atol=1e-4)  # the rows it found, measured exactly
    true = ((queries - bank[flat_i[:, 0]]) ** 2).sum(axis=1)
    assert (d1[:, 0] >= true - 1e-4).all()  # never nearer than the true neighbour


def assert_same_neighbours(bank, queries, i, flat_i) -> None:
    """``i`` are the flat search's k nearest rows: the same rows except where two tie within the flat search's
    rounding (its GEMM measures |q|^2 + |b|^2 - 2 q.b, off by up to ~1e-3 here), at the same exact distances."""
    def exact(rows):
        return ((queries[:, None, :].astype(np.float64) - bank[rows]) ** 2).sum(axis=2)

    assert (i != flat_i).mean() < 0.01
    np.testing.assert_allclose(exact(i), exact(flat_i), rtol=1e-5, atol=5e-3)


def test_ivfflat_in_a_pca_projection_re_ranks_to_exact_distances(patchcore):
    """pca_dim: cells and candidates found in a 64-d PCA projection, the candidates' distances then measured in all
    152 dimensions; the nearest of them comes back with its exact distance (never nearer than the true neighbour),
    nearly always the true one; a query whose probed cell is too small is still searched exactly."""
    from core.detectors.search import MemoryBankIndex

    bank = patchcore._score_bank()[0]
    rng = np.random.default_rng(0)
    queries = bank[rng.choice(len(bank), 300, replace=False)] + rng.normal(0, 0.05, (300, bank.shape[1])).astype(
        np.float32
    )
    flat_d, flat_i = MemoryBankIndex(bank, SearchConfig("flat")).search(queries, 1)
    pca = MemoryBankIndex(bank, SearchConfig("ivfflat", nprobe=4, pca_dim=64, rerank_factor=4))
    assert pca.kind == "ivfflat" and pca.effective["pca_dim"] == 64
    d, i = pca.search(queries, 3)
    exact = ((queries[:, None, :].astype(np.float64) - bank[i].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(d, exact, rtol=1e-4, atol=1e-4)
    assert (np.diff(d, axis=1) >= 0).all()
    true = ((queries.astype(np.float64) - bank[flat_i[:, 0]].astype(np.float64)) ** 2).sum(axis=1)
    assert (d[:, 0] >= true * (1 - 1e-5) - 1e-6).all()  # (the flat search's own distances round with the norms)
    assert (i[:, 0] == flat_i[:, 0]).mean() > 0.95
    one = MemoryBankIndex(bank, SearchConfig("ivfflat", nprobe=1, pca_dim=64, rerank_factor=1))
    k = max(one.ivf.invlists.list_size(j) for j in range(one.ivf.nlist)) + 1
    d, i = one.search(queries, k)
    assert (i >= 0).all() and np.isfinite(d).all()


@pytest.mark.parametrize("kind, pca_dim", [("flat", 0), ("ivfflat", 0), ("ivfflat", 64)])
def test_search_split_over_threads_equals_one_call(patchcore, monkeypatch, kind, pca_dim):
    """The queries of a search are searched in slices on a thread pool (faiss-cpu's OpenBLAS is single-threaded;
    IVF's coarse quantiser is a flat search too): same neighbours, same distances up to float rounding, any k, any
    query count, in order."""
    import faiss

    from core.detectors import search
    from core.detectors.search import MemoryBankIndex

    monkeypatch.setattr(faiss, "omp_get_max_threads", lambda: 3)  # three slices even on a 2-core machine
    bank = patchcore._score_bank()[0]
    rng = np.random.default_rng(1)
    index = MemoryBankIndex(bank, SearchConfig(kind, nprobe=2, pca_dim=pca_dim))
    assert index.kind == kind
    for n, k in [(1000, 1), (677, 3), (193, 9), (100, 2)]:
        queries = bank[rng.choice(len(bank), n)] + rng.normal(0, 0.1, (n, bank.shape[1])).astype(np.float32)
        assert search.query_slices(n, 3) == min(3, n // search.MIN_QUERIES_PER_SLICE)
        index.parallel_queries = True
        d, i = index.search(queries, k)
        index.parallel_queries = False
        d1, i1 = index.search(queries, k)
        assert d.shape == d1.shape == (n, k)
        np.testing.assert_array_equal(i, i1)
        # faiss takes |q|^2 + |b|^2 - 2 q.b: rounding scales with the squared norms, not with the distance
        scale = float((queries.astype(np.float64) ** 2).sum(axis=1).max())
        np.testing.assert_allclose(d, d1, rtol=0, atol=1e-6 * scale)
        exact = ((queries[:, None, :].astype(np.float64) - bank[i]) ** 2).sum(axis=2)
        np.testing.assert_allclose(d, exact, rtol=0, atol=1e-5 * scale)


def test_padim_separates_real_defects(data, cache, tmp_path):
    det = Padim(PadimConfig(n_channels=60))
    det.fit(data[0], cache=cache)
    res = det.score_paths(data[1], cache=cache)
    m = image_metrics(data[2], res.scores)
    assert m.auroc is not None and m.auroc > 0.7, m
    det.save(tmp_path / "padim")
    again = load_detector(tmp_path / "padim").score_paths(data[1][:3], cache=cache)
    np.testing.assert_allclose(again.scores, res.scores[:3], rtol=1e-4)


@pytest.mark.parametrize("n, d", [(200, 100), (676, 152)])
def test_padim_statistics_match_scipy(n, d):
    """The batched float64 Cholesky inverse agrees with scipy on PaDiM's sizes, 152 channels included (where the
    peer saw torch's batched LU inverse crash or come back silently wrong), on every matrix of a large batch."""
    from core.detectors.padim import gaussian_statistics

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) * 0.3
    x = (rng.normal(size=(24, n, d)) @ mix).astype(np.float32)
    mean, inv = gaussian_statistics(torch.from_numpy(x), 0.01)
    for p in range(len(x)):
        xp = x[p].astype(np.float64)
        cov = np.cov(xp, rowvar=False) + 0.01 * np.eye(d)
        np.testing.assert_allclose(mean[p], xp.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(inv[p], scipy.linalg.inv(cov), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_channel_subset_is_picked_before_upsampling_without_changing_the_embedding(neighbourhood):
    """patch_embedding keeps PaDiM's channel subset before pooling/upsampling (cheaper); the result must equal
    taking the subset of the full embedding, for sorted and unsorted indices across both layers."""
    from core.detectors.embedding import patch_embedding

    rng = np.random.default_rng(0)
    feats = {"a": rng.normal(size=(2, 5, 8, 8)).astype(np.float32),
             "b": rng.normal(size=(2, 7, 4, 4)).astype(np.float32)}
    full = patch_embedding(feats, ("a", "b"), neighbourhood)
    for channels in (np.array([0, 3, 4, 5, 9, 11]), np.array([9, 0, 11, 4, 6])):
        sub = patch_embedding(feats, ("a", "b"), neighbourhood, channels=channels)
        np.testing.assert_allclose(sub.numpy(), full[:, torch.as_tensor(channels)].numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="channel indices"):
        patch_embedding(feats, ("a", "b"), neighbourhood, channels=np.array([12]))


def test_fine_weight_scales_only_the_finest_layer_and_only_beside_coarser_ones():
    from core.detectors.embedding import patch_embedding

    rng = np.random.default_rng(1)
    feats = {"a": rng.normal(size=(2, 5, 8, 8)).astype(np.float32),
             "b": rng.normal(size=(2, 7, 4, 4)).astype(np.float32)}
    plain = patch_embedding(feats, ("a", "b"), 3).numpy()
    weighted = patch_embedding(feats, ("b", "a"), 3, fine_weight=0.5).numpy()  # order of the layers does not matter
    np.testing.assert_allclose(weighted[:, 7:], 0.5 * plain[:, :5], rtol=1e-6)  # "a" is the 8 x 8 (finest) layer
    np.testing.assert_array_equal(weighted[:, :7], plain[:, 5:])
    # one resolution only: nothing is finer than anything else, so nothing is scaled
    same = {"a": feats["a"], "c": rng.normal(size=(2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(patch_embedding(same, ("a", "c"), 3, fine_weight=0.5).numpy(),
                                  patch_embedding(same, ("a", "c"), 3).numpy())


def test_cli_score_reports_bad_file_and_scores_the_rest(patchcore, data, tmp_path, capsys):
    patchcore.save(tmp_path / "model")
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out_csv = tmp_path / "scores.csv"
    rc = cli_main(["score", str(tmp_path / "model"), data[1][0], str(bad), data[1][-1], "--csv", str(out_csv)])
    assert rc == 0
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("path,score,decision")
    assert len(rows) == 4
    assert "broken.png" in rows[2] and ",error," in rows[2]
    assert rows[1].split(",")[2] in {"normal", "anomalous"} and rows[3].split(",")[2] in {"normal", "anomalous"}
    assert "broken.png" in capsys.readouterr().err


def test_cli_refuses_foreign_model_folder(tmp_path, capsys):
    import pickle

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    rc = cli_main(["score", str(tmp_path / "m"), str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pickled files are never loaded" in err and "Traceback" not in err


def test_fit_with_too_few_readable_images_names_each_bad_file(data, tmp_path):
    from core.errors import DatasetError

    good = data[0][0]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n")
    det = PatchCore(PatchCoreConfig(ratio=0.05))
    with pytest.raises(DatasetError) as err:
        det.fit([str(good), str(tmp_path / "empty.png"), str(tmp_path / "notes.png")])
    msg = str(err.value)
    assert "1 of 3" in msg and "empty.png" in msg and "notes.png" in msg
