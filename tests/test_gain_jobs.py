"""Issue 22, item 5: GAIN-MTL training started from the app runs as a background job (a real
``python -m core gain train`` process on a small slice of magnetic_tile), reports its progress to every session,
can be cancelled (nothing saved), and its model appears on the CAM page when it is done."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.gain import service as gs

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "app_pages" / "6_GAIN_MTL_CAM.py")


@pytest.fixture()
def job_env(tmp_path, monkeypatch, magnetic_tile):
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("WORKBENCH_JOBS_DIR", str(tmp_path / "jobs"))
    return tmp_path


def _wait(job_id: str, until, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = next(j for j in gs.training_jobs() if j.id == job_id)
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=180)


def _start(at: AppTest, name: str, epochs: int, limit: int) -> str:
    at.selectbox(key="gt_dataset").set_value("magnetic_tile")
    at.selectbox(key="gt_strategy").set_value("S2")
    at.number_input(key="gt_epochs").set_value(epochs)
    at.number_input(key="gt_lcg").set_value(0.4)
    at.text_input(key="gt_name").set_value(name)
    at.number_input(key="gt_limit").set_value(limit)
    at.button(key="gt_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return gs.training_jobs()[0].id


def test_a_job_trains_reports_progress_to_other_sessions_and_its_model_appears(job_env):
    at = _page().run()
    job_id = _start(at, "tiny-s2", epochs=1, limit=4)
    running = _wait(job_id, lambda j: j.state != "running" or "training" in j.progress.get("stage", ""))
    other = _page().run()  # a second session sees the job while it runs, and is not blocked
    assert not other.exception
    if running.state == "running":
        assert any("tiny-s2" in (p.proto.text or "") for p in other.get("progress")), "the job is listed"
    done = _wait(job_id, lambda j: j.state != "running")
    log = (Path(os.environ["WORKBENCH_JOBS_DIR"]) / job_id / "log.txt").read_text()
    assert done.state == "done", log[-2000:]
    cfg = json.loads((gs.gain_models_root() / "tiny-s2" / "config.json").read_text())
    assert cfg["gain"]["lambda_cam_guide"] == 0.4 and cfg["gain"]["max_epochs"] == 1 and cfg["strategy"] == "S2"
    at.run()
    assert "tiny-s2" in at.multiselect(key="gain_models").options


def test_a_cancelled_job_stops_and_saves_nothing(job_env):
    at = _page().run()
    job_id = _start(at, "cancel-me", epochs=40, limit=12)
    _wait(job_id, lambda j: j.state != "running" or "training" in j.progress.get("stage", ""))
    at.run()
    at.button(key=f"gt_cancel_{job_id}").click().run()
    job = next(j for j in gs.training_jobs() if j.id == job_id)
    assert job.state == "cancelled"
    pid = json.loads((Path(os.environ["WORKBENCH_JOBS_DIR"]) / job_id / "job.json").read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (gs.gain_models_root() / "cancel-me").exists()


def test_bad_requests_are_refused_before_a_job_starts(job_env, magnetic_tile):
    from core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="outside the folders"):
        gs.start_training(gs.TrainRequest(dataset="/etc"))
    with pytest.raises(WorkbenchError, match="not a usable model name"):
        gs.start_training(gs.TrainRequest(dataset=str(magnetic_tile), name="../x"))
    with pytest.raises(WorkbenchError, match="loss weights"):
        gs.start_training(gs.TrainRequest(dataset=str(magnetic_tile), loc_warmup=1.5))
    assert gs.training_jobs() == []
