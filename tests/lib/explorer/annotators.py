"""An annotator over HTTP, as the explorer's annotation pages are used from a browser: one
client with its own cookies (name, CSRF token), posting the forms the pages post."""

from __future__ import annotations

import re

import httpx
from starlette.testclient import TestClient

from tests.lib.explorer.conftest import csrf_of

POSITION = re.compile(r"/items/(\d+)$")


class Annotator:
    """One person in a browser: a client with its own cookies (name, CSRF)."""

    def __init__(self, client: TestClient | httpx.Client, name: str, origin: str) -> None:
        self.client = client
        self.origin = {"Origin": origin}
        self.csrf = csrf_of(client.get("/annotate").text)
        named = self.post("/annotate/name", {"name": name})
        assert named.status_code == 303, named.text

    def post(self, path: str, form: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(
            path,
            data={**(form or {}), "csrf_token": self.csrf},
            headers=self.origin,
            follow_redirects=False,
        )

    def take(self, queue_id: str) -> str:
        """POST next: the URL it redirects to (an item, or the queue when done)."""
        answer = self.post(f"/annotate/{queue_id}/next")
        assert answer.status_code == 303, answer.text
        return str(answer.headers["location"])


def position_of(url: str) -> int | None:
    found = POSITION.search(url)
    return int(found.group(1)) if found else None
