"""MLflow sqlite stores: the run's own (RUN_DIR/mlflow.db) or one shared by many runs.

    hpc-ppo run configs/tiny-cpu.yaml                                       # RUN_DIR/mlflow.db
    hpc-ppo run configs/tiny-cpu.yaml tracking.uri=sqlite:////shared/mlflow.db   # side by side

A store is created atomically on first use; its artifacts live next to it (`mlartifacts/`),
never under the job's working directory (MLflow's default, `./mlruns`, differs per job).
Used by the tracker's MLflow process (mlflow_mirror.py); kept apart because it touches MLflow
internals.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (4 slashes: absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).absolute()


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps artifacts: `mlartifacts/` beside the
    file; None (the server's choice) for other stores."""
    db = sqlite_file(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def create_sqlite_store(path: Path) -> None:
    """Build MLflow's sqlite schema under a temporary name, then rename it into place.

    MLflow creates the schema through many separately committed migrations; a kill half-way
    left a store every later job failed on ("out-of-date database schema"). Now the store is
    either absent (and rebuilt) or complete. The parent folder is created if missing.
    """
    if path.exists():
        return
    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: runs sharing a store may build it at once, even with one pid (threads,
    # or processes on two nodes).
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".init")
    os.close(fd)
    tmp = Path(name)
    uri = f"sqlite:///{tmp}"
    MlflowClient(tracking_uri=uri).search_experiments()  # runs every migration
    _dispose_sqlite_engines(uri)
    # Published without replacing: runs sharing one store may start together, and a rename
    # over a store another run already uses would drop that run's records.
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: a rename, as before
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _dispose_sqlite_engines(uri: str) -> None:
    """Close and forget MLflow's cached SQLAlchemy engine for `uri` (the temporary file)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    except Exception:  # an internal detail of MLflow: closing is a courtesy, not a need
        pass
