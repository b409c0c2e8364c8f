"""``POST files/``: the upload is kept under the storage directory and file-processing runs on it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile

from executions import store
from tests.conftest import wait_terminal
from tests.integration.api.conftest import assert_error

API = "/api/v1/"
TEXT = b"name,qty\napples,3\npears,5\n"


def upload(client: Any, content: bytes = TEXT, name: str = "fruit.csv", key: str | None = None,
           **extra: Any) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(API + "files/", {"file": SimpleUploadedFile(name, content), **extra},
                       format="multipart", headers=headers)


def uploads(storage: Path) -> list[Path]:
    folder = storage / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_upload__starts_file_processing_which_processes_the_file(
    operator: Any, worker: Any, isolated: Path
) -> None:
    response = upload(operator)

    body = response.json()
    assert response.status_code == 201
    assert (body["workflow"], body["created_by"]) == ("file-processing", "operator")
    [kept] = uploads(isolated)
    assert body["input"] == {"path": f"uploads/{kept.name}", "name": "fruit.csv", "size": len(TEXT),
                             "sha256": hashlib.sha256(TEXT).hexdigest()}
    assert kept.read_bytes() == TEXT
    [doc] = wait_terminal(body["id"])
    assert doc["status"] == "SUCCEEDED"
    validated = json.loads(doc["steps"][1]["output_json"])
    assert validated["type"] == "csv"


def test_upload__over_the_size_limit_is_413_and_keeps_nothing(
    operator: Any, settings: Any, isolated: Path
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "MAX_FILE_BYTES": "10"}

    response = upload(operator, b"x" * 11, "big.txt")

    body = assert_error(response, 413, "too_large")
    assert "DETFLOW_MAX_FILE_BYTES" in body["detail"]
    assert uploads(isolated) == [] and store.collection().count_documents({}) == 0


def test_upload__a_declared_length_far_over_the_limit_is_413_before_reading(
    operator: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "MAX_FILE_BYTES": "10"}

    response = operator.generic("POST", API + "files/", b"", content_type="multipart/form-data; boundary=x",
                                CONTENT_LENGTH=str(10 + 64 * 1024 + 1))

    assert_error(response, 413, "too_large")


def test_upload__same_key_and_file_answer_the_first_execution_other_file_409(
    operator: Any, isolated: Path
) -> None:
    first = upload(operator, key="scan-1")
    again = upload(operator, key="scan-1")
    other = upload(operator, TEXT + b"plums,1\n", key="scan-1")

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert_error(other, 409, "idempotency_conflict")
    assert len(uploads(isolated)) == 1 and store.collection().count_documents({}) == 1


def test_upload__without_a_file_or_with_other_fields_is_400(operator: Any, isolated: Path) -> None:
    missing = operator.post(API + "files/", {}, format="multipart")
    extra = upload(operator, owner="bob")
    as_json = operator.post(API + "files/", {"file": "x"}, format="json")

    assert_error(missing, 400, "required", "file")
    assert_error(extra, 400, "unknown_field", "owner")
    assert_error(as_json, 415, "unsupported_media_type")
    assert uploads(isolated) == []


def test_upload__the_client_name_is_data_never_a_path(operator: Any, isolated: Path) -> None:
    body = upload(operator, name="../../etc/passwd").json()

    [kept] = uploads(isolated)
    assert kept.parent == isolated / "uploads"
    assert body["input"]["name"] == "passwd"
