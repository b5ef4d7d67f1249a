"""Batch scoring into Parquet: in-process and resumable (fast), and on a real two-node local Ray cluster with a
scoring actor SIGKILLed mid-run (slow)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.bundle.export import export_bundle
from core.cli import main as cli_main
from core.data import make_demo_dataset
from core.detectors import PatchCore, PatchCoreConfig
from core.errors import WorkbenchError
from core.scale.batch_scoring import PART_PREFIX, list_source, read_results, score_to_parquet

# Ray on loopback only (read when ray is first imported): see core/scale/ray_scoring.py
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    """A PatchCore bundle fitted on the demo's train/good, and >= 1,000 demo test images plus two unreadable files."""
    root = tmp_path_factory.mktemp("scale")
    data = make_demo_dataset(root / "data", n_train=30, n_test_good=500, n_test_defect=510, size=128)
    det = PatchCore(PatchCoreConfig(ratio=0.05))
    det.fit(sorted(str(p) for p in (data / "train" / "good").glob("*.png")))
    det.save(root / "model")
    export_bundle(root / "model", root / "bundle", ["onnx"])
    bad = data / "test" / "unreadable"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    return root / "bundle", data / "test"


def _table(out: Path):
    t = read_results(out).to_pandas()
    return t.set_index("path", verify_integrity=False)


def test_in_process_parquet_is_resumable(demo_bundle, tmp_path):
    bundle, test = demo_bundle
    listing = tmp_path / "images.txt"
    paths = sorted((test / "good").glob("*.png"))[:98] + sorted((test / "unreadable").iterdir())
    listing.write_text("\n".join(str(p) for p in paths))
    sources = [str(listing)]
    full = score_to_parquet(bundle, sources, tmp_path / "all", batch_size=20)
    assert full.scored == 100 and full.errors == 2 and full.already_done == 0 and full.batches == 5
    ref = _table(tmp_path / "all")
    assert set(ref.loc[ref.error != "", "decision"]) == {"error"} and ref.score.notna().sum() == 98
    # a crash after some partitions: keep 2 of them, rerun, and every image is there exactly once
    out = tmp_path / "resumed"
    out.mkdir()
    kept = sorted((tmp_path / "all").glob(f"{PART_PREFIX}*.parquet"))[:2]
    for part in kept:
        (out / part.name).write_bytes(part.read_bytes())
    n_kept = len(_table(out))
    again = score_to_parquet(bundle, sources, out, batch_size=20)
    assert again.already_done == n_kept == 40 and again.scored == 60
    t = _table(out)
    assert t.index.is_unique and len(t) == 100
    np.testing.assert_array_equal(t.loc[ref.index, "score"].values, ref.score.values)
    assert score_to_parquet(bundle, sources, out).scored == 0  # nothing left to do


def test_sources_cli_and_wrong_model(demo_bundle, tmp_path, capsys):
    bundle, test = demo_bundle
    good = sorted((test / "good").glob("*.png"))[:5]
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in good) + "\n")
    assert list_source([str(tmp_path / "list.txt")]) == [str(p) for p in good]
    assert len(list_source([str(test / "good" / "*.png")])) == 500
    assert cli_main(["score", str(bundle), str(tmp_path / "list.txt"), "--out", str(tmp_path / "r")]) == 0
    assert len(_table(tmp_path / "r")) == 5
    # results of one model are never mixed with another's
    other = tmp_path / "other"
    other.mkdir()
    for part in (tmp_path / "r").glob("*.parquet"):
        import pyarrow.parquet as pq

        tb = pq.read_table(part)
        foreign = tb.set_column(6, "model_sha", __import__("pyarrow").array(["x" * 64] * len(tb)))
        pq.write_table(foreign, other / part.name)
    with pytest.raises(WorkbenchError, match="another model"):
        score_to_parquet(bundle, [str(tmp_path / "list.txt")], other)


@pytest.mark.slow
def test_ray_two_nodes_survive_a_killed_actor(demo_bundle, tmp_path):
    """>= 1,000 images on a real two-node local cluster, one scoring actor SIGKILLed mid-run: every image exactly
    once, with the in-process scores."""
    import ray
    from ray.cluster_utils import Cluster

    from core.scale.ray_scoring import score_on_ray

    bundle, test = demo_bundle
    sources = [str(test)]
    n = len(list_source(sources))
    assert n >= 1000
    # 2 + 2 logical CPUs on this 2-core machine: more than the 2 actors need (see core/scale/ray_scoring.py)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    killed: dict = {}
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        out = tmp_path / "ray"

        def kill_mid_run(pool) -> None:
            killed["nodes"] = sum(1 for nd in ray.nodes() if nd["Alive"])

            def killer() -> None:
                while len(list(out.glob(f"{PART_PREFIX}*.parquet"))) < 3:
                    time.sleep(0.05)
                pid = ray.get(pool[0].pid.remote())
                killed["parts_before"] = len(list(out.glob(f"{PART_PREFIX}*.parquet")))
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                killed["new_pid"] = ray.get(pool[0].pid.remote())  # the restarted actor answers

            threading.Thread(target=killer, daemon=True).start()

        summary = score_on_ray(bundle, sources, out, address=cluster.address, actors=2, batch_size=40,
                               on_started=kill_mid_run)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed["nodes"] == 2
    batches = -(-n // 40)
    assert killed["parts_before"] < batches and killed["new_pid"] != killed["pid"]
    assert summary.scored == n and summary.errors == 2 and summary.batches == batches
    t = _table(out)
    assert t.index.is_unique and len(t) == n and len(list(out.glob("*.parquet"))) == batches
    ref_sum = score_to_parquet(bundle, sources, tmp_path / "local", batch_size=40)
    ref = _table(tmp_path / "local")
    assert ref_sum.scored == n
    got = t.loc[ref.index]
    ok = ref.error == ""
    # one thread per actor vs every core in-process: float summation order only
    np.testing.assert_allclose(got.score.values[ok.values], ref.score.values[ok.values], rtol=1e-4)
    assert (got.decision.values == ref.decision.values).all()
    assert 0 < (ref.decision == "anomalous").sum() < ok.sum()


@pytest.mark.slow
def test_fit_with_features_from_ray_is_the_in_process_fit(magnetic_tile):
    """PatchCore fitted from features extracted on Ray actors (local cluster, 2 actors): the same bank and threshold
    as fitted in-process."""
    from core.data import index_dataset
    from core.scale.ray_features import RayFeatureSource

    index = index_dataset(magnetic_tile)
    train = [str(index.abs_path(r)) for r in index.split("train_normal")[:24]] + ["/nonexistent/x.png"]
    source = RayFeatureSource("tf_efficientnet_lite0", (), 208, actors=2, batch_size=5, use_cache=False)
    try:
        on_ray = PatchCore(PatchCoreConfig(ratio=0.02))
        on_ray.use_feature_source(source)
        report = on_ray.fit(train)
    finally:
        source.close()
    local = PatchCore(PatchCoreConfig(ratio=0.02))
    local.fit(train)
    assert report.n_fit_images == 24 and list(report.skipped) == ["/nonexistent/x.png"]
    np.testing.assert_allclose(on_ray.bank, local.bank, rtol=1e-5, atol=1e-6)
    assert on_ray.threshold == pytest.approx(local.threshold, rel=1e-5)
