"""Small rules of the portal's HTTP answers, in one place."""

from __future__ import annotations

from typing import TypeVar

from django.http import HttpResponseBase

ResponseT = TypeVar("ResponseT", bound=HttpResponseBase)


def no_store(response: ResponseT) -> ResponseT:
    """Never kept by a browser or a proxy: the answer carries a user's state or secrets."""
    response["Cache-Control"] = "no-store"
    return response
