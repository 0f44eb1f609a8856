#!/usr/bin/env python3
"""Palettes at high k: kmeans-pipeline against libimagequant and Pillow's quantizers (issue 14).

Run by hand, never by the tests:

    python benchmarks/palette.py --make-collection PATH/TO/make_collection.py
    python benchmarks/palette.py --folder DIR         # any folder of JPEG / PNG photos

Without ``--folder`` the ``small`` preset of the collection generator (8 photos, ~20 Mpx) is
built under ``--workdir`` (default ``.bench``), as bench.py does; job files and outputs go there.

Per-image palettes (``scope: image``): ours is the CLI (``kmeans-pipeline run``, default
threads scheduler, segmented on, labels and masks off), one process, start-up counted.
libimagequant (PyPI ``imagequant``, libimagequant 2.x: dithering 0, quality 0-100, one thread,
``OMP_NUM_THREADS=1``) and Pillow's quantizers (``Image.quantize``, no dithering) run in a
child process each that decodes every image with Pillow, quantizes it on its own and writes an
indexed PNG (zlib level 1), start-up counted too; "quantize s" is the library call alone.

``scope: collection``: ours with one palette for every image, against each peer fed one image
made of every image's pixels stacked (row-major, wrapped at the widest image's width; the
last row padded with the first pixels, which the error ignores).

MSE, for every method, from the PNGs it painted, by `mse` alone: the sum over all pixels of
the squared RGB differences (0-255) to the original (decoded by Pillow), over 3 x pixels.
Times are the best of ``--repeat`` runs; the ratios divide figures of the same run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PILLOW_METHODS = ["MEDIANCUT", "MAXCOVERAGE", "FASTOCTREE", "LIBIMAGEQUANT"]
TIME_TARGET, MSE_TARGET = 0.5, 0.95  # issue 14: ours / libimagequant


def image_files(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*"))
                  if p.lower().endswith((".jpg", ".jpeg", ".png")))


def decode(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def mse(originals: list[np.ndarray], painted: list[np.ndarray]) -> float:
    """Sum of squared RGB differences over every pixel of every image, / (3 x pixels)."""
    total, n = 0.0, 0
    for a, b in zip(originals, painted):
        if a.shape != b.shape:
            raise ValueError(f"painted image has shape {b.shape}, original {a.shape}")
        d = a.astype(np.int32) - b.astype(np.int32)
        total += float(np.einsum("ij,ij->", d.reshape(-1, 3), d.reshape(-1, 3),
                                 dtype=np.int64))
        n += a.shape[0] * a.shape[1]
    return total / (3 * n)


def stack(images: list[np.ndarray]) -> np.ndarray:
    """Every image's pixels in one image: row-major, wrapped at the widest width, padded."""
    width = max(image.shape[1] for image in images)
    rows = np.concatenate([image.reshape(-1, 3) for image in images])
    height = -(-len(rows) // width)
    pad = height * width - len(rows)
    return np.concatenate([rows, rows[:pad]]).reshape(height, width, 3)


def unstack(painted: np.ndarray, images: list[np.ndarray]) -> list[np.ndarray]:
    rows = painted.reshape(-1, 3)
    out, start = [], 0
    for image in images:
        n = image.shape[0] * image.shape[1]
        out.append(rows[start:start + n].reshape(image.shape))
        start += n
    return out


# ---------------------------------------------------------------------------------------------
# Peer children: decode, quantize each image on its own (or the stack), write indexed PNGs


def child_peer(method: str, folder: str, k: int, scope: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    quantize = 0.0
    files = image_files(folder)
    if scope == "collection":
        jobs = [("stack", stack([decode(p) for p in files]))]
    else:
        jobs = ((os.path.splitext(os.path.basename(p))[0], decode(p)) for p in files)
    for name, pixels in jobs:
        t = time.perf_counter()
        indexed = _quantize(method, pixels, k)
        quantize += time.perf_counter() - t
        indexed.save(os.path.join(out, name + ".png"), compress_level=1)
    print(json.dumps({"seconds": time.perf_counter() - started, "quantize": quantize}))


def _quantize(method: str, pixels: np.ndarray, k: int):
    from PIL import Image

    height, width = pixels.shape[:2]
    if method == "libimagequant":
        import imagequant

        rgba = np.empty((height, width, 4), np.uint8)
        rgba[..., :3] = pixels
        rgba[..., 3] = 255
        # quantize_raw_rgba_bytes, not quantize_pil_image: the latter converts the pixels to
        # bytes in a Python loop, which would time the wrapper, not the library.
        data, palette = imagequant.quantize_raw_rgba_bytes(
            rgba.tobytes(), width, height, dithering_level=0.0, max_colors=k,
            min_quality=0, max_quality=100)
        image = Image.frombytes("P", (width, height), data)
        image.putpalette(bytes(v for i, v in enumerate(palette) if i % 4 != 3))
        return image
    image = Image.fromarray(pixels)
    return image.quantize(colors=k, method=getattr(Image.Quantize, method),
                          dither=Image.Dither.NONE)


def pillow_has(method: str) -> bool:
    from PIL import features

    return method != "LIBIMAGEQUANT" or bool(features.check_feature("libimagequant"))


# ---------------------------------------------------------------------------------------------
# Running


def run_timed(argv: list[str], env: dict | None = None) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {done.stderr[-800:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return seconds, (json.loads(lines[-1]) if lines else {})


def one_thread_env() -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "kmeans-pipeline")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline"]


class Palette:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        self.folder = os.path.abspath(args.folder) if args.folder else self._build()
        self.files = image_files(self.folder)
        self.originals = [decode(p) for p in self.files]
        self.names = [os.path.splitext(os.path.basename(p))[0] for p in self.files]
        self.n_pixels = sum(o.shape[0] * o.shape[1] for o in self.originals)

    def _build(self) -> str:
        folder = os.path.join(self.work, "collections", "small")
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            if not self.args.make_collection:
                sys.exit("give --folder DIR, or --make-collection PATH (or set "
                         "KMP_MAKE_COLLECTION) to build the 'small' collection")
            subprocess.run([sys.executable, self.args.make_collection, "small", "--out",
                            folder], check=True, stdout=subprocess.DEVNULL)
        return folder

    def ours(self, k: int, scope: str) -> tuple[float, float]:
        """Best-of-repeat CLI seconds and the MSE of the segmented PNGs it wrote."""
        tag = f"ours-{scope}-k{k}"
        job, out = os.path.join(self.work, "jobs", tag + ".json"), os.path.join(self.work,
                                                                             "out", tag)
        os.makedirs(os.path.dirname(job), exist_ok=True)
        with open(job, "w") as handle:
            json.dump({"input": {"paths": [self.folder]},
                       "kmeans": {"k": k, "scope": scope},
                       "output": {"dir": out, "segmented": True, "labels": False,
                                  "masks": False, "if_exists": "overwrite"}}, handle)
        best = float("inf")
        for _ in range(self.args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            best = min(best, run_timed([*cli(), "run", job, "-q"])[0])
        painted = [decode(os.path.join(out, "segmented", name + ".png")) for name in self.names]
        return best, mse(self.originals, painted)

    def peer(self, method: str, k: int, scope: str) -> tuple[float, float, float]:
        """Best-of-repeat seconds (process, and the quantize calls alone) and MSE."""
        out = os.path.join(self.work, "out", f"{method}-{scope}-k{k}")
        best, best_q = float("inf"), float("inf")
        for _ in range(self.args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            seconds, data = run_timed([sys.executable, os.path.abspath(__file__), "_peer",
                                       method, self.folder, str(k), scope, out],
                                      env=one_thread_env())
            best, best_q = min(best, seconds), min(best_q, data["quantize"])
        if scope == "collection":
            painted = unstack(decode(os.path.join(out, "stack.png")), self.originals)
        else:
            painted = [decode(os.path.join(out, name + ".png")) for name in self.names]
        return best, best_q, mse(self.originals, painted)


def section(bench: Palette, scope: str, ks: list[int]) -> list[dict]:
    print(f"## scope: {scope}, {len(bench.files)} images, {bench.n_pixels / 1e6:.1f} Mpx"
          + (" (peers: one stacked image)" if scope == "collection" else ""))
    print()
    print("| k | method | s | quantize s | MSE | s / liq s | MSE / liq MSE |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    methods = ["libimagequant"] + [m for m in PILLOW_METHODS if pillow_has(m)]
    for k in ks:
        rows = {}
        for method in methods:
            rows[method] = bench.peer(method, k, scope)
        ours_s, ours_mse = bench.ours(k, scope)
        liq_s, _, liq_mse = rows["libimagequant"]
        print(f"| {k} | ours (CLI, 2 threads) | {ours_s:.2f} | | {ours_mse:.2f} "
              f"| **{ours_s / liq_s:.2f}** | **{ours_mse / liq_mse:.3f}** |")
        for method, (seconds, quantize, error) in rows.items():
            name = method if method == "libimagequant" else f"Pillow {method}"
            print(f"| {k} | {name} (1 thread) | {seconds:.2f} | {quantize:.2f} | {error:.2f} "
                  f"| {seconds / liq_s:.2f} | {error / liq_mse:.3f} |")
        verdicts.append({"scope": scope, "k": k, "time": ours_s / liq_s,
                         "mse": ours_mse / liq_mse})
        sys.stdout.flush()
    missing = [m for m in PILLOW_METHODS if not pillow_has(m)]
    if missing:
        print(f"\nNot in this Pillow build: {', '.join(missing)}.")
    print()
    return verdicts


def section_startup(repeat: int) -> None:
    """`--version` seconds, and the import time of a whole tiny run (`-X importtime`)."""
    import tempfile

    from PIL import Image

    print("## Start-up")
    print()
    version = min(run_timed([*cli(), "--version"])[0] for _ in range(max(repeat, 5)))
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(
            os.path.join(tmp, "a.png"))
        job = os.path.join(tmp, "job.json")
        with open(job, "w") as handle:
            json.dump({"input": {"paths": [tmp + "/a.png"]}, "kmeans": {"k": 2},
                       "output": {"dir": tmp + "/out", "if_exists": "overwrite"}}, handle)
        best_imports, best_run = float("inf"), float("inf")
        for _ in range(max(repeat, 3)):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", "run",
                                   job, "-q"], capture_output=True, text=True)
            best_run = min(best_run, time.perf_counter() - started)
            top = [int(line.split("|")[1]) for line in done.stderr.splitlines()
                   if line.startswith("import time:") and "|" in line
                   and not line.split("|")[2].startswith("  ") and line.split("|")[1].strip()
                   .isdigit()]
            best_imports = min(best_imports, sum(top) / 1e6)
    print("| measurement | s | target |")
    print("|---|---|---|")
    print(f"| `kmeans-pipeline --version` (process wall, best of {max(repeat, 5)}) "
          f"| {version:.3f} | <= 0.15 |")
    print(f"| imports of a whole run of one 4x4 image (`-X importtime`, top-level cumulative; "
          f"an upper bound of the imports before the first task) | {best_imports:.3f} "
          "| <= 0.3 |")
    print(f"| that whole run, process wall (importtime on) | {best_run:.3f} | |")
    print()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_peer":
        return child_peer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", help="a folder of photos (default: build 'small')")
    parser.add_argument("--make-collection", default=os.environ.get("KMP_MAKE_COLLECTION"))
    parser.add_argument("--workdir", default=".bench")
    parser.add_argument("--ks", default="8,16,64,256")
    parser.add_argument("--scopes", default="image,collection")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    bench = Palette(args)
    load = os.getloadavg()[0]
    print(f"# Palette benchmark {time.strftime('%Y-%m-%d %H:%M %Z')}: {os.cpu_count()} CPUs, "
          f"load average at start {load:.2f}, best of {args.repeat}")
    print()
    verdicts = []
    for scope in args.scopes.split(","):
        verdicts += section(bench, scope, [int(k) for k in args.ks.split(",")])
    print("## Targets: ours / libimagequant, time <= 0.5 and MSE <= 0.95")
    print()
    print("| scope | k | time ratio | verdict | MSE ratio | verdict |")
    print("|---|---|---|---|---|---|")
    for v in verdicts:
        print(f"| {v['scope']} | {v['k']} | {v['time']:.2f} "
              f"| {'met' if v['time'] <= TIME_TARGET else 'missed'} | {v['mse']:.3f} "
              f"| {'met' if v['mse'] <= MSE_TARGET else 'missed'} |")
    print()
    if args.startup:
        section_startup(args.repeat)


if __name__ == "__main__":
    main()
