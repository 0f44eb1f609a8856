"""Where paths point: a local file or an object in a store (s3://, gs://, az://, http(s)://).

Local paths use the standard library exactly as before; URLs go through fsspec, whose backend
(s3fs, gcsfs, adlfs, aiohttp) is an optional extra.  Every remote call goes through `retry`:
transient failures (connection reset or refused, timeouts, 5xx, throttling) are retried with
exponential backoff and full jitter a bounded number of times within a deadline, then raise
`StorageError`; permanent ones (403, 404, no such bucket) are raised at once, as the
``PermissionError`` / ``FileNotFoundError`` fsspec backends translate them to.  For S3 the
backend's own retries (s3fs's loop and botocore's) are set to one attempt, so that they do not
multiply ours (issue 11: up to ~100 attempts), unless ``storage_options`` set them.

Objects are written with one PUT of the complete bytes (`put_bytes`): a store shows an object
only once its upload is complete, so no temporary name is needed.  Reads of headers are range
reads (`open_read`); decoding fetches the whole object once (`read_bytes`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import importlib
import io
import logging
import os
import posixpath
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from stat import S_ISREG
from typing import Any, Callable, ContextManager, TypeVar

from pipeline.errors import ConfigError, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 4  # tries of one remote call: the first plus 3 retries
FIRST_DELAY = 0.5  # seconds: the longest wait before the first retry; doubled for each next
DEADLINE = 60.0  # seconds: no retry of a call starts later than this after its first try
HEADER_BLOCK = 1 << 16  # bytes per range read: most image headers fit in the first one
_GLOB_CHARS = re.compile(r"[*?\[]")
# protocol -> (module the fsspec backend needs, our extra that installs it)
_BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"),
             "gcs": ("gcsfs", "gcs"), "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"),
             "abfss": ("adlfs", "azure"), "http": ("aiohttp", "http"),
             "https": ("aiohttp", "http")}
_READ_ONLY = ("http", "https")
# Exception class names (anywhere in the MRO) of transient network failures in the backends:
# botocore, aiohttp, fsspec, google-auth/requests, azure-core; matched by name so that none of
# them has to be imported.
_TRANSIENT_NAMES = frozenset({
    "ConnectionError", "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "ClientConnectionError", "ClientPayloadError",
    "ServerDisconnectedError", "IncompleteRead", "ResponseParserError", "FSTimeoutError",
    "ServiceRequestError", "ServiceResponseError", "TransportError", "ChunkedEncodingError"})
_TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                               errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                               getattr(errno, "EREMOTEIO", errno.EIO)})


def is_url(path: str) -> bool:
    """Whether ``path`` names an object through a protocol (``s3://b/k``) instead of a file;
    fsspec URL chains (``simplecache::s3://b/k``) are URLs too."""
    return "://" in path


def protocol(url: str) -> str:
    """The protocol of the store a URL reaches: ``s3`` for ``s3://b/k`` and for a chain
    ``simplecache::s3://b/k`` (whose outer links only cache what it reads)."""
    return _links(url)[-1]


def _links(url: str) -> list[str]:
    """Every protocol of a URL, outermost first: ``['simplecache', 's3']``."""
    *outer, target = url.split("::")
    return [link.split("://", 1)[0].lower() for link in outer] + \
        [target.split("://", 1)[0].lower()]


def _chain_prefix(url: str) -> str:
    """The outer links of a URL chain, ``simplecache::``, to put back on listed objects."""
    return url.rsplit("::", 1)[0] + "::" if "::" in url else ""


def backend_problem(url: str) -> str | None:
    """Why ``url`` cannot be used here (a backend of one of its links is not installed), or
    None."""
    for scheme in _links(url):
        if scheme in _BACKENDS:
            module, extra = _BACKENDS[scheme]
            try:
                importlib.import_module(module)
            except ImportError:
                return (f"{url!r} needs the {scheme}:// backend, which is not installed: "
                        f"pip install 'kmeans-pipeline[{extra}]'")
            continue
        import fsspec

        try:
            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as exc:
            return f"{url!r}: protocol {scheme}:// is not usable ({str(exc).splitlines()[0]})"
    return None


def is_read_only(url: str) -> bool:
    return protocol(url) in _READ_ONLY


def filesystem(url: str, options: dict | None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` built from ``storage_options``, and the path in it.

    Raises
    ------
    ConfigError
        The backend is not installed, or it rejects the storage options.
    """
    problem = backend_problem(url)
    if problem:
        raise ConfigError(problem)
    from fsspec.core import url_to_fs

    try:
        fs, inner = url_to_fs(url, **_one_attempt(url, options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{url!r}: storage_options not accepted by the {protocol(url)}:// "
                          f"backend ({str(exc).splitlines()[0]})") from exc
    if protocol(url) in ("s3", "s3a"):
        # s3fs's own retry loop: a class attribute (5 tries), not an argument
        fs.retries = int((options or {}).get("retries", 1))
    return fs, inner


def _one_attempt(url: str, options: dict | None) -> dict:
    """``options`` with botocore's retries set to one attempt (for S3), unless given."""
    options = dict(options or {})
    if protocol(url) in ("s3", "s3a"):
        options.pop("retries", None)  # s3fs takes it as an attribute (see filesystem)
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        options["config_kwargs"] = config
    return options


def join(base: str, rel: str) -> str:
    """``base`` (a folder or URL prefix) joined with a ``/``-separated relative path."""
    if is_url(base):
        return base.rstrip("/") + "/" + rel
    return os.path.join(base, *rel.split("/"))


def canonical(path: str) -> str:
    """One spelling per file or object (to find duplicates and the output folder)."""
    return path.rstrip("/") if is_url(path) else os.path.realpath(path)


@dataclass(frozen=True)
class Location:
    """A local path or an object URL, with the ``storage_options`` that reach it.

    The one seam between the pipeline and where its files live: every listing, read, write and
    probe of an input or output goes through a Location, which sends a local path to the
    standard library and a URL to fsspec.  Callers branch on ``remote`` only where the two
    differ by design (a marker file that only a shared folder can carry).
    """

    path: str
    options: dict | None = field(default=None, compare=False, hash=False)

    @property
    def remote(self) -> bool:
        return is_url(self.path)

    @property
    def separator(self) -> str:
        return "/" if self.remote else os.sep

    def join(self, rel: str) -> "Location":
        return Location(join(self.path, rel), self.options)

    def canonical(self) -> str:
        return canonical(self.path)

    def stat_file(self) -> tuple[int, int, bool]:
        """(size in bytes, modification time in ns, whether it is a regular file or object).

        Raises ``OSError`` (missing, unreadable) or `StorageError` (store unreachable)."""
        if self.remote:
            return (*stat(self.path, self.options), True)
        result = os.stat(self.path)
        return result.st_size, result.st_mtime_ns, S_ISREG(result.st_mode)

    def open_read(self, size: int | None = None) -> io.BufferedIOBase:
        """A seekable binary file; over an object, one that makes range reads."""
        if self.remote:
            return open_read(self.path, self.options, size)
        return open(self.path, "rb")

    def header_source(self, size: int | None = None) -> ContextManager:
        """What a decoder opens to read a header: the local path itself (the decoder opens
        and seeks the file), or a range-reading file over the object."""
        if self.remote:
            return open_read(self.path, self.options, size)
        return contextlib.nullcontext(self.path)

    def read_bytes(self) -> bytes:
        """The whole file or object."""
        if self.remote:
            return read_bytes(self.path, self.options)
        with open(self.path, "rb") as handle:
            return handle.read()

    def fetch(self) -> str | io.BytesIO:
        """What a decoder opens to read everything: the local path, or the object's bytes
        fetched in one GET."""
        return io.BytesIO(read_bytes(self.path, self.options)) if self.remote else self.path

    def exists(self) -> bool:
        return exists(self.path, self.options)

    def expand(self, extensions: frozenset[str], ignored: list[str],
               problems: list[str]) -> list[tuple[str, str]]:
        """(path, output name) for every file or object this ``input.paths`` entry names: a
        glob, a folder (searched recursively, hidden names left out) or one file.  Files in a
        folder whose extension is not in ``extensions`` go to ``ignored``; a missing or
        unlistable entry adds a line to ``problems``."""
        if self.remote:
            return _expand_remote(self.path, self.options, extensions, ignored, problems)
        return _expand_local(self.path, extensions, ignored, problems)

    def write_atomic(self, write: Callable[[Any], None], temp_prefix: str,
                     make_folder: bool = True) -> int:
        """Write through ``write(handle)`` so that a reader sees the whole file or none: a
        local file under a hidden temporary name (``temp_prefix``...) in its folder, then
        renamed; an object written to memory, then stored with one PUT.  Returns the size.

        ``make_folder=False``: the folder must exist (it is not created again if removed)."""
        if self.remote:
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            put_bytes(self.path, data, self.options)
            return len(data)
        folder, base = os.path.split(self.path)
        if make_folder:
            os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f"{temp_prefix}{uuid.uuid4().hex[:12]}-{base}")
        try:
            with open(temp, "wb") as handle:
                write(handle)
                size = handle.tell()
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        return size

    def remove(self, attempts: int = 0) -> None:
        """Delete the file or object (one that is already gone is no error)."""
        if self.remote:
            remove(self.path, self.options, attempts)
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def make_folders(self, rel_folder: str) -> None:
        """Create ``rel_folder`` below this folder, which must still exist (object storage
        has no folders: nothing to do)."""
        if self.remote:
            return
        if not os.path.isdir(self.path):
            raise FileNotFoundError(errno.ENOENT, "the output folder was removed", self.path)
        folder = self.path
        for part in rel_folder.split("/"):
            folder = os.path.join(folder, part)
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass

    def folder_gone(self) -> bool:
        """Whether a local folder no longer exists (a store's prefix never goes away)."""
        return not self.remote and not os.path.isdir(self.path)

    def sizes(self) -> dict[str, int] | None:
        """For object storage, every object's size below this prefix from one listing (a
        request per file would be slow); None for a local folder, where a stat is cheap."""
        return sizes(self.path, self.options) if self.remote else None

    def remove_temp_files(self, temp_prefix: str) -> int:
        """Delete the temporary files killed writers left below this folder; returns how many.
        Object storage has none: an object is written with one PUT."""
        if self.remote:
            return 0
        removed = 0
        for folder, _, names in os.walk(self.path):
            for name in names:
                if name.startswith(temp_prefix):
                    try:
                        os.unlink(os.path.join(folder, name))
                        removed += 1
                    except OSError:
                        pass
        return removed

    def check_writable(self, probe: str) -> None:
        """Create the folder if needed, then write and delete a probe file or object under it.

        Raises ``OSError`` or `StorageError` when that is not possible."""
        if self.remote:
            check_writable(self.path, self.options, probe)
            return
        os.makedirs(self.path, exist_ok=True)
        target = os.path.join(self.path, probe)
        with open(target, "wb"):
            pass
        os.unlink(target)


# ---------------------------------------------------------------------------------------------
# Retries


def retry(call: Callable[[], T], url: str, what: str = "access", attempts: int = 0) -> T:
    """``call()``, retried while it fails transiently: `ATTEMPTS` tries in all (or
    ``attempts``), the n-th retry after a random wait of up to ``FIRST_DELAY * 2**(n-1)`` s
    ("full jitter", so that many tasks failing together do not retry together), none
    starting later than `DEADLINE` s after the first try.

    Raises
    ------
    StorageError
        Still failing transiently after the last try.
    OSError
        A permanent failure, at once (FileNotFoundError, PermissionError...); an exception
        of a backend that is no OSError is raised as an OSError carrying its message.
    """
    attempts = attempts or ATTEMPTS
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except StorageError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                permanent = _permanent(exc)
                if permanent is exc:
                    raise
                raise permanent from exc
            delay = random.uniform(0.0, FIRST_DELAY * 2 ** (attempt - 1))
            late = time.monotonic() + delay - started > DEADLINE
            if attempt == attempts or late:
                within = f" within {DEADLINE:g} s" if late and attempt < attempts else ""
                raise StorageError(f"{url}: object store unreachable: {what} failed after "
                                   f"{attempt} attempts{within} ({describe(exc)}); check the "
                                   "network and the endpoint, then rerun with "
                                   "output.if_exists: resume") from exc
            log.warning("%s: %s failed (%s); retry %d of %d in %.2f s", url, what,
                        describe(exc), attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` may succeed: network trouble, 5xx, 408/429, throttling."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        return is_transient(exc.__cause__)  # fsspec's HTTP stat turns every failure into this
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True  # s3fs: 500/InternalError -> EREMOTEIO; 503/SlowDown -> EBUSY
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


def _permanent(exc: Exception) -> OSError:
    """``exc`` as the OSError a caller handles: 401/403 as PermissionError, a backend's own
    exception type as a plain OSError carrying its message."""
    cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ else exc
    status = _http_status(cause)
    if status in (401, 403):
        return PermissionError(errno.EACCES, f"access denied (HTTP {status})")
    return exc if isinstance(exc, OSError) else OSError(describe(exc))


def _http_status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):  # aiohttp, azure-core, gcsfs
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
            return value
    return None


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Reading


def stat(path: str, options: dict | None) -> tuple[int, int]:
    """(size in bytes, modification time in ns; 0 when the store gives none)."""
    if not is_url(path):
        result = os.stat(path)
        return result.st_size, result.st_mtime_ns
    fs, inner = filesystem(path, options)
    info = retry(lambda: fs.info(inner), path, "stat")
    if info.get("type", "file") != "file":
        raise IsADirectoryError(errno.EISDIR, "is a folder, not an object", path)
    return int(info.get("size") or 0), _mtime_ns(info)


def _mtime_ns(info: dict) -> int:
    for key in ("LastModified", "last_modified", "mtime", "updated"):
        value = info.get(key)
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
    return 0


def open_read(url: str, options: dict | None, size: int | None = None) -> io.BufferedReader:
    """A seekable binary file over an object that fetches `HEADER_BLOCK` bytes per range read
    (each retried), so reading a header transfers a block or two, not the object."""
    fs, inner = filesystem(url, options)
    if size is None:
        size = stat(url, options)[0]
    return io.BufferedReader(_RangeReader(fs, inner, url, size), buffer_size=HEADER_BLOCK)


class _RangeReader(io.RawIOBase):
    """Reads aligned blocks of `HEADER_BLOCK` bytes, one range GET each, and keeps the last
    few: Pillow seeks back and forth in a header (TIFF IFDs, the end of the file)."""

    _KEEP = 8

    def __init__(self, fs: Any, inner: str, url: str, size: int):
        self.fs, self.inner, self.url, self.size, self.pos = fs, inner, url, size, 0
        self.name = url
        self.blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, start + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        index, offset = divmod(self.pos, HEADER_BLOCK)
        chunk = self._block(index)[offset:offset + len(buffer)]  # a short read ends a block
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def readall(self) -> bytes:
        # Pillow reads WebP (and GIF frames) whole: the rest of the object in one GET.
        start, self.pos = self.pos, max(self.pos, self.size)
        return self._get(start, self.size) if start < self.size else b""

    def _block(self, index: int) -> bytes:
        if index not in self.blocks:
            if len(self.blocks) >= self._KEEP:
                self.blocks.pop(next(iter(self.blocks)))
            start = index * HEADER_BLOCK
            self.blocks[index] = self._get(start, min(start + HEADER_BLOCK, self.size))
        return self.blocks[index]

    def _get(self, start: int, end: int) -> bytes:
        data = retry(lambda: self.fs.cat_file(self.inner, start=start, end=end), self.url,
                     "read")
        if len(data) > end - start:  # an HTTP server that ignores Range sends the whole object
            data = data[start:end]
        return data


def read_bytes(url: str, options: dict | None) -> bytes:
    """The whole object, in one GET (retried as a whole)."""
    fs, inner = filesystem(url, options)
    return retry(lambda: fs.cat_file(inner), url, "read")


def exists(path: str, options: dict | None) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    fs, inner = filesystem(path, options)
    fs.invalidate_cache(inner)
    try:
        retry(lambda: fs.info(inner), path, "stat")
    except FileNotFoundError:
        return False
    return True


def sizes(root: str, options: dict | None) -> dict[str, int]:
    """``/``-separated path relative to ``root`` -> size, for every object under ``root``,
    from one listing (instead of one request per object)."""
    fs, inner = filesystem(root, options)
    inner = inner.rstrip("/")
    fs.invalidate_cache(inner)
    try:
        found = retry(lambda: fs.find(inner, detail=True), root, "list")
    except FileNotFoundError:
        return {}
    return {name[len(inner) + 1:]: int(info.get("size") or 0)
            for name, info in found.items() if name.startswith(inner + "/")}


# ---------------------------------------------------------------------------------------------
# Listing


def _expand_remote(entry: str, options: dict | None, extensions: frozenset[str],
                   ignored: list[str], problems: list[str]) -> list[tuple[str, str]]:
    """(URL, output name) for every object an ``input.paths`` URL names, like a local entry:
    a glob, a folder (prefix, searched recursively) or one object.  http(s) URLs name one
    object each (HTTP has no listing), so ``?`` in them is a query, not a wildcard."""
    fs, inner = filesystem(entry, options)
    try:
        if not is_read_only(entry) and _GLOB_CHARS.search(inner):
            return _expand_glob(fs, entry, inner)
        try:
            info = retry(lambda: fs.info(inner), entry, "stat")
        except PermissionError:
            info = {"type": "file"}  # reading it reports the denial, as for a broken file
        if info.get("type") == "directory" and not is_read_only(entry):
            if ".zarr" in extensions and inner.rstrip("/").lower().endswith(".zarr"):
                return [(entry.rstrip("/"), _stem(posixpath.basename(inner.rstrip("/"))))]
            return _expand_folder(fs, entry, inner.rstrip("/"), extensions, ignored)
        leaf = entry.split("?", 1)[0] if is_read_only(entry) else entry
        return [(entry, _stem(posixpath.basename(leaf.rstrip("/"))))]
    except FileNotFoundError:
        why = "" if is_read_only(entry) else _missing_bucket(fs, inner)
        problems.append(f"input.paths: {entry!r} does not exist{why}; check the URL")
    except PermissionError as exc:
        problems.append(f"input.paths: {entry!r}: access denied ({describe(exc)}); check the "
                        "credentials (input.storage_options or the usual environment variables)")
    except (OSError, StorageError) as exc:  # the store refuses, or cannot be reached
        problems.append(f"input.paths: {entry!r}: cannot list ({describe(exc)})")
    return []


def _expand_local(entry: str, extensions: frozenset[str], ignored: list[str],
            problems: list[str]) -> list[tuple[str, str]]:
    """(path, name) for every file an input entry names; name is relative, extension dropped."""
    if _GLOB_CHARS.search(entry):
        base = _glob_base(entry)
        files = sorted(p for p in glob.glob(entry, recursive=True)
                       if os.path.isfile(p) or _is_store(p, extensions))
        return [(p, _name(p, base)) for p in files]
    if _is_store(entry, extensions):
        return [(entry, _name(entry.rstrip(os.sep), os.path.dirname(entry.rstrip(os.sep))))]
    if os.path.isdir(entry):
        return [(p, _name(p, entry)) for p in _walk(entry, extensions, ignored)]
    if os.path.isfile(entry):
        return [(entry, _name(entry, os.path.dirname(entry)))]
    if os.path.lexists(entry):
        problems.append(f"input.paths: {entry!r} is not a readable file or folder")
    else:
        problems.append(f"input.paths: {entry!r} does not exist; check the path (relative "
                        "paths are relative to the job file; typed on the command line, to "
                        "the working directory)")
    return []


def _glob_base(pattern: str) -> str:
    head = _GLOB_CHARS.split(pattern, maxsplit=1)[0]
    return head if head.endswith(os.sep) else os.path.dirname(head)


def _name(path: str, base: str) -> str:
    rel = os.path.relpath(path, base) if base else os.path.basename(path)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def _walk(root: str, extensions: frozenset[str], ignored: list[str]) -> list[str]:
    files: list[str] = []
    seen_dirs: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink loop, or a folder reached twice
            dirs[:] = []
            continue
        seen_dirs.add(real)
        stores = sorted(d for d in dirs if _is_store(os.path.join(folder, d), extensions)
                        and not d.startswith("."))
        files.extend(os.path.join(folder, d) for d in stores)  # a zarr store is one input
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in stores)
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in extensions:
                files.append(path)
            else:
                ignored.append(path)
    return files


def _is_store(path: str, extensions: frozenset[str]) -> bool:
    """A local zarr store (issue 12): a folder named ``*.zarr``, read as one input."""
    return ".zarr" in extensions and path.rstrip(os.sep).lower().endswith(".zarr") and \
        os.path.isdir(path)


def _expand_glob(fs: Any, entry: str, pattern: str) -> list[tuple[str, str]]:
    head = _GLOB_CHARS.split(pattern, maxsplit=1)[0]
    base = head.rstrip("/") if head.endswith("/") else posixpath.dirname(head)
    found = retry(lambda: fs.glob(pattern, detail=True), entry, "list")
    if not found:
        retry(lambda: fs.info(pattern.split("/", 1)[0]), entry, "stat")  # the bucket exists?
    files = sorted(name for name, info in found.items()
                   if info.get("type") == "file" and not _hidden(name, base))
    return [(_url_of(fs, entry, name), _stem(_relative(name, base))) for name in files]


def _expand_folder(fs: Any, entry: str, root: str, extensions: frozenset[str],
                   ignored: list[str]) -> list[tuple[str, str]]:
    found = retry(lambda: fs.find(root, detail=True), entry, "list")
    out, stores = [], set()
    for name in sorted(found):
        if found[name].get("type", "file") != "file" or _hidden(name, root):
            continue
        store = _store_of(name, root, extensions)
        if store is not None:  # an object inside a zarr store: the store is one input
            if store not in stores:
                stores.add(store)
                out.append((_url_of(fs, entry, store), _stem(_relative(store, root))))
            continue
        if posixpath.splitext(name)[1].lower() in extensions:
            out.append((_url_of(fs, entry, name), _stem(_relative(name, root))))
        else:
            ignored.append(_url_of(fs, entry, name))
    return out


def _store_of(name: str, root: str, extensions: frozenset[str]) -> str | None:
    """The ``*.zarr`` prefix holding object ``name`` below ``root``, if any."""
    if ".zarr" not in extensions:
        return None
    parts = _relative(name, root).split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(".zarr"):
            return posixpath.join(root, *parts[:i + 1]) if root else "/".join(parts[:i + 1])
    return None


def _url_of(fs: Any, entry: str, name: str) -> str:
    """The URL of a listed object, through the same chain as the entry that listed it."""
    return _chain_prefix(entry) + fs.unstrip_protocol(name)


def _relative(name: str, base: str) -> str:
    return name[len(base):].lstrip("/") if base and name.startswith(base) else name


def _hidden(name: str, base: str) -> bool:
    return any(part.startswith(".") for part in _relative(name, base).split("/"))


def _stem(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def _missing_bucket(fs: Any, inner: str) -> str:
    bucket = inner.split("/", 1)[0]
    if bucket == inner.rstrip("/"):
        return ""
    try:
        fs.info(bucket)
    except FileNotFoundError:
        return f" (bucket {bucket!r} does not exist)"
    except Exception:  # only improves the message
        pass
    return ""


# ---------------------------------------------------------------------------------------------
# Writing


def put_bytes(url: str, data: bytes, options: dict | None) -> None:
    """Store ``data`` as one object with one PUT (retried as a whole): it appears complete or
    not at all."""
    fs, inner = filesystem(url, options)
    retry(lambda: fs.pipe_file(inner, data), url, "write")


def remove(url: str, options: dict | None, attempts: int = 0) -> None:
    fs, inner = filesystem(url, options)
    try:
        retry(lambda: fs.rm_file(inner), url, "delete", attempts)
    except FileNotFoundError:
        pass


def check_writable(url: str, options: dict | None, probe: str) -> None:
    """Write and delete a probe object under ``url``: fails early (no such bucket, access
    denied, store unreachable) before any work starts."""
    target = join(url, probe)
    put_bytes(target, b"", options)
    remove(target, options)
