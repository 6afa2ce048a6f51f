"""vLLM's first look at a model class, in this process instead of a fresh Python.

    python bench/step.py --shape 0.5b --steps 6          # its cold start is what this shortens

On a cold cache (no `modelinfos` under VLLM_CACHE_ROOT, i.e. the first run of an output_dir),
vLLM 0.26 inspects the model class in a subprocess, so that a multiprocess engine's parent
never initialises CUDA: a new interpreter imports vLLM and the model module, ~19-21 s of a
cold engine start on the GPU host (docs/PERFORMANCE.md, third lease of 2026-11-30). Our
engine lives in the rank's own process (external_launcher), which has initialised CUDA already
and imports the same model module a moment later to load it, so the inspection runs here.
vLLM still writes its cache file; a warm start never reaches this path.

The hook is vLLM's private `registry._run_in_subprocess`: checked by name and restored on
exit; where a vLLM version lacks it, nothing is patched and vLLM behaves as shipped, and an
inspection that fails here is retried vLLM's way (a subprocess).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)
REGISTRY = "vllm.model_executor.models.registry"
HOOK = "_run_in_subprocess"


@contextlib.contextmanager
def models_inspected_in_process(module: str = REGISTRY) -> Iterator[bool]:
    """While open, vLLM inspects model classes in this process; yields whether it could."""
    try:
        registry = importlib.import_module(module)
    except ImportError:
        registry = None
    shipped = getattr(registry, HOOK, None)
    if not callable(shipped):
        log.info("vLLM has no %s.%s: model inspection left to vLLM", module, HOOK)
        yield False
        return

    def in_process(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # whatever it was, vLLM's own way may still work
            log.warning("vLLM model inspection failed in-process (%s); in a subprocess instead", e)
            return shipped(fn)

    setattr(registry, HOOK, in_process)
    try:
        yield True
    finally:
        setattr(registry, HOOK, shipped)
