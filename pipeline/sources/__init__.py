"""Finding inputs and reading them.

``listing`` finds the files and objects and reads their headers; ``photos`` decodes
Pillow / libjpeg-turbo images; ``collection`` makes lazy images, chunked pixel arrays and the
reproducible sample.  What every source knows of one input from its header is an `ImageInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageInfo:
    """One input image, as known from its header.

    ``width`` and ``height`` are those of the pixels the pipeline works on: after EXIF
    orientation and ``preprocess.scale``.
    """

    index: int
    path: str
    name: str
    width: int
    height: int
    format: str
    mode: str
    n_frames: int = 1
    size_bytes: int = 0
    mtime_ns: int = 0
    # input.max_pixels: every decode of this file (frames, embedded images) is bounded by it
    max_pixels: int = DEFAULT_MAX_PIXELS
    # (width, height) of the decoded first frame after orientation, before preprocess.scale
    source_size: tuple[int, int] | None = None
    # input.storage_options, carried by the tasks that fetch the object (``path`` is a URL)
    storage_options: dict | None = field(default=None, compare=False, repr=False)
    # issue 12: mask the fully transparent pixels (the file has transparency, input.mask is
    # auto or alpha), and those of this 8-bit colour (input.nodata); see photos.decode_masked
    alpha: bool = False
    nodata: tuple[int, int, int] | None = None
    bits: int = 8  # bits per stored sample: 16 routes a PNG at a URL to the raster path

    @property
    def maskable(self) -> bool:
        """Whether decoding may find masked pixels (else the mask is never computed)."""
        return self.alpha or self.nodata is not None

    @property
    def n_pixels(self) -> int:
        return self.width * self.height
