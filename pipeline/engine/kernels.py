"""The engine's compiled kernels by name, each from the ahead-of-time build where it can be,
else from numba's JIT: `pipeline.engine._kernels` (built by ``setup.py`` from the functions of
`pipeline.engine.compiled`, one variant per argument types in
`pipeline.engine.kernel_types`) when the module exists, was built for this CPU and has a
variant for the call's argument types; `pipeline.engine.compiled` otherwise.

Why: the JIT costs a process about 1 s of GIL-bound start-up (importing numba, its typing
registries, loading each cached kernel) before the first kernel runs; the built module
imports in under a millisecond.  Both are numba's code generation from the same functions
without fast-math, so the same bits (tested variant by variant).

A built variant trusts its argument types (a wrong one would crash the process), so every
call is checked first: an input array of a layout no variant takes is copied row-major (C),
and any other mismatch (a dtype, a byte order, a number of dimensions, an output array that cannot be
written in place, a scalar of another type) goes to the JIT.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipeline.engine import kernel_types as types


def _built_module() -> Any:
    """`pipeline.engine._kernels` if it is installed and made for this CPU, else None.

    ``KMEANS_PIPELINE_AOT=0`` ignores it (the tests compare both paths)."""
    if os.environ.get("KMEANS_PIPELINE_AOT", "1") == "0":
        return None
    try:
        from pipeline.engine import _kernels
    except ImportError:
        return None
    key = _kernels.cpu_key()
    return _kernels if key == 0 or key == types.cpu_key() else None


_BUILT = _built_module()
AHEAD_OF_TIME = _BUILT is not None

_SCALARS = {"bool": (bool, np.bool_), "int64": (int, np.integer),
            "float64": (float, int, np.floating, np.integer)}


def _order(array: np.ndarray) -> str:
    flags = array.flags
    if not flags.aligned:
        return ""
    return "C" if flags.c_contiguous else "F" if flags.f_contiguous else ""


class Kernel:
    """One kernel: called like `pipeline.engine.compiled`'s function of the same name."""

    def __init__(self, name: str, module: Any):
        self.name = name
        variants = types.VARIANTS[name]
        self._arrays = tuple(i for i, arg in enumerate(variants[0][0])
                             if isinstance(arg, types.Array))
        self._variants: dict[tuple, tuple] = {}
        if module is not None:
            for index, (args, _) in enumerate(variants):
                function = getattr(module, types.symbol(name, index), None)
                if function is None:  # a module built before this kernel: the JIT's
                    continue
                key = tuple((np.dtype(args[i].dtype), args[i].order) for i in self._arrays)
                self._variants[key] = (function, args)

    def built_for(self, *args) -> Any:
        """The built variant and the arguments to give it, or None: the JIT's call."""
        try:
            arrays = [np.asarray(args[i]) if isinstance(args[i], np.ndarray) else args[i]
                      for i in self._arrays]
            dtypes = [array.dtype for array in arrays]
            orders = [_order(array) for array in arrays]
        except (AttributeError, IndexError, TypeError):
            return None
        # the variant of these layouts, else the row-major one (inputs copied to it)
        found = (self._variants.get(tuple(zip(dtypes, orders)))
                 or self._variants.get(tuple((dtype, "C") for dtype in dtypes)))
        if found is None:
            return None
        function, spec = found
        if len(args) != len(spec):
            return None
        given = list(args)
        for i, array, order in zip(self._arrays, arrays, orders):
            kind = spec[i]
            if array.ndim != kind.ndim:
                return None
            if kind.out:
                if order != kind.order or not array.flags.writeable:
                    return None
            elif order != kind.order:
                array = np.require(array, requirements=("C", "A"))
            given[i] = array
        for i, kind in enumerate(spec):
            if not isinstance(kind, types.Array) and not isinstance(given[i], _SCALARS[kind]):
                return None
        return function, given

    def __call__(self, *args):
        built = self.built_for(*args)
        if built is None:
            from pipeline.engine import compiled  # numba's JIT: the first call costs ~1 s

            return getattr(compiled, self.name)(*args)
        function, given = built
        return function(*given)


nearest = Kernel("nearest", _BUILT)
label_window = Kernel("label_window", _BUILT)
distances_to = Kernel("distances_to", _BUILT)
assign_sums = Kernel("assign_sums", _BUILT)
lloyd_assign = Kernel("lloyd_assign", _BUILT)
weighted_sums = Kernel("weighted_sums", _BUILT)
pairwise_sum = Kernel("pairwise_sum", _BUILT)
plusplus = Kernel("plusplus", _BUILT)
label_codes = Kernel("label_codes", _BUILT)
label_codes_sums = Kernel("label_codes_sums", _BUILT)


def warm_up(pixel_dtypes: tuple = (), label_dtypes: tuple = (np.uint8,)) -> None:
    """`compiled.warm_up` when the kernels come from the JIT; nothing to do when built."""
    if not AHEAD_OF_TIME:
        from pipeline.engine import compiled

        compiled.warm_up(pixel_dtypes, label_dtypes)
