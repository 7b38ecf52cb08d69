"""The network edge of updates: TUF metadata fetches and resumable artifact downloads.

One ``httpx.Client`` serves both.  Metadata goes through python-tuf's
``FetcherInterface`` (ngclient bounds the length of each role itself); the
artifact download is ours because ngclient's cannot resume: it appends to a
partial file with ``Range: bytes=N-`` and never accepts more bytes than the
length the signed targets metadata declares (an endless stream is cut at
``length + 1`` bytes and refused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from edgefleet_contract.errors import DownloadFailed, TrustError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
Progress = Callable[[int], None]
"""Called with the number of bytes in the partial file after each chunk."""


class HttpxFetcher(FetcherInterface):
    """python-tuf fetcher over httpx; HTTP errors become ``DownloadHTTPError`` (404 ends a walk)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self.client.send(self.client.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise DownloadError(f"cannot fetch {url}: {exc}") from exc
        if response.status_code != 200:
            response.close()
            raise DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return _chunks(response)


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(CHUNK)
    except httpx.HTTPError as exc:
        raise DownloadError(f"the connection broke: {exc}") from exc
    finally:
        response.close()


def download_resumable(
    client: httpx.Client,
    url: str,
    partial: Path,
    length: int,
    *,
    progress: Progress | None = None,
) -> int:
    """Complete ``partial`` up to exactly ``length`` bytes; return the bytes fetched now.

    Bytes already in ``partial`` are kept and only the rest is asked for.  A
    server that ignores the Range header (200 instead of 206) is read from the
    start into a fresh file.  Each chunk is flushed and fsynced so a power cut
    loses at most the chunk in flight, never the file's consistency.
    """
    have = partial.stat().st_size if partial.exists() else 0
    if have > length:
        log.warning("%s is longer than the signed length; starting over", partial)
        partial.unlink()
        have = 0
    if have == length:
        return 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and have:
                partial.unlink()
                raise DownloadFailed(f"{url}: the server refused to resume (HTTP 416)")
            if response.status_code not in (200, 206):
                raise DownloadFailed(
                    f"{url}: the server answered HTTP {response.status_code}",
                    retryable=_transient(response.status_code),
                )
            if response.status_code == 200 and have:
                have = 0
            span = response.headers.get("content-range", "")
            if response.status_code == 206 and not span.startswith(f"bytes {have}-"):
                partial.unlink()
                raise DownloadFailed(
                    f"{url}: asked for bytes from {have}, got {span or 'no Content-Range'}; "
                    "starting over"
                )
            return _append(response, partial, have, length, url, progress)
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"the download of {url} broke off: {exc}") from exc


def _transient(status: int) -> bool:
    """5xx, 408 (timeout), 425 and 429 (slow down) may pass; other 4xx will not."""
    return not 400 <= status < 500 or status in (408, 425, 429)


def _append(
    response: httpx.Response,
    partial: Path,
    have: int,
    length: int,
    url: str,
    progress: Progress | None,
) -> int:
    partial.parent.mkdir(parents=True, exist_ok=True)
    fetched = 0
    with partial.open("ab" if have else "wb") as fh:
        for chunk in response.iter_bytes():
            if have + fetched + len(chunk) > length:
                fh.close()
                partial.unlink()
                raise TrustError(
                    f"{url} sent more than the {length} bytes its signed metadata allows; "
                    "download refused (endless-data attack or a wrong file on the server)"
                )
            fh.write(chunk)
            fetched += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            if progress is not None:
                progress(have + fetched)
    if have + fetched < length:
        raise DownloadFailed(
            f"{url} ended after {have + fetched} of {length} bytes; the next attempt resumes there"
        )
    return fetched
