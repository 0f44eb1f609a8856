"""The collection as values: lazy images, chunked pixel arrays and the reproducible sample.

Pixels are decoded inside dask tasks that carry the file path
(`pipeline.sources.photos.decode_masked`), so no pixels travel from the client.  Masked pixels
(transparent, or of the nodata colour; issue 12) are never sampled, and `mask_array` lets the
full passes leave them out.
"""

from __future__ import annotations

import logging
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import dask
import numpy as np

from pipeline import tasklog
from pipeline.engine import kmeans
from pipeline.errors import ImageReadError
from pipeline.sources import ImageInfo

# `pipeline.sources.photos` (Pillow, simplejpeg: 10-20 ms) is imported by the functions that
# decode: a raster run uses this module but never decodes a photo (issue 14).

if TYPE_CHECKING:
    import dask.array as da


def read_pixels(info: ImageInfo) -> np.ndarray:
    """Decoded pixel rows of one image: ndarray of shape (n_pixels, 3), uint8."""
    from pipeline.sources import photos

    return photos.decode(info).reshape(-1, 3)


def read_masked_rows(info: ImageInfo) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows (n_pixels, 3) uint8 of one image and its mask (n_pixels,) bool."""
    from pipeline.sources import photos

    pixels, masked = photos.decode_masked(info)
    flat = np.zeros(info.n_pixels, bool) if masked is None else masked.reshape(-1)
    return pixels.reshape(-1, 3), flat


def maskable(images: list[ImageInfo]) -> bool:
    """Whether any image may have masked pixels (from the headers; see `mask_array`)."""
    return any(info.maskable for info in images)


def pixel_array(images: list[ImageInfo], chunk_pixels: int,
                kept: KeptPixels | None = None) -> da.Array:
    """All images' pixel rows as one lazy array of shape (n_pixels, 3), uint8.

    Each image is decoded by one task that carries its path; an image over ``chunk_pixels`` is
    split into row bands of at most that many pixels, sliced from the decoded image on the same
    worker.  Images are never merged into one chunk, which would move pixels between tasks.
    An image ``kept`` on the workers (`pipeline.cluster.OnWorkers`) is not decoded again: its
    rows are a view of the decode task's value, on the worker that holds it.
    """
    import dask.array as da  # here, not at the top: it costs a quarter second of start-up

    parts = []
    for info in images:
        token = dask.base.tokenize(info)
        served = _on_workers(info, kept)
        if served is not None:
            block = dask.delayed(_kept_rows, pure=True)(info, served,
                                                        dask_key_name=f"kept-rows-{token}")
        elif info.maskable:  # the decode task is shared with `mask_array`'s
            block = _decoded(info, token)[0]
        else:
            block = dask.delayed(read_pixels, pure=True)(info, dask_key_name=f"decode-{token}")
        part = da.from_delayed(block, shape=(info.n_pixels, 3), dtype=np.uint8,
                               name=f"{'kept-' if served is not None else ''}pixels-{token}")
        if info.n_pixels > chunk_pixels:
            part = part.rechunk(((_bands(info.n_pixels, chunk_pixels)), (3,)))
        parts.append(part)
    return da.concatenate(parts, axis=0)


def mask_array(images: list[ImageInfo], chunk_pixels: int,
               kept: KeptPixels | None = None) -> da.Array | None:
    """True where a pixel of `pixel_array` is masked: dask array (n_pixels,), bool, chunked
    as it and sharing its decode tasks (or ``kept`` values); None when no image can have
    masked pixels."""
    import dask.array as da

    if not maskable(images):
        return None
    parts = []
    for info in images:
        token = dask.base.tokenize(info)
        served = _on_workers(info, kept) if info.maskable else None
        if served is not None:
            part = da.from_delayed(
                dask.delayed(_kept_mask, pure=True)(info, served,
                                                    dask_key_name=f"kept-mask-{token}"),
                shape=(info.n_pixels,), dtype=bool, name=f"kept-masked-{token}")
        elif info.maskable:
            part = da.from_delayed(_decoded(info, token)[1], shape=(info.n_pixels,), dtype=bool,
                                   name=f"masked-{token}")
        else:
            part = da.zeros(info.n_pixels, dtype=bool, chunks=info.n_pixels)
        if info.n_pixels > chunk_pixels:
            part = part.rechunk((_bands(info.n_pixels, chunk_pixels),))
        parts.append(part)
    return da.concatenate(parts, axis=0)


def _on_workers(info: ImageInfo, kept: KeptPixels | None) -> Any:
    """The future of ``info``'s `decode_kept` value when ``kept`` holds it on workers."""
    served = None if kept is None else kept.for_group([info])
    return served.get(info.name) if isinstance(served, dict) else None


