"""MLflow's default store for a run: a sqlite file in the run folder, created atomically.

    hpc-ppo run configs/tiny-cpu.yaml      # RUN_DIR/mlflow.db, built on the first start

Used by tracking.py's background thread; kept apart because it touches MLflow internals.
"""

from __future__ import annotations

import os
from pathlib import Path


def create_sqlite_store(path: Path) -> None:
    """Build MLflow's sqlite schema under a temporary name, then rename it into place.

    MLflow creates the schema through many separately committed migrations; a kill half-way
    left a store every later job failed on ("out-of-date database schema"). Now the store is
    either absent (and rebuilt) or complete.
    """
    if path.exists():
        return
    from mlflow import MlflowClient

    tmp = path.with_name(f".{path.name}.{os.getpid()}.init")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    MlflowClient(tracking_uri=uri).search_experiments()  # runs every migration
    _dispose_sqlite_engines(uri)
    os.replace(tmp, path)


def _dispose_sqlite_engines(uri: str) -> None:
    """Close and forget MLflow's cached SQLAlchemy engine for `uri` (the temporary file)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    except Exception:  # an internal detail of MLflow: closing is a courtesy, not a need
        pass
