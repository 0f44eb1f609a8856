"""kmeans-pipeline: k-means colour segmentation of image collections on dask.

The public API (see the README, "Python API")::

    import pipeline
    job = pipeline.Job.from_yaml("job.yaml", overrides={"kmeans.k": 8})
    report = pipeline.run(job)

Names load lazily (module ``__getattr__``): ``import pipeline`` imports neither dask, Pillow
nor scikit-learn; the first use of a name imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute"
_LAZY = {
    "Job": "pipeline.api:Job",
    "Image": "pipeline.sources.collection:Image",
    "Model": "pipeline.api:Model",
    "run": "pipeline.api:run",
    "open_collection": "pipeline.api:open_collection",
    "fit": "pipeline.api:fit",
    "validate": "pipeline.api:validate",
    "apply": "pipeline.api:apply",
    "submit": "pipeline.api:submit",
    "status": "pipeline.api:status",
    "cancel": "pipeline.api:cancel",
    "KMeans": "pipeline.estimator:KMeans",
    "PipelineError": "pipeline.errors:PipelineError",
    "ConfigError": "pipeline.errors:ConfigError",
    "ImageReadError": "pipeline.errors:ImageReadError",
    "exit_status": "pipeline.errors:exit_status",
    "EXIT_STATUSES": "pipeline.errors:EXIT_STATUSES",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