def _kept_rows(info: ImageInfo, value: tuple) -> np.ndarray:
    """Pixel rows (n_pixels, 3) uint8 of a `decode_kept` value (a view: no copy)."""
    return _served(info, {info.name: value})[0].reshape(-1, 3)


def _kept_mask(info: ImageInfo, value: tuple) -> np.ndarray:
    """The mask (n_pixels,) bool of a `decode_kept` value."""
    masked = _served(info, {info.name: value})[1]
    return np.zeros(info.n_pixels, bool) if masked is None else masked.reshape(-1)


def _decoded(info: ImageInfo, token: str) -> "dask.delayed.Delayed":
    return dask.delayed(read_masked_rows, pure=True, nout=2)(
        info, dask_key_name=f"decode-masked-{token}")


def _bands(n: int, size: int) -> tuple[int, ...]:
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())


def sample_image(info: ImageInfo, n_sample: int, seed: int,
                 kept: "Decoded | dict | None" = None) -> np.ndarray:
    """A reproducible random sample of one image's pixels (the one pass that feeds the fit).

    The positions depend only on ``(seed, sample_key(info), n_sample)``: never on chunking,
    nor on which other images the run holds (a skipped neighbour changes nothing).  With
    ``kept`` the decoded pixels stay there for the segment pass (see `Decoded`), or, as a
    dict of `decode_kept` values by image name, come from a decode task on the worker.

    Masked pixels are never sampled: an image with masked pixels gives its share times its
    unmasked fraction (see `sample_positions`).

    Returns
    -------
    ndarray of shape (m, 3), uint8, in increasing pixel order; m <= n_sample.

    Raises
    ------
    ImageReadError
        Every pixel of the image is masked (`ALL_MASKED`).
    """
    pixels, masked = _decode_for_sample(info, kept)
    if masked is not None and masked.all():
        raise ImageReadError(f"{info.path}: {ALL_MASKED}")
    rows = pixels.reshape(-1, 3)
    if n_sample >= len(rows) and masked is None:
        return rows
    return rows[sample_positions(info, n_sample, seed, masked)]


# The raster path's words (pipeline.raster_job.ALL_MASKED): one reason for one cause.
ALL_MASKED = "every pixel is masked (nodata, NaN or alpha); nothing to segment"


def sample_positions(info: ImageInfo, n_sample: int, seed: int,
                     masked: np.ndarray | None = None) -> np.ndarray:
    """Flat positions (increasing) of `sample_image`'s pixels: all of them when the image
    has at most ``n_sample``; ndarray of shape (min(n_sample, n_pixels),), int64.

    With ``masked`` (height, width) bool, only unmasked pixels: all of them, or
    ``n_sample`` x their share of the image (rounded, at least one), so that every image
    contributes in proportion to its unmasked pixels.  The positions then depend on the
    mask, never on the colours under it.
    """
    if masked is not None:
        valid = np.flatnonzero(~masked.reshape(-1))
        if n_sample >= info.n_pixels:
            return valid
        share = max(1, (n_sample * len(valid) + info.n_pixels // 2) // info.n_pixels)
        return valid[_strata(len(valid), min(share, len(valid)), seed, info)]
    if n_sample >= info.n_pixels:
        return np.arange(info.n_pixels)
    return _strata(info.n_pixels, n_sample, seed, info)


def _strata(n: int, n_sample: int, seed: int, info: ImageInfo) -> np.ndarray:
    """``n_sample`` of ``range(n)``, one in each of n_sample equal strata (n_sample < n)."""
    if n_sample >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, sample_key(info)])
    # One position in each of n_sample equal strata of the raster order: without repeats and
    # already sorted, in O(n_sample).  rng.choice(replace=False) permutes every pixel once the
    # share is over 2 % (0.4 s of the small benchmark collection's 2 s, issue 5).
    # worked in place: each temporary of n_sample values is 8 MB at the default 1 Mpx sample
    # (fresh pages for every image: 20 ms an image on `small` for what is 5 ms of arithmetic)
    edges = np.arange(n_sample + 1, dtype=np.int64)
    edges *= n
    edges //= n_sample
    offsets = rng.random(n_sample)
    offsets *= edges[1:] - edges[:-1]
    positions = offsets.astype(np.int64)
    positions += edges[:-1]
    return positions


