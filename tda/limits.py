"""What one visitor of a shared server may ask for: every limit in one place.

Each limit has a default that suits the hosted demo and an environment variable the
operator sets to change it (read on every call, so a restart is not needed for pages
that read it afresh). A value that is not a positive whole number is ignored with a
warning in the server log, and the default is used.

| variable                | default     | limits                                              |
|-------------------------|-------------|-----------------------------------------------------|
| TDA_MAX_TOPK            | 24          | rows of the Attribution page's top-k                |
| TDA_MAX_VERIFY          | 64          | top images re-scored by exact chains ("Verify")     |
| TDA_MAX_STEPS           | 250         | sampling steps of a run the app serves              |
| TDA_JOBS                | CPU cores   | expensive computations (sweeps, verification,       |
|                         |             | live evaluation) running at once                    |
| TDA_QUEUE               | 32          | computations waiting for a worker; more are refused |
|                         |             | with "busy, try again"                              |
| TDA_MAX_UPLOAD_MB       | 5           | size of an uploaded image file                      |
| TDA_MAX_UPLOAD_PIXELS   | 16777216    | width × height of an uploaded image (4096²)         |
| TDA_MAX_LIVE_SAMPLES    | 256         | samples per model of Diagnostics' live evaluation   |
| TDA_MAX_LIVE_SEEDS      | 8           | seeds scored exactly by the live evaluation         |
| TDA_THREADS             | 1           | torch threads of each page run and each job (they   |
|                         |             | run side by side; two-thread ops on a busy 2-core   |
|                         |             | machine were measured 10x slower than one)          |
| TDA_NICE                | 10          | niceness (1-19) of the worker processes that run    |
|                         |             | chains, so serving pages goes first                 |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    top_k: int = 24
    verify: int = 64
    steps: int = 250
    jobs: int = max(1, os.cpu_count() or 1)
    queue: int = 32
    upload_mb: int = 5
    upload_pixels: int = 4096 * 4096
    live_samples: int = 256
    live_seeds: int = 8
    threads: int = 1
    nice: int = 10


ENV = {
    "top_k": "TDA_MAX_TOPK",
    "verify": "TDA_MAX_VERIFY",
    "steps": "TDA_MAX_STEPS",
    "jobs": "TDA_JOBS",
    "queue": "TDA_QUEUE",
    "upload_mb": "TDA_MAX_UPLOAD_MB",
    "upload_pixels": "TDA_MAX_UPLOAD_PIXELS",
    "live_samples": "TDA_MAX_LIVE_SAMPLES",
    "live_seeds": "TDA_MAX_LIVE_SEEDS",
    "threads": "TDA_THREADS",
    "nice": "TDA_NICE",
}


def limits() -> Limits:
    """The defaults, overridden by the operator's environment variables."""
    out = {}
    for f in fields(Limits):
        raw = os.environ.get(ENV[f.name], "").strip()
        if not raw:
            continue
        if raw.isascii() and raw.isdigit() and 0 < int(raw) < 2**31:
            out[f.name] = int(raw)
        else:
            log.warning(
                "%s=%r is not a positive whole number; using %s",
                ENV[f.name],
                raw,
                getattr(Limits, f.name),
            )
    return Limits(**out)
