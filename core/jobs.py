"""Background jobs the app starts (GAIN-MTL training): each one a CLI command in its own process, so that the app
stays responsive, a second browser session sees the job and can cancel it, and a crash or a cancel never takes the
server down. The job's folder (``runs/jobs/<id>/``) holds ``job.json`` (what was started), ``progress.json``
(written by the command itself through :class:`ProgressFile`) and ``log.txt`` (its output).

States: ``running`` (its process is alive), ``done`` (exit 0), ``failed`` (another exit; the log's last line says
why), ``cancelled``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import PROJECT_ROOT
from core.errors import WorkbenchError
from core.storage import atomic_write_json


def jobs_dir() -> Path:
    """``runs/jobs`` (``WORKBENCH_JOBS_DIR`` when set)."""
    return Path(os.environ.get("WORKBENCH_JOBS_DIR") or PROJECT_ROOT / "runs" / "jobs")


class ProgressFile:
    """A progress callback (``core.progress`` protocol) that a job's command writes for the app to read; throttled
    to one write per ``every`` seconds except for stage ends."""

    def __init__(self, path: str | Path, every: float = 0.5) -> None:
        self.path, self.every, self._last = Path(path), float(every), 0.0

    def __call__(self, stage: str, done: int, total: int, **extra: Any) -> None:
        now = time.time()
        if done < total and now - self._last < self.every:
            return
        self._last = now
        atomic_write_json(self.path, {"stage": stage, "done": int(done), "total": int(total), "time": now, **extra})


@dataclass
class JobStatus:
    """What the page shows for one job."""

    id: str
    kind: str
    title: str
    state: str
    started: float
    progress: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    output: str = ""  # what the job makes (e.g. the model folder)

    @property
    def fraction(self) -> float:
        total = float(self.progress.get("total") or 0)
        return min(1.0, float(self.progress.get("done", 0)) / total) if total else 0.0


def start_job(kind: str, title: str, argv: list[str], output: str | Path = "") -> JobStatus:
    """Start ``python -m core ARGV --progress-file <job>/progress.json`` in its own process group."""
    folder = jobs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    cmd = [sys.executable, "-m", "core", *argv, "--progress-file", str(folder / "progress.json")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(folder / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    atomic_write_json(folder / "job.json", {"id": folder.name, "kind": kind, "title": title, "pid": proc.pid,
                                            "command": cmd, "output": str(output), "started": time.time()})
    _children[folder.name] = proc
    return status(folder.name)


# Processes started by this server process: polled so that they are reaped (no zombies) and their exit codes read.
_children: dict[str, subprocess.Popen] = {}


def _exit_code(job_id: str, pid: int) -> int | None:
    """None while the job runs, else its exit code (-1 when it was not started by this process and is gone)."""
    proc = _children.get(job_id)
    if proc is not None:
        return proc.poll()
    try:
        os.kill(pid, 0)
        return None
    except ProcessLookupError:
        return -1
    except PermissionError:
        return None


def status(job_id: str) -> JobStatus:
    folder = jobs_dir() / job_id
    try:
        meta = json.loads((folder / "job.json").read_text())
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"Job {job_id} cannot be read ({exc}).", "Start it again.") from None
    try:
        progress = json.loads((folder / "progress.json").read_text())
    except (OSError, ValueError):
        progress = {}
    final = folder / "final.json"
    if final.is_file():
        end = json.loads(final.read_text())
        state, message = end["state"], end.get("message", "")
    else:
        code = _exit_code(job_id, int(meta["pid"]))
        if code is None:
            state, message = "running", ""
        else:
            state = "done" if code == 0 else "failed"
            message = "" if code == 0 else _last_line(folder / "log.txt")
            atomic_write_json(final, {"state": state, "message": message, "exit_code": code, "time": time.time()})
    return JobStatus(meta["id"], meta["kind"], meta["title"], state, float(meta["started"]), progress, message,
                     meta.get("output", ""))


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def list_jobs(kind: str | None = None) -> list[JobStatus]:
    """Every job (newest first), of ``kind`` when given."""
    root = jobs_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted((p for p in root.iterdir() if (p / "job.json").is_file()), reverse=True):
        try:
            st = status(folder.name)
        except WorkbenchError:
            continue
        if kind is None or st.kind == kind:
            out.append(st)
    return out


def cancel_job(job_id: str) -> JobStatus:
    """Stop a running job (its whole process group) and mark it cancelled; a finished job is left as it is."""
    current = status(job_id)
    if current.state != "running":
        return current
    meta = json.loads((jobs_dir() / job_id / "job.json").read_text())
    try:
        os.killpg(int(meta["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc = _children.get(job_id)
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(int(meta["pid"]), signal.SIGKILL)
            proc.wait(timeout=10)
    atomic_write_json(jobs_dir() / job_id / "final.json", {"state": "cancelled", "message": "cancelled by a user",
                                                           "time": time.time()})
    return status(job_id)
