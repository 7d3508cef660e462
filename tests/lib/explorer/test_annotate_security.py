"""Nobody writes who should not: every refused write over real HTTP stores nothing.

Each refusal test sends the request a valid label post would be, minus one thing (the
annotate mode, the token, the Origin, the CSRF token, a value the schema accepts), and checks
the store still holds no label; the positive control stores one with the same request whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from manta_lib.errors import ConfigError
from manta_lib.explorer.write_guard import AccessPolicy, access_policy
from manta_lib.settings import load_settings
from tests.lib.explorer.conftest import AnnotateData, csrf_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ORIGIN = {"Origin": "http://127.0.0.1"}
TOKEN = "t0ken-for-the-annotation-tests"
ANA_TOKEN = "ana-has-her-own-token-0001"


def start(client: TestClient, queue_id: str, name: str = "ana") -> tuple[str, str]:
    """Set the annotator name and take the queue's next item: (item URL, CSRF token)."""
    page = client.get("/annotate")
    assert page.status_code == 200, page.text
    csrf = csrf_of(page.text)
    named = client.post(
        "/annotate/name",
        data={"name": name, "next": "/annotate", "csrf_token": csrf},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert named.status_code == 303, named.text
    taken = client.post(
        f"/annotate/{queue_id}/next",
        data={"csrf_token": csrf},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert taken.status_code == 303, taken.text
    return taken.headers["location"], csrf


def test_a_valid_label_post_is_stored(annotate_data: AnnotateData) -> None:
    """The positive control: the request the refusal tests break stores a label."""
    before = len(annotate_data.labels())
    with annotate_data.client() as client:
        item, csrf = start(client, annotate_data.queue_id, "control")
        saved = client.post(
            f"{item}/label",
            data={"f.category": "looping", "f.note": "loops on the tool", "csrf_token": csrf},
            headers=ORIGIN,
            follow_redirects=False,
        )
    assert saved.status_code == 303, saved.text
    labels = annotate_data.labels()
    assert len(labels) == before + 1
    mine = [label for label in labels if label.annotator == "control"]
    assert [m.values for m in mine] == [{"category": "looping", "note": "loops on the tool"}]
    assert f"/items/{mine[0].position}" in item


def test_the_read_only_explorer_answers_405_to_every_write(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    with annotate_data.client(annotate=False) as client:
        csrf = client.get("/").cookies.get("manta_csrf") or ""
        assert len(csrf) >= 32  # the session has a CSRF cookie, but writes stay off
        for path in (
            f"/annotate/{annotate_data.queue_id}/next",
            f"/annotate/{annotate_data.queue_id}/items/0/label",
            "/annotate/name",
            "/login",
            "/traces",
        ):
            answer = client.post(
                path, data={"f.category": "looping", "csrf_token": csrf}, headers=ORIGIN
            )
            assert answer.status_code == 405, path
            assert answer.headers["allow"] == "GET, HEAD"
        assert client.put("/annotate/name").status_code == 405
        assert client.get("/annotate").status_code == 404  # no annotation pages at all
    assert annotate_data.labels() == before


def test_annotate_mode_still_refuses_writes_outside_the_annotation_endpoints(
    annotate_data: AnnotateData,
) -> None:
    with annotate_data.client() as client:
        csrf = csrf_of(client.get("/annotate").text)
        for method in ("post", "delete"):
            answer = client.request(method, "/traces", data={"csrf_token": csrf}, headers=ORIGIN)
            assert answer.status_code == 405


def test_a_write_without_the_csrf_token_is_refused(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    with annotate_data.client() as client:
        item, csrf = start(client, annotate_data.queue_id, "no_csrf")
        for form in (
            {"f.category": "looping"},
            {"f.category": "looping", "csrf_token": ""},
            {"f.category": "looping", "csrf_token": csrf[:-2] + "xx"},
        ):
            answer = client.post(f"{item}/label", data=form, headers=ORIGIN)
            assert answer.status_code == 403
            assert "CSRF" in answer.text
        # the token of another session (another browser's cookie) does not count either
        other = annotate_data.client()
        other_csrf = csrf_of(other.get("/annotate").text)
        answer = client.post(
            f"{item}/label",
            data={"f.category": "looping", "csrf_token": other_csrf},
            headers=ORIGIN,
        )
        assert answer.status_code == 403
    assert annotate_data.labels() == before


def test_a_write_from_another_origin_is_refused(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    with annotate_data.client() as client:
        item, csrf = start(client, annotate_data.queue_id, "cross_site")
        form = {"f.category": "looping", "csrf_token": csrf}
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
            {"Origin": "https://127.0.0.1"},
            {"Origin": "null"},  # a sandboxed frame or a data: URL
            {"Referer": "http://evil.example/page"},
            {},  # neither Origin nor Referer
        ):
            answer = client.post(f"{item}/label", data=form, headers=headers)
            assert answer.status_code == 403, headers
        # the Referer of the explorer's own page is enough when a browser sends no Origin
        named = client.post(
            "/annotate/name",
            data={"name": "cross_site", "csrf_token": csrf},
            headers={"Referer": "http://127.0.0.1/annotate"},
            follow_redirects=False,
        )
        assert named.status_code == 303
    assert annotate_data.labels() == before


def test_a_value_outside_the_schema_is_shown_and_not_stored(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    with annotate_data.client() as client:
        item, csrf = start(client, annotate_data.queue_id, "schema")
        for form, words in (
            ({"f.category": "bored"}, ["category", "bored", "looping"]),
            ({"f.category": "looping", "f.mood": "sad"}, ["mood", "category, note"]),
            ({"f.note": "no category"}, ["category"]),
        ):
            answer = client.post(f"{item}/label", data={**form, "csrf_token": csrf}, headers=ORIGIN)
            assert answer.status_code == 400
            error = answer.text.split('id="label-error">', 1)[1].split("</p>", 1)[0]
            for word in words:
                assert word in error
            assert 'id="label-form"' in answer.text  # the form again, to correct it
    assert annotate_data.labels() == before


def test_a_token_guards_reads_and_writes(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    policy = AccessPolicy(annotate=True, tokens={TOKEN: None})
    with annotate_data.client(policy=policy) as client:
        first = client.get("/traces", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/login?next=%2Ftraces"
        assert client.get("/static/explorer.css").status_code == 200
        wrong = client.get("/traces", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert (
            client.get("/traces", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        )
        login = client.get("/login?next=/annotate")
        csrf = csrf_of(login.text)
        path = f"/annotate/{annotate_data.queue_id}/items/0/label"
        form = {"f.category": "looping", "csrf_token": csrf}
        # a write without a token, then with a wrong one
        assert client.post(path, data=form, headers=ORIGIN).status_code == 401
        wrong = client.post(path, data=form, headers={**ORIGIN, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        refused = client.post(
            "/login",
            data={"token": "wrong", "next": "/annotate", "csrf_token": csrf},
            headers=ORIGIN,
        )
        assert refused.status_code == 401 and "not valid" in refused.text
        assert client.get("/annotate", follow_redirects=False).status_code == 303
        # a login from another origin sets nothing
        cross = client.post(
            "/login",
            data={"token": TOKEN, "next": "/annotate", "csrf_token": csrf},
            headers={"Origin": "http://evil.example"},
            follow_redirects=False,
        )
        assert cross.status_code == 403 and "manta_token" not in cross.headers.get("set-cookie", "")
        assert annotate_data.labels() == before
        logged = client.post(
            "/login",
            data={"token": TOKEN, "next": "//evil.example/", "csrf_token": csrf},
            headers=ORIGIN,
            follow_redirects=False,
        )
        assert logged.status_code == 303 and logged.headers["location"] == "/"  # never off-site
        assert client.get("/traces").status_code == 200  # the cookie now
        item, csrf = start(client, annotate_data.queue_id, "bea")
        saved = client.post(
            f"{item}/label", data={"f.category": "passed", "csrf_token": csrf}, headers=ORIGIN,
            follow_redirects=False,
        )  # fmt: skip
        assert saved.status_code == 303
    after = [label for label in annotate_data.labels() if label not in before]
    assert [(label.annotator, label.values["category"]) for label in after] == [("bea", "passed")]


def test_a_tokens_file_names_the_annotator(annotate_data: AnnotateData, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({ANA_TOKEN: "ana_from_token"}))
    settings = annotate_data.settings.model_copy(update={"explorer_tokens_file": tokens})
    policy = access_policy(settings, annotate=True)
    before = annotate_data.labels()
    auth = {"Authorization": f"Bearer {ANA_TOKEN}"}
    with annotate_data.client(policy=policy) as client:
        page = client.get("/annotate", headers=auth)
        assert "ana_from_token" in page.text and 'action="/annotate/name"' not in page.text
        csrf = csrf_of(client.get(f"/annotate/{annotate_data.queue_id}", headers=auth).text)
        # a name given in a form does not override the token's
        client.post(
            "/annotate/name",
            data={"name": "mallory", "csrf_token": csrf},
            headers={**ORIGIN, **auth},
        )
        taken = client.post(
            f"/annotate/{annotate_data.queue_id}/next",
            data={"csrf_token": csrf},
            headers={**ORIGIN, **auth},
            follow_redirects=False,
        )
        saved = client.post(
            f"{taken.headers['location']}/label",
            data={"f.category": "wrong_answer", "csrf_token": csrf},
            headers={**ORIGIN, **auth},
            follow_redirects=False,
        )
        assert saved.status_code == 303
    after = [label for label in annotate_data.labels() if label not in before]
    assert [label.annotator for label in after] == ["ana_from_token"]


def test_bad_token_settings_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MANTA_EXPLORER_TOKEN.*at least 16"):
        access_policy(load_settings(explorer_token="short"))
    bad = tmp_path / "tokens.json"
    bad.write_text('["not", "an object"]')
    with pytest.raises(ConfigError, match="JSON object"):
        access_policy(load_settings(explorer_tokens_file=bad))
    bad.write_text(json.dumps({ANA_TOKEN: "<script>"}))
    with pytest.raises(ConfigError, match="annotator name"):
        access_policy(load_settings(explorer_tokens_file=bad))


def test_remote_annotation_without_a_token_does_not_start(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MANTA_DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("manta")),
            "explore",
            "--host",
            "0.0.0.0",
            "--allow-remote",
            "--annotate",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "MANTA_EXPLORER_TOKEN" in result.stderr and "Traceback" not in result.stderr
