"""Run directories: creation rules, atomic writes, the manifest, and checkpoints.

Files are written to a temporary file in the same directory and renamed into
place, so a reader (or a crash) never sees half a table. Checkpoints are orbax
checkpoints of the sweep state between chunks; PRNG keys are stored as raw
key data.
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

PACKAGES = ("rlbias_jax", "jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy", "scipy",
            "pandas", "matplotlib", "transformers", "tokenizers", "safetensors", "gguf")


class RunDirError(ValueError):
    """A user error about the run directory (exists, missing, not resumable)."""


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_run_dir(out_dir: str | Path, name: str, *, resume: bool, overwrite: bool) -> Path:
    """The run directory's path if the rules allow this start (no side effects); RunDirError otherwise.

    A new run needs a missing or empty directory (or --overwrite); a resumed one needs a manifest."""
    run_dir = Path(out_dir) / name
    try:
        if resume:
            if not (run_dir / "manifest.json").is_file():
                raise RunDirError(f"cannot resume: {run_dir} has no manifest.json (start it without --resume)")
            return run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"{run_dir} exists and is not a directory")
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise RunDirError(f"run directory {run_dir} already exists; use --resume to continue it, --overwrite to replace it, or set run.name")
    except OSError as error:
        raise RunDirError(f"cannot use the run directory {run_dir}: {error.strerror or error}") from None
    return run_dir


def prepare_run_dir(out_dir: str | Path, name: str, *, resume: bool, overwrite: bool) -> Path:
    """The run directory for a new run (must not exist, unless overwrite) or a resumed one (must exist)."""
    run_dir = check_run_dir(out_dir, name, resume=resume, overwrite=overwrite)
    if resume:
        return run_dir
    try:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            import shutil

            shutil.rmtree(run_dir)  # only with --overwrite (checked above)
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create the run directory {run_dir}: {error.strerror or error}") from None
    return run_dir


# Fields that may change between a run and its resumption: where and how often it is
# checkpointed, and how the processes find each other. Everything else must match.
RESUME_IGNORED_FIELDS = {
    "run": ("checkpoint_keep", "checkpoint_every_s", "coordinator_address", "num_processes", "process_id"),
}


def resume_key(config_dict: dict) -> dict:
    """The part of a config (as in manifest.json: JSON types) that a resumed run must share."""
    normalised = json.loads(json.dumps(config_dict, default=_json_default))
    for section, names in RESUME_IGNORED_FIELDS.items():
        for name in names:
            normalised.get(section, {}).pop(name, None)
    return normalised


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


class RunLock:
    """An exclusive lock on a run directory for as long as one process works in it.

    Taken with flock on `<run_dir>/.lock`, so it disappears with the process (even SIGKILL)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.handle = None

    def acquire(self) -> "RunLock":
        try:
            self.handle = open(self.path, "w")
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            self.handle = None
            raise RunDirError(f"another rlbias process is working in {self.path.parent}; wait for it or stop it first") from None
        except OSError as error:
            raise RunDirError(f"cannot lock {self.path}: {error.strerror or error}") from None
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def git_state() -> tuple[str | None, bool]:
    """(HEAD SHA, dirty) of the checkout the package lives in; (None, False) outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_list() -> list[dict]:
    return [
        {"id": device.id, "platform": device.platform, "kind": device.device_kind, "process_index": device.process_index}
        for device in jax.devices()
    ]


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def environment_fields() -> dict:
    """What this process runs on, as the manifest records it: git state, packages, Python,
    platform, devices and process count."""
    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": device_list(),
        "process_count": jax.process_count(),
    }


def new_manifest(config_dict: dict, name: str, experiment: str) -> dict:
    return {
        "name": name,
        "experiment": experiment,
        "status": "running",
        "config": config_dict,
        **environment_fields(),
        "started_at": now_iso(),
        "finished_at": None,
        "wall_time_s": None,
        "phases": {},
        "tasks_completed": [],
    }


def read_manifest(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunDirError(f"{run_dir}/manifest.json is unreadable: {error}") from None
