"""Odd bytes in an import file (NUL, lone surrogates, a BOM, CRLF line ends) through both ways in,
the management command and the API upload: each is refused with the line and the reason, or (BOM,
CRLF) read as the text it plainly is, and a refused file writes nothing."""

from __future__ import annotations

import io
import json

import pytest

from annotation.models import Comparison, Preference, Prompt, Response, Role
from tests.api.conftest import client_for
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

GOOD = json.dumps({"prompt": "Is this fine?", "chosen": "Yes.", "rejected": "No."}).encode()

REFUSED = {
    # A NUL cannot be stored in PostgreSQL text; it must be caught, with its line, before it gets there.
    "escaped NUL": (GOOD + b'\n{"prompt": "a\\u0000b", "chosen": "x", "rejected": "y"}\n', "line 2", "NUL"),
    "raw NUL byte": (GOOD + b'\n{"prompt": "ab", "chosen": "x"\x00, "rejected": "y"}\n', "line 2", "invalid JSON"),
    "lone surrogate": (GOOD + b'\n{"prompt": "q", "chosen": "\\ud800", "rejected": "y"}\n', "line 2", "lone surrogate"),
    "invalid UTF-8 in a later line": (
        GOOD + b"\n" + GOOD.replace(b"fine", b"f\xffne") + b"\n",
        "line 2",
        "not valid UTF-8",
    ),
    # Refused, not guessed at: the message says what it is ("Unexpected UTF-8 BOM").
    "a leading BOM": (b"\xef\xbb\xbf" + GOOD + b"\n", "line 1", "BOM"),
    "a BOM in the middle": (GOOD + b"\n\xef\xbb\xbf" + GOOD.replace(b"fine", b"good") + b"\n", "line 2", "BOM"),
}


def counts() -> tuple[int, int, int, int]:
    return Prompt.objects.count(), Response.objects.count(), Comparison.objects.count(), Preference.objects.count()


@pytest.fixture
def importer(db):
    project = ProjectFactory(slug="odd")
    user = UserFactory(username="odd-admin")
    MembershipFactory(project=project, user=user, role=Role.ADMIN)
    return client_for(user)


def upload(client, content: bytes):
    file = io.BytesIO(content)
    file.name = "odd.jsonl"
    return client.post("/api/v1/projects/odd/import/", {"file": file}, format="multipart")


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_api_refuses_an_odd_file_naming_the_line_and_writes_nothing(case, importer):
    content, where, why = REFUSED[case]
    response = upload(importer, content)
    assert response.status_code == 400, (case, response.status_code, response.content[:300])
    body = response.json()
    assert any(where in key and why in " ".join(messages) for key, messages in body["errors"].items()), body
    assert counts() == (0, 0, 0, 0)


# The command reads files with the same reader as the API; these are the cases that would otherwise
# reach the database (NUL, surrogates) or the JSON decoder (BOM) first.
@pytest.mark.parametrize("case", ["escaped NUL", "lone surrogate", "a leading BOM"])
def test_the_command_refuses_an_odd_file_naming_the_line_and_writes_nothing(case, manage, tmp_path, transactional_db):
    content, where, why = REFUSED[case]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(content)
    result = manage("import_preferences", str(path), "--project", "odd", "--create-project")
    stderr = result.stderr.decode()
    assert result.returncode != 0, (case, result.stdout[-500:])
    assert where in stderr and why in stderr and "nothing was imported" in stderr, stderr[-1500:]
    assert "Traceback" not in stderr
    assert counts() == (0, 0, 0, 0)


ACCEPTED = {
    "CRLF line ends": GOOD + b"\r\n" + GOOD.replace(b"fine", b"good") + b"\r\n",
    "right-to-left and zero-width text": json.dumps(
        {"prompt": "\u05e9\u05dc\u05d5\u05dd\u200b?", "chosen": "\u202eok", "rejected": "\ufeffno"}
    ).encode()
    + b"\n",
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_a_bom_crlf_and_odd_but_valid_unicode_import_as_the_text_they_are(case, importer):
    response = upload(importer, ACCEPTED[case])
    assert response.status_code == 201, response.content[:500]
    for text in Prompt.objects.values_list("text", flat=True):
        assert not text.startswith("\ufeff") and "\r" not in text
    for text in Response.objects.values_list("text", flat=True):
        assert "\r" not in text
    if case == "right-to-left and zero-width text":
        assert Prompt.objects.get().text == "\u05e9\u05dc\u05d5\u05dd\u200b?"
        assert set(Response.objects.values_list("text", flat=True)) == {"\u202eok", "\ufeffno"}
