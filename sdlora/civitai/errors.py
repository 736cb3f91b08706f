"""Why a Civitai request failed: one type per case, each with a one-line message saying what to do.

Messages name the address without its query string (a signed download URL carries credentials there) and
never the API token.
"""

from __future__ import annotations

from sdlora.errors import SdloraError


class CivitaiError(SdloraError):
    """A Civitai request or download did not succeed."""


class TokenNeeded(CivitaiError):
    """401: the resource needs an API token (or the token given was refused)."""


class EarlyAccess(CivitaiError):
    """403: the resource is not open to this account (early access, or a creator's restriction)."""


class NotOnCivitai(CivitaiError):
    """404: Civitai knows no such hash, model or version."""


class Offline(CivitaiError):
    """No network call was possible: offline mode, no connection, or the server did not answer in time."""


class ServerBusy(CivitaiError):
    """429 or 5xx answers went on after every retry."""


class HashMismatch(CivitaiError):
    """A downloaded file's SHA-256 is not the one Civitai lists for it."""
