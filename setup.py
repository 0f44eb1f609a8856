"""Builds `pipeline.engine._kernels`: the numba kernels of `pipeline.engine.compiled`, compiled
ahead of time by numba's ``pycc`` for every variant in `pipeline.engine.kernel_types`.

Why: numba's JIT costs a process about 1 s before its first kernel runs (importing numba,
loading its typing registries, loading each cached kernel), all of it holding the GIL; the
built module imports in under a millisecond and holds the same machine code.  The metadata is
in pyproject.toml; this file only adds the extension.

The build never fails the install: without numba's ``pycc`` or a C compiler, or with
``KMEANS_PIPELINE_AOT=0`` in the environment, the package installs without the module and
numba compiles the kernels at first use (the same bits, tested).  The code is made for the
building machine's CPU (like numba's JIT); the module's ``cpu_key()`` is a hash of that CPU's
features (`cpu_key`), and `pipeline.engine.kernels` uses the module only where the running
CPU's hash is the same.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
ENGINE = HERE / "pipeline" / "engine"
MODULE = "pipeline.engine._kernels"


def _load(name: str, path: Path):
    """A module of the package, loaded from its file alone (the build has no dask)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module




def _extensions() -> list:
    if os.environ.get("KMEANS_PIPELINE_AOT", "1") == "0":
        return []
    try:
        return [_extension()]
    except Exception as exc:  # noqa: BLE001 - any reason means: install without it
        warnings.warn(f"{MODULE} not built ({exc}); numba compiles the kernels at first use")
        return []


def _extension():
    """The extension of every variant in `kernel_types.VARIANTS`, plus ``cpu_key()``."""
    from numba.pycc import CC

    types = _load("pipeline.engine.kernel_types", ENGINE / "kernel_types.py")
    compiled = _load("pipeline.engine.compiled", ENGINE / "compiled.py")
    cc = CC("_kernels", source_module="pipeline.engine.compiled")
    # the building CPU's instructions (numba's JIT does the same); only on Linux, where
    # `pipeline.engine.kernels` can check the running CPU for them before using the module
    key = types.cpu_key()
    cc.target_cpu = "host" if key else ""

    def cpu_key():
        return key

    cc.export("cpu_key", "i8()")(cpu_key)
    for kernel, variants in types.VARIANTS.items():
        function = getattr(compiled, kernel).py_func
        for index, (args, returns) in enumerate(variants):
            cc.export(types.symbol(kernel, index), types.numba_signature(args, returns))(function)
    extension = cc.distutils_extension()
    # numba's C sources (its module mixin, NRT) are absolute paths in its site-packages, which
    # setuptools refuses as setup() arguments: they are given to the build step alone
    extension.pycc_sources, extension.sources, extension.depends = extension.sources, [], []
    return extension


def _release_gil() -> None:
    """pycc's Python wrappers hold the GIL through the call; the kernels' ``nogil=True`` is a
    JIT option it ignores.  Every flag set it compiles with releases it instead, so dask's
    threads run the kernels in parallel as they run the JIT's."""
    import numba.pycc.compiler as pycc_compiler
    from numba.core.compiler import Flags

    class GilFreeFlags(Flags):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True

    pycc_compiler.Flags = GilFreeFlags


class BuildKernels(build_ext):
    """build_ext that compiles pycc's object files first and never fails the install."""

    def build_extension(self, ext):
        try:
            if getattr(ext, "_cc", None) is not None:
                _release_gil()
                ext.sources = ext.pycc_sources
                ext._prepare_object_files(self)
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"{MODULE} not built ({exc}); numba compiles the kernels at first "
                          "use")


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildKernels})
