"""The HTTP client sdlora uses for Civitai (httpx): timeouts, retries with backoff, the token, one-line errors.

- 429 answers are retried after the server's `Retry-After` (seconds or an HTTP date, capped), 5xx answers and
  dropped or stalled connections after an exponential backoff; when the retries run out: `ServerBusy` or
  `Offline`.
- 401, 403 and 404 become `TokenNeeded`, `EarlyAccess` and `NotOnCivitai`; a refused connection is `Offline`
  at once (retrying a missing network only makes the user wait).
- The token goes in an `Authorization: Bearer` header, only to the configured Civitai host (httpx drops it
  when a download redirects to another host, such as a signed storage URL). It is never put in a URL.
- In offline mode every call raises `Offline` before touching the network.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from sdlora import __version__
from sdlora.civitai.errors import CivitaiError, EarlyAccess, NotOnCivitai, Offline, ServerBusy, TokenNeeded
from sdlora.civitai.settings import CivitaiSettings

log = logging.getLogger(__name__)

RETRIES = 4
BACKOFF = 1.0       # seconds before the first retry; doubled each time
MAX_WAIT = 60.0     # the longest Retry-After honoured; a longer one gives up with ServerBusy
IMAGE_LIMIT = 30 * 1024 * 1024  # a preview larger than this is not a preview


def where(url: str) -> str:
    """`url` without its query string, for messages (signed URLs carry credentials in the query)."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class CivitaiClient:
    """One connection pool for every request to Civitai (and the downloads it redirects to).

    `sleep` and `backoff` are parameters so tests do not wait; `transport` lets a test plug in httpx's.
    """

    def __init__(self, settings: CivitaiSettings, *, retries: int = RETRIES, backoff: float = BACKOFF,
                 max_wait: float = MAX_WAIT, sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.retries, self.backoff, self.max_wait, self.sleep = retries, backoff, max_wait, sleep
        self._http = httpx.Client(timeout=httpx.Timeout(settings.timeout), follow_redirects=True,
                                  headers={"User-Agent": f"sdlora/{__version__}"}, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the API (docs/civitai.md) ---------------------------------------------------------
    def version_by_hash(self, file_hash: str) -> dict:
        return self.get_json(self.settings.api(f"model-versions/by-hash/{file_hash}"), f"hash {file_hash}")

    def version(self, version_id: int) -> dict:
        return self.get_json(self.settings.api(f"model-versions/{int(version_id)}"), f"model version {version_id}")

    def model(self, model_id: int) -> dict:
        return self.get_json(self.settings.api(f"models/{int(model_id)}"), f"model {model_id}")

    def get_json(self, url: str, what: str) -> dict:
        with self.stream(url, what) as response:
            body = response.read()
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CivitaiError(f"{what}: {where(url)} did not answer with JSON; is the Civitai URL right "
                               f"({self.settings.base_url})?") from None
        if not isinstance(data, dict):
            raise CivitaiError(f"{what}: {where(url)} answered with something other than a JSON object")
        return data

    def get_bytes(self, url: str, what: str, limit: int = IMAGE_LIMIT) -> bytes:
        """A small file (a preview image) in memory; refused when larger than `limit`."""
        with self.stream(url, what) as response:
            blob = bytearray()
            for chunk in response.iter_bytes():
                blob += chunk
                if len(blob) > limit:
                    raise CivitaiError(f"{what}: {where(url)} is larger than {limit // 2**20} MB; not fetched")
        return bytes(blob)

    # ---- requests ------------------------------------------------------------------------------
    @contextmanager
    def stream(self, url: str, what: str, headers: dict | None = None,
               accept: tuple[int, ...] = ()) -> Iterator[httpx.Response]:
        """An open response of a GET to `url` whose status is 2xx (or in `accept`), after retries.

        Raises the error types of `sdlora.civitai.errors`; a connection dropped while the body is read
        raises httpx's error to the caller (a download resumes from where it was)."""
        if self.settings.offline:
            raise Offline(f"{what}: offline mode (--offline or SDLORA_OFFLINE=1) makes no network call")
        request_headers = {**(headers or {}), **self._auth(url)}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.send(self._http.build_request("GET", url, headers=request_headers),
                                           stream=True)
            except httpx.ConnectError as err:
                raise Offline(f"{what}: cannot reach {where(url)} ({_reason(err)}); check the network, or use "
                              "--offline") from None
            except httpx.TransportError as err:  # a timeout or a dropped connection: try again
                if last:
                    raise Offline(f"{what}: {where(url)} did not answer ({_reason(err)}) after {self.retries + 1} "
                                  "tries; try again later") from None
                self._wait(attempt, None)
                continue
            status = response.status_code
            if status < 300 or status in accept:
                try:
                    yield response
                finally:
                    response.close()
                return
            retry_after = response.headers.get("Retry-After")
            response.close()
            if status == 429 or status >= 500:
                if last:
                    raise ServerBusy(f"{what}: {where(url)} still answers {status} after {self.retries + 1} tries; "
                                     "try again later")
                self._wait(attempt, retry_after if status == 429 else None, what)
                continue
            raise self._status_error(status, url, what)

    def _auth(self, url: str) -> dict:
        token = self.settings.token
        return {"Authorization": f"Bearer {token}"} if token and urlsplit(url).netloc.lower() == self.settings.host else {}

    def _wait(self, attempt: int, retry_after: str | None, what: str = "") -> None:
        delay = self.backoff * 2**attempt
        if retry_after is not None:
            asked = _seconds(retry_after)
            if asked is not None:
                if asked > self.max_wait:
                    raise ServerBusy(f"{what}: Civitai asks to wait {asked:.0f} s before the next request (rate "
                                     "limit); try again later")
                delay = max(asked, 0.0)
        log.debug("retrying in %.1f s", delay)
        self.sleep(delay)

    def _status_error(self, status: int, url: str, what: str) -> CivitaiError:
        if status == 401:
            return TokenNeeded(f"{what}: Civitai needs an API token for this (401); set CIVITAI_API_TOKEN, pass "
                               "--token, or save one with `sdlora civitai token`")
        if status == 403:
            return EarlyAccess(f"{what}: not open to this account (403: early access or restricted by its "
                               "creator); check it on the Civitai site")
        if status == 404:
            return NotOnCivitai(f"{what}: not on Civitai (404 from {where(url)})")
        return CivitaiError(f"{what}: {where(url)} answered HTTP {status}")


def _seconds(retry_after: str) -> float | None:
    """A `Retry-After` value (delta seconds or an HTTP date) as seconds from now; None when unreadable."""
    text = retry_after.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment.timestamp() - time.time()


def _reason(err: Exception) -> str:
    return type(err).__name__ + (f": {err}" if str(err) else "")