def sample_key(info: ImageInfo) -> int:
    """The image's own random stream number: from its output name, unique within a run."""
    return zlib.crc32(info.name.encode("utf-8"))


class Decoded:
    """Decoded pixels kept between a run's sampling pass and its segment pass (issue 5:
    decoding twice was a quarter of a run).

    Owned by one run, which creates it only for schedulers whose tasks run in its process and
    when the memory budget allows, and clears it when the run ends.  Each image is served once.
    """

    def __init__(self) -> None:
        self._pixels: dict[ImageInfo, tuple[np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self._token  # one store per run: tasks of the same run share their keys

    def keep(self, info: ImageInfo, decoded: tuple[np.ndarray, np.ndarray | None]) -> None:
        """Keep one image's decoded pixels (height, width, 3) and mask (`decode_masked`)."""
        with self._lock:
            self._pixels[info] = decoded

    def take(self, info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
        """`photos.decode_masked`, served (once) from what the sampling pass kept."""
        from pipeline.sources import photos

        with self._lock:
            decoded = self._pixels.pop(info, None)
        return photos.decode_masked(info) if decoded is None else decoded

    def for_group(self, group: list[ImageInfo]) -> "Decoded":
        """What a task of ``group`` is given (`KeptPixels`): the store itself, in-process."""
        return self

    def release(self, images: list[ImageInfo]) -> None:
        """Forget the pixels of ``images`` (skipped ones, or done)."""
        with self._lock:
            for info in images:
                self._pixels.pop(info, None)

    def clear(self) -> None:
        with self._lock:
            self._pixels.clear()

    def __len__(self) -> int:
        return len(self._pixels)


class KeptPixels(Protocol):
    """Where a run keeps decoded pixels between its passes: `Decoded` in this process, or
    `pipeline.cluster.OnWorkers` in worker memory."""

    def for_group(self, group: list[ImageInfo]) -> Any:
        """The argument the tasks of one group of images take (``kept``)."""

    def release(self, images: list[ImageInfo]) -> None:
        """The pixels of ``images`` are no longer needed."""

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Undecodable:
    """A `decode_kept` task's value for an image that does not decode."""

    error: str  # the ImageReadError's message


def decode_kept(info: ImageInfo) -> tuple:
    """The decode task whose value stays in worker memory for the run's passes (issue 14).

    Returns
    -------
    tuple
        ``(pixels, masked, lines)``: `photos.decode_masked`'s (height, width, 3) uint8 pixels
        and (height, width) bool mask or None, and the warnings decoding logged
        (`pipeline.tasklog`); or ``(Undecodable, None, lines)``: a failure is a value here,
        for the sample task to report, not an error that would fail every task after it.
    """
    from pipeline.sources import photos

    with tasklog.capture() as lines:
        try:
            pixels, masked = photos.decode_masked(info)
        except ImageReadError as exc:
            return Undecodable(str(exc)), None, lines
    return pixels, masked, lines


def _served(info: ImageInfo, kept: dict) -> tuple[np.ndarray, np.ndarray | None] | None:
    """An image's `decode_kept` value from a task's ``kept`` dict, or None if not there."""
    value = kept.get(info.name)
    if value is None:
        return None
    pixels, masked, _ = value
    if isinstance(pixels, Undecodable):
        raise ImageReadError(pixels.error)
    return pixels, masked


def _decode_for_sample(info: ImageInfo,
                       kept: Decoded | dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The sampling pass's decode: served by a decode task on the worker (whose warnings are
    logged again here, so that they reach the image's report entry as when decoded here), or
    decoded and kept in this process's store."""
    from pipeline.sources import photos

    if isinstance(kept, dict) and info.name in kept:
        for line in kept[info.name][2]:
            level, _, rest = line.partition(" ")
            name, _, message = rest.partition(": ")
            logging.getLogger(name).log(logging.getLevelName(level), "%s", message)
        return _served(info, kept)
    decoded = photos.decode_masked(info)
    if isinstance(kept, Decoded):
        kept.keep(info, decoded)
    return decoded


def take_decoded(info: ImageInfo,
                 kept: Decoded | dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image's pixels (height, width, 3), uint8, and mask (`photos.decode_masked`): from
    ``kept`` (`Decoded`, or a task's dict of `decode_kept` values) if there, else decoded."""
    from pipeline.sources import photos

    if isinstance(kept, dict):
        served = _served(info, kept)
        return photos.decode_masked(info) if served is None else served
    return photos.decode_masked(info) if kept is None else kept.take(info)


class Image:
    """One input image, lazily: known from its header, decoded only when its pixels are computed.

    Attributes
    ----------
    info : ImageInfo
        What the header said (path, output name, working size, format, mode).
    """

    def __init__(self, info: ImageInfo) -> None:
        self.info = info

    @property
    def name(self) -> str:
        """The output name: the path relative to the input entry it came from, no extension."""
        return self.info.name

    @property
    def path(self) -> str:
        return self.info.path

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3) of the pixels the pipeline works on (EXIF-oriented, scaled)."""
        return (self.info.height, self.info.width, 3)

    bands = 3  # as a `pipeline.api.RasterImage` says its own (issue 12)
    dtype = np.dtype(np.uint8)

    @property
    def mask(self) -> da.Array:
        """dask array of shape (height, width), bool: True where a pixel is fully transparent
        or of the ``input.nodata`` colour (`photos.decode_masked`)."""
        import dask.array as da

        token = dask.base.tokenize(self.info)
        block = dask.delayed(_photo_mask, pure=True)(self.info, dask_key_name=f"mask-{token}")
        return da.from_delayed(block, shape=self.shape[:2], dtype=bool,
                               name=f"image-mask-{token}")

    @property
    def pixels(self) -> da.Array:
        """dask array of shape (height, width, 3), uint8: one task decodes the file."""
        import dask.array as da

        from pipeline.sources import photos

        token = dask.base.tokenize(self.info)
        block = dask.delayed(photos.decode, pure=True)(self.info, dask_key_name=f"image-{token}")
        return da.from_delayed(block, shape=self.shape, dtype=np.uint8,
                               name=f"image-pixels-{token}")

    def __repr__(self) -> str:
        return f"Image({self.name!r}, {self.info.width}x{self.info.height}, {self.info.format})"


def _photo_mask(info: ImageInfo) -> np.ndarray:
    from pipeline.sources import photos

    _, masked = photos.decode_masked(info)
    return np.zeros((info.height, info.width), bool) if masked is None else masked


# ---------------------------------------------------------------------------------------------
# The sampling pass: one task per image (or per group of small images) decodes it and keeps a
# reproducible sample of its pixels; it also finds the images that only fail when decoded.

# In runs of more than _GROUP_ABOVE images, images smaller than _TASK_PIXELS share a task (in
# listing order): the scheduler's per-task cost and tokenizing each task's arguments outweighed
# the work of 2,000 images of 0.05 Mpx (issue 5).  Fewer images keep one task each, so that
# progress, failures and reports stay per image where the overhead does not matter.
_TASK_PIXELS = 1 << 21
_GROUP_ABOVE = 256


class Progress(Protocol):
    """Told about each phase and each finished group of images; observes, never decides."""

    def phase(self, name: str, images: int, pixels: int) -> None: ...

    def advance(self, images: int, pixels: int) -> None: ...


@dataclass
class Sample:
    """What the sampling pass found: the sample rows, the images they came from, the others."""

    rows: np.ndarray  # (n, 3) uint8 pixels, or (n, 5) float64 colour + position features
    good: list[ImageInfo]
    failed: list[tuple[ImageInfo, str]] = field(default_factory=list)  # (image, reason)
    logged: list[tuple[ImageInfo, list[str]]] = field(default_factory=list)  # task warnings


def draw_sample(images: list[ImageInfo], sample_pixels: int, seed: int,
                features: tuple[str, float] | None, progress: Progress,
                kept: KeptPixels | None = None, stop_at_failure: bool = False) -> Sample:
    """One pass: decode every image, keep a reproducible sample; finds undecodable images.

    A skipped image must not change the palette: when one fails to decode and the images
    were sampled (not taken whole), the others are sampled again with the shares they would
    have had without it, so the result equals a run on the good images alone.  With
    ``stop_at_failure`` (``on_error: fail``) a failure returns at once, without that pass.

    Raises
    ------
    ImageReadError
        An image decoded in the first pass failed in the second (the file changed).
    """
    sizes = allocate([i.n_pixels for i in images], sample_pixels)
    results = sample_pass(images, sizes, seed, progress, "sample", features, kept)
    good, parts, failed, logged = [], [], [], []
    for info, ((pixels, error), lines) in zip(images, results):
        logged.append((info, lines))
        if error is not None:
            failed.append((info, error))
        else:
            good.append(info)
            parts.append(pixels)
    if not good or (failed and stop_at_failure):
        return Sample(np.zeros((0, 3), np.uint8), good, failed, logged)
    shares = allocate([i.n_pixels for i in good], sample_pixels)
    if len(good) < len(images) and shares != [len(p) for p in parts]:
        results = sample_pass(good, shares, seed, progress, "resample", features, kept)
        for info, ((_, error), _) in zip(good, results):
            if error is not None:  # the file changed since the first pass
                raise ImageReadError(f"{info.path}: {error} (changed during the run; rerun)")
        parts = [pixels for (pixels, _), _ in results]
    return Sample(np.concatenate(parts), good, failed, logged)


def sample_pass(images: list[ImageInfo], sizes: list[int], seed: int, progress: Progress,
                phase: str, features: tuple[str, float] | None = None,
                kept: KeptPixels | None = None) -> list[tuple[tuple, list[str]]]:
    """((sample, None) or (None, reason), logged warnings) for each image, in order (see
    `draw_sample`)."""
    from pipeline import cluster

    grouped = groups(images)
    share = dict(zip(images, sizes))
    tasks = [dask.delayed(each, pure=True)(_sample_task, [(i, share[i]) for i in group],
                                           seed, features,
                                           None if kept is None else kept.for_group(group))
             for group in grouped]
    progress.phase(phase, len(images), sum(i.n_pixels for i in images))
    results = cluster.compute_each(tasks, lambda g, r: advance(progress, grouped[g]))
    return [r for group in results for r in group]


def _sample_task(info: ImageInfo, n_sample: int, seed: int,
                 features: tuple[str, float] | None = None,
                 kept: Decoded | dict | None = None) -> tuple[np.ndarray | None, str | None]:
    """The image's sample: uint8 pixels, or with ``features=(color_space, spatial_weight)``
    float64 colour + position features (the positions only exist here, in the task).  With
    ``kept`` the decoded pixels stay in memory for the segment pass (or come from there)."""
    try:
        if features is None:
            return sample_image(info, n_sample, seed, kept), None
        pixels, masked = _decode_for_sample(info, kept)
        if masked is not None and masked.all():
            raise ImageReadError(f"{info.path}: {ALL_MASKED}")
        where = sample_positions(info, n_sample, seed, masked)
        rows = pixels.reshape(-1, 3)[where]
        return kmeans.spatial_features(rows, where, info.width, info.height, *features), None
    except ImageReadError as exc:
        return None, reason(exc, info)


def reason(exc: Exception, info: ImageInfo) -> str:
    """An error's message without the image path it starts with (the report names it)."""
    text = str(exc)
    prefix = f"{info.path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def allocate(sizes: list[int], total: int) -> list[int]:
    """Split a sample of ``total`` pixels over images in proportion to their sizes
    (largest remainder, ties to the earlier image); all pixels when the collection is smaller."""
    n = sum(sizes)
    if n <= total:
        return list(sizes)
    exact = [s * total / n for s in sizes]
    shares = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


def groups(images: list[ImageInfo]) -> list[list[ImageInfo]]:
    """Consecutive images in groups of at least ``_TASK_PIXELS`` pixels (the last may be
    smaller); an image that large is a group of its own.  One image per group for short runs."""
    if len(images) <= _GROUP_ABOVE:
        return [[info] for info in images]
    grouped: list[list[ImageInfo]] = []
    pixels = _TASK_PIXELS
    for info in images:
        if pixels >= _TASK_PIXELS:
            grouped.append([])
            pixels = 0
        grouped[-1].append(info)
        pixels += info.n_pixels
    return grouped


def each(task: Callable, firsts: list[tuple], *rest: Any) -> list[tuple[Any, list[str]]]:
    """One dask task for a group of images: ``task(*first, *rest)`` for each, in order, with
    the warnings it logged (`pipeline.tasklog`: on a worker they would be lost otherwise)."""
    results = []
    for first in firsts:
        with tasklog.capture() as logged:
            results.append((task(*first, *rest), logged))
    return results


def advance(progress: Progress, group: list[ImageInfo]) -> None:
    progress.advance(len(group), sum(i.n_pixels for i in group))
