"""The argument types each compiled kernel is built for ahead of time: one table read by
``setup.py`` (which compiles every variant into `pipeline.engine._kernels` with numba's
``pycc``) and by `pipeline.engine.kernels` (which hands a call to the variant its arguments
match).  Plain data, no numba: the build loads this file on its own.

An argument is a scalar type (``"bool"``, ``"int64"``, ``"float64"``) or an array: a dtype
name, a number of dimensions, whether the kernel writes it (``out``) and its memory order.
The built variants take contiguous, aligned arrays in the machine's byte order:
`pipeline.engine.kernels` copies an input array of another layout, and sends a call with any
other type, or an output array it cannot write in place, to numba's JIT.
"""

from __future__ import annotations

import hashlib
from itertools import product
from typing import NamedTuple


class Array(NamedTuple):
    dtype: str
    ndim: int
    out: bool = False
    order: str = "C"  # "C" (row-major) or "F" (column-major), contiguous either way


SCALARS = ("bool", "int64", "float64")
# The raster dtypes `pipeline.sources.rasters` reads (SUPPORTED_DTYPES) and photos' uint8.
PIXEL_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
LABEL_DTYPES = ("uint8", "uint16")  # `pipeline.sinks.tiled.label_dtype`

F8_1, F8_2, I8_1 = Array("float64", 1), Array("float64", 2), Array("int64", 1)
F8_1_OUT, F8_2_OUT = Array("float64", 1, True), Array("float64", 2, True)
I8_1_OUT = Array("int64", 1, True)


def _variants() -> dict[str, list[tuple[tuple, str]]]:
    """kernel name -> [(argument types, return type)], in the order the build numbers them."""
    table: dict[str, list[tuple[tuple, str]]] = {
        "nearest": [((Array(dtype, 2), F8_2, F8_1, F8_1, "bool", I8_1_OUT, F8_1_OUT, F8_1_OUT,
                      "bool"), "none") for dtype in PIXEL_DTYPES + ("int8", "int64")],
        # a window's pixels come band-interleaved ("C") or band by band ("F": rasterio's)
        "label_window": [((Array(dtype, 2, order=order), Array("bool", 1), F8_2, F8_1, F8_1,
                           "bool", F8_2, "int64", Array(label, 1, True), I8_1_OUT, F8_2_OUT,
                           F8_2_OUT), "none")
                         for dtype, label, order in product(PIXEL_DTYPES, LABEL_DTYPES, "CF")],
        "distances_to": [((F8_2, F8_2, F8_2_OUT), "none")],
        "assign_sums": [((Array(dtype, 2), F8_1, F8_2, I8_1_OUT, F8_1_OUT, F8_2_OUT, F8_1_OUT),
                         "none") for dtype in ("float64", "float32")],
        "lloyd_assign": [((F8_2, F8_1, F8_2, Array("int64", 2), F8_2, "int64", "float64",
                           "float64", "float64", I8_1_OUT, F8_1_OUT, F8_1_OUT, F8_2_OUT,
                           F8_1_OUT), "none")],
        "weighted_sums": [((F8_2, F8_1, I8_1, F8_2_OUT, F8_1_OUT), "none")],
        "pairwise_sum": [((F8_1, "int64", "int64"), "float64")],
        "plusplus": [((F8_2, F8_1, "int64", F8_1, "int64", I8_1_OUT), "int64")],
        "label_codes": [((Array("uint32", 1), F8_2, Array("int64", 2), F8_2, "float64", "int64",
                          Array(label, 1, True), Array("float32", 1, True),
                          Array(label, 1, True)), "none") for label in LABEL_DTYPES],
        "label_codes_sums": [((Array("uint32", 1), F8_2, Array("int64", 2), F8_2, "float64",
                               "int64", Array(label, 1, True), Array(label, 1, True),
                               I8_1_OUT, F8_2_OUT), "none") for label in LABEL_DTYPES],
    }
    return table


VARIANTS = _variants()

_NUMBA = {"bool": "b1", "int64": "i8", "float64": "f8", "float32": "f4", "uint8": "u1",
          "uint16": "u2", "int16": "i2", "uint32": "u4", "int32": "i4", "int8": "i1",
          "none": "void"}


def symbol(kernel: str, index: int) -> str:
    """The exported name of a kernel's ``index``-th variant in `pipeline.engine._kernels`."""
    return f"{kernel}__{index}"


def numba_signature(args: tuple, returns: str) -> str:
    """A variant as numba's signature string, e.g. ``"void(f8[:, ::1], b1)"``."""
    def one(arg) -> str:
        if isinstance(arg, Array):
            axes = [":"] * (arg.ndim - 1) + ["::1"]
            return f"{_NUMBA[arg.dtype]}[{', '.join(axes if arg.order == 'C' else axes[::-1])}]"
        return _NUMBA[arg]
    return f"{_NUMBA[returns]}({', '.join(one(arg) for arg in args)})"


def cpu_key() -> int:
    """A hash (63 bits) of this CPU's features as Linux lists them (``/proc/cpuinfo``), or 0
    where they cannot be read: the module is then built for a generic CPU of the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(set(line.partition(":")[2].split())))
                    digest = hashlib.sha256(flags.encode()).digest()
                    return int.from_bytes(digest[:8], "little") >> 1 or 1
    except OSError:
        pass
    return 0
