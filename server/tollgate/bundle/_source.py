"""Where the sidecar's bundle comes from: a directory, a .tar.gz file, or an HTTP(S) bundle service (ETag polling).

A source only fetches: it says what the bundle is now (its bytes and digest) or that it has not changed.
Verifying, loading, compiling and activating a fetched bundle is the activator's job (tollgate.activation).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tollgate.bundle._archive import archive_bytes
from tollgate.bundle._loader import DEFAULT_SIZE_LIMIT, BundleError, read_directory
from tollgate.net import HttpOptions, RequestFailed

if TYPE_CHECKING:
    from tollgate.net import HttpClient


class FetchError(BundleError):
    """The source could not be read: unreachable, an HTTP error, a timeout, or larger than the limit.
    `reason` is `download` or `too_large`."""

    def __init__(self, message: str, *, reason: str = "download") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    """One fetch of a bundle source."""

    #: sha256 of the archive bytes, or over a directory's files (path and content, in path order).
    digest: str
    #: The .tar.gz as fetched; None for a directory source (loaded from the directory itself).
    archive: bytes | None
    #: The HTTP ETag the service sent with it ("" when none, or not HTTP).
    etag: str = ""


class BundleSource(Protocol):
    """A place the sidecar reads its bundle from."""

    #: What --bundle said: a path or a URL.
    location: str
    #: "directory", "file" or "http".
    kind: str

    def fetch(self, etag: str) -> Fetched | None:
        """The bundle as it is now, or None when it has not changed since the fetch that returned etag
        (only HTTP sources answer None; local sources always return their digest, which is cheap).
        Blocking: run it in a thread. Raises FetchError."""
        ...

    def close(self) -> None:
        """Release what the source holds open (an HTTP source's connections)."""
        ...


_NO_HTTP_OPTIONS = HttpOptions()


def open_source(location: str, *, size_limit: int = DEFAULT_SIZE_LIMIT, timeout: float = 10.0,
                http: HttpOptions = _NO_HTTP_OPTIONS) -> BundleSource:
    """The source for a --bundle value: an http(s):// URL (reached with the http options), else a directory or
    a .tar.gz file path."""
    if location.startswith(("http://", "https://")):
        return HttpSource(location, size_limit=size_limit, timeout=timeout, http=http)
    path = Path(location)
    if path.is_file() or (not path.is_dir() and location.endswith((".tar.gz", ".tgz"))):
        return FileSource(location, size_limit=size_limit)
    # A directory, or a path that is not there yet: it is picked up once it appears.
    return DirectorySource(location, size_limit=size_limit)


class DirectorySource:
    """A directory laid out like rego/ (development): re-read when a file's mtime or size changes."""

    kind = "directory"

    def __init__(self, location: str, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.location = location
        self._size_limit = size_limit
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._digest = ""

    def fetch(self, etag: str) -> Fetched:
        root = Path(self.location)
        if not root.is_dir():
            raise FetchError(f"bundle {root}: no such directory (hint: check --bundle)")
        stamp = self._stat(root)
        if stamp != self._stamp:  # stat is cheap; hash the contents only when something changed
            try:
                files = list(read_directory(root, self._size_limit))
            except OSError as exc:
                raise FetchError(f"bundle {root}: cannot be read ({exc})") from exc
            except BundleError as exc:
                raise FetchError(str(exc), reason="too_large") from exc
            h = hashlib.sha256()
            for name, content in files:
                h.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
            self._stamp, self._digest = stamp, h.hexdigest()
        return Fetched(digest=self._digest, archive=None)

    def close(self) -> None:
        pass

    @staticmethod
    def _stat(root: Path) -> tuple[tuple[str, int, int], ...]:
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                out.append((path, st.st_mtime_ns, st.st_size))
        return tuple(out)


class FileSource:
    """An OPA bundle .tar.gz on the local file system: re-read when its mtime or size changes."""

    kind = "file"

    def __init__(self, location: str, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.location = location
        self._size_limit = size_limit
        self._stamp: tuple[int, int, int] | None = None
        self._last: Fetched | None = None

    def fetch(self, etag: str) -> Fetched:
        try:
            st = os.stat(self.location)
        except OSError as exc:
            raise FetchError(f"bundle {self.location}: cannot be read ({exc.strerror or exc}) "
                             "(hint: check --bundle)") from exc
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._last is None:
            if st.st_size > self._size_limit:
                raise FetchError(f"bundle {self.location}: larger than the {self._size_limit}-byte limit",
                                 reason="too_large")
            try:
                data = archive_bytes(self.location, size_limit=self._size_limit)
            except BundleError as exc:
                raise FetchError(str(exc)) from exc
            self._stamp, self._last = stamp, Fetched(digest=hashlib.sha256(data).hexdigest(), archive=data)
        return self._last

    def close(self) -> None:
        pass


class HttpSource:
    """An HTTP(S) bundle service, polled like OPA's: a conditional GET with If-None-Match; 304 = unchanged.

    Redirects are followed (an object store's signed URL, say; the bearer token is not sent to another host).
    The client, and its kept-alive connection, is made on the first fetch, so a CA file that cannot be loaded
    is a failed poll the status reports, like an unreachable service.
    """

    kind = "http"

    def __init__(self, location: str, *, size_limit: int = DEFAULT_SIZE_LIMIT, timeout: float = 10.0,
                 http: HttpOptions = _NO_HTTP_OPTIONS) -> None:
        self.location = location
        self._size_limit = size_limit
        self._timeout = timeout
        self._options = http
        self._client: HttpClient | None = None
        self._lock = threading.Lock()  # fetch runs in a worker thread, close on the event loop

    def fetch(self, etag: str) -> Fetched | None:
        url = self.location
        headers = {"Accept-Encoding": "identity"}
        if etag:
            headers["If-None-Match"] = etag
        try:
            response = self._http().request("GET", url, headers=headers, timeout=self._timeout,
                                            read_limit=self._size_limit)
        except RequestFailed as exc:
            raise FetchError(_failure(url, exc, timeout=self._timeout)) from exc
        if response.status == 304:
            return None
        if not response.ok:
            raise FetchError(f"bundle {url}: HTTP {response.status} {response.reason}")
        if response.truncated:
            length = response.headers.get("Content-Length", "")
            size = f"{length} bytes, over" if length.isdigit() else "larger than"
            raise FetchError(f"bundle {url}: {size} the {self._size_limit}-byte limit", reason="too_large")
        data = response.body
        return Fetched(digest=hashlib.sha256(data).hexdigest(), archive=data, etag=response.headers.get("ETag", ""))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> HttpClient:
        from tollgate.net import HttpClient  # loads httpx2: only a sidecar polling a service pays for it

        with self._lock:
            if self._client is None:
                try:
                    self._client = HttpClient(self._options, follow_redirects=True)
                except OSError as exc:  # ssl.SSLError is one too
                    raise FetchError(f"bundle {self.location}: cannot load the CA file {self._options.ca_file!r} "
                                     f"({exc})") from exc
            return self._client


def _failure(url: str, exc: RequestFailed, *, timeout: float) -> str:
    """What a person reads when a poll got no answer."""
    if exc.timed_out:
        return f"bundle {url}: download took longer than {timeout:g}s ({exc})"
    if isinstance(exc.cause, ssl.SSLCertVerificationError):
        return (f"bundle {url}: unreachable ({exc}) (hint: bundle_ca_file names the CA that issued the "
                "service's certificate)")
    if exc.connect:
        return f"bundle {url}: unreachable ({exc})"
    return f"bundle {url}: download failed ({exc})"
