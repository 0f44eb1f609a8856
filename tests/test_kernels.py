"""The kernels built ahead of time (`pipeline.engine._kernels`, by setup.py) are numba's JIT
kernels bit for bit, variant by variant; `pipeline.engine.kernels` hands them only arguments
of the types they were built for (anything else goes to the JIT and never crashes); and with
them built, a run imports no numba at all."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_geo import write_raster

from pipeline.engine import compiled, kernel_types, kernels, kmeans

VARIANTS = [(name, index) for name, variants in kernel_types.VARIANTS.items()
            for index in range(len(variants))]


def test_the_install_built_every_variant():
    """The README's install (and CI's) builds the module; without it every run pays numba's
    start-up again, so a build that silently failed must fail here."""
    assert kernels.AHEAD_OF_TIME, ("pipeline.engine._kernels is missing or was built for "
                                   "another CPU: `pip install .` builds it (setup.py)")
    for name, index in VARIANTS:
        assert callable(getattr(kernels._BUILT, kernel_types.symbol(name, index)))


def _array(rng, kind, shape, low=-50.0, high=300.0):
    dtype = np.dtype(kind.dtype)
    if dtype == np.bool_:
        values = rng.random(shape) < 0.2
    elif dtype.kind == "f":
        values = rng.uniform(low, high, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, int(low)), min(info.max, int(high)) + 1, shape,
                              dtype=dtype)
    return np.asarray(values, order=kind.order)


def _arguments(name, spec, rng):
    """Valid arguments of one variant: random rows, centroids among them, consistent state."""
    n, d, k = 997, 3, 6
    if name == "nearest":
        x = _array(rng, spec[0], (n, d))
        centroids = x[rng.integers(0, n, k)].astype(np.float64) + rng.normal(0, 0.5, (k, d))
        return (x, centroids, rng.uniform(0, 9, d), rng.uniform(1, 3, d), True,
                np.empty(n, np.int64), np.empty(n), np.empty(n), True)
    if name == "label_window":
        x = _array(rng, spec[0], (n, d), 0, 120)
        centroids = x[rng.integers(0, n, k)].astype(np.float64)
        centroids[1] = centroids[0]  # a tie: the lowest index must win
        label = np.dtype(spec[8].dtype)
        return (x, _array(rng, spec[1], n), centroids, np.zeros(d), np.ones(d), False,
                centroids.copy(), int(np.iinfo(label).max), np.empty(n, label),
                np.zeros(k, np.int64), np.zeros((k, d)), np.zeros((k, d)))
    x = rng.uniform(0, 255, (n, d))
    w = rng.integers(1, 4, n).astype(np.float64)
    centroids = x[rng.integers(0, n, k)] + rng.normal(0, 0.5, (k, d))
    if name == "distances_to":
        return np.ascontiguousarray(x.T), centroids, np.empty((k, n))
    if name == "assign_sums":
        return (x.astype(spec[0].dtype), w, centroids, np.empty(n, np.int64), np.empty(n),
                np.zeros((k, d)), np.zeros(k))
    labels, distances, second = kmeans.nearest(x, centroids, second=True, compiled=False)
    if name == "lloyd_assign":
        moved = centroids + rng.normal(0, 2.0, centroids.shape)
        drift = np.sqrt(((moved - centroids) ** 2).sum(axis=1))
        top = np.argsort(drift, kind="stable")[-2:]
        return (x, w, moved, *kmeans.neighbour_gaps(moved), int(top[-1]), float(drift[top[-1]]),
                float(drift[top[0]]), kmeans.SLACK, labels, distances, np.sqrt(second),
                np.empty((k, d)), np.empty(k))
    if name == "weighted_sums":
        return x, w, labels, np.empty((k, d)), np.empty(k)
    if name == "pairwise_sum":
        return rng.normal(0, 1e3, n), 5, n - 5
    if name == "plusplus":
        trials = 2 + int(np.log(k))
        return (np.ascontiguousarray(x.T), w, 7, rng.random((k - 1) * trials), trials,
                np.empty(k, np.int64))
    if name == "label_codes":
        label = np.dtype(spec[6].dtype)
        unknown = int(np.iinfo(label).max)
        codes = (rng.integers(0, 40, (n, 3)) * [1, 256, 65536]).sum(axis=1).astype(np.uint32)
        return (codes, centroids, *kmeans.neighbour_gaps(centroids), kmeans.SLACK, unknown,
                np.full(1 << 24, unknown, label), np.zeros(1 << 24, np.float32),
                np.empty(n, label))
    if name == "label_codes_sums":
        label = np.dtype(spec[6].dtype)
        unknown = int(np.iinfo(label).max)
        codes = (rng.integers(0, 40, (n, 3)) * [1, 256, 65536]).sum(axis=1).astype(np.uint32)
        return (codes, centroids, *kmeans.neighbour_gaps(centroids), kmeans.SLACK, unknown,
                np.full(1 << 24, unknown, label), np.empty(n, label), np.zeros(k, np.int64),
                np.zeros((k, 4)))
    raise AssertionError(f"no arguments for {name}")


def _copies(args):
    return [a.copy(order="K") if isinstance(a, np.ndarray) else a for a in args]


@pytest.mark.parametrize("name,index", VARIANTS, ids=[kernel_types.symbol(*v) for v in VARIANTS])
def test_every_built_variant_gives_the_jits_bits(name, index):
    spec, _ = kernel_types.VARIANTS[name][index]
    args = _arguments(name, spec, np.random.default_rng(index))
    built_args, jit_args = _copies(args), _copies(args)
    built = getattr(kernels._BUILT, kernel_types.symbol(name, index))
    assert getattr(kernels, name).built_for(*built_args)[0] is built  # dispatch finds it
    got = built(*built_args)
    want = getattr(compiled, name)(*jit_args)
    assert got == want
    for a, b in zip(built_args, jit_args):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _label_window_args(x, labels=None):
    k, d = 4, x.shape[1]
    centroids = np.linspace(0, 200, k * d).reshape(k, d)
    n = len(x)
    return (x, np.zeros(n, bool), centroids, np.zeros(d), np.ones(d), False, centroids, 255,
            np.empty(n, np.uint8) if labels is None else labels, np.zeros(k, np.int64),
            np.zeros((k, d)), np.zeros((k, d)))


def _same_as_jit(args):
    built_args, jit_args = _copies(args), _copies(args)
    kernels.label_window(*built_args)
    compiled.label_window(*jit_args)
    for a, b in zip(built_args, jit_args):
        if isinstance(a, np.ndarray):
            assert a.tobytes() == b.tobytes()


def test_layouts_no_variant_takes_are_copied_and_give_the_same_labels():
    pixels = np.random.default_rng(0).integers(0, 200, (40, 30, 5), dtype=np.uint16)
    strided = pixels[::2, ::3, 1:4].reshape(-1, 3)[::-1]  # neither C nor F
    assert not strided.flags.c_contiguous and not strided.flags.f_contiguous
    args = _label_window_args(strided)
    assert kernels.label_window.built_for(*args) is not None  # copied, then built
    _same_as_jit(args)
    planar = np.asfortranarray(strided)  # band by band: a variant of its own, no copy
    built, given = kernels.label_window.built_for(*_label_window_args(planar))
    assert given[0] is planar
    _same_as_jit(_label_window_args(planar))


@pytest.mark.parametrize("case", ["float16 pixels", "byte-swapped pixels", "read-only labels",
                                  "strided labels", "int labels", "float masked label",
                                  "missing argument"])
def test_arguments_no_variant_was_built_for_go_to_the_jit(case):
    x = np.random.default_rng(1).integers(0, 200, (50, 3)).astype(np.uint16)
    args = list(_label_window_args(x))
    if case == "float16 pixels":
        args[0] = x.astype(np.float16)
    elif case == "byte-swapped pixels":
        args[0] = x.astype(">u2")
    elif case == "read-only labels":
        args[8].flags.writeable = False
    elif case == "strided labels":
        args[8] = np.empty(2 * len(x), np.uint8)[::2]
    elif case == "int labels":
        args[8] = np.empty(len(x), np.int32)
    elif case == "float masked label":
        args[7] = 255.0
    else:
        args = args[:-1]
    assert kernels.label_window.built_for(*args) is None
    if case == "strided labels":
        _same_as_jit(args)  # the JIT takes it, with the same results


def test_a_raster_job_and_a_photo_job_import_no_numba(tmp_path):
    """Built ahead of time, the kernels need no numba: the ~1 s of its start-up is gone.  (Nor
    does a GeoTIFF need tifffile: its tags are checked by `geo.first_ifd_tags`.)"""
    from PIL import Image


    rng = np.random.default_rng(0)
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(photo)
    raster = tmp_path / "in" / "scene.tif"
    write_raster(raster, rng.integers(1, 4000, (3, 700, 600), dtype=np.uint16), block=256)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pipeline import api
        for name in ("photo.png", "scene.tif"):
            api.run(api.Job.from_dict({{"input": {{"paths": [{str(tmp_path / 'in')!r} + "/" + name]}},
                     "kmeans": {{"k": 5, "sample_pixels": 200000}},
                     "output": {{"dir": {str(tmp_path)!r} + "/out-" + name}}}}), progress=None)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                                ("numba", "llvmlite", "tifffile"))))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_without_the_built_module_the_jit_writes_the_same_files(tmp_path):
    """A platform where the build failed (KMEANS_PIPELINE_AOT=0 here) runs numba's JIT: the
    same model and the same label files, byte for byte, for a raster and a photo job."""
    import os

    from PIL import Image

    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(inputs / "p.png")
    write_raster(inputs / "s.tif", rng.integers(1, 4000, (3, 300, 260), dtype=np.uint16))
    outputs = {}
    for aot in ("1", "0"):
        for name in ("p.png", "s.tif"):
            out = tmp_path / f"out-{aot}-{name}"
            job = tmp_path / f"job-{aot}-{name}.json"
            job.write_text(json.dumps({"input": {"paths": [str(inputs / name)]},
                                       "kmeans": {"k": 6, "seed": 1},
                                       "output": {"dir": str(out), "segmented": False}}))
            done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "-q"],
                                  capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "KMEANS_PIPELINE_AOT": aot})
            assert done.returncode == 0, done.stderr[-2000:]
            labels = sorted((out / "labels").iterdir())
            assert labels
            model = json.loads((out / "model.json").read_text())
            assert model["centroids"]
            outputs[(aot, name)] = ([p.read_bytes() for p in labels],
                                    json.dumps(model.get("centroids")))
    for name in ("p.png", "s.tif"):
        assert outputs[("1", name)] == outputs[("0", name)], name
