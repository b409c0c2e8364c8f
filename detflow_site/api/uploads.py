"""``POST files/``: store an upload and start the file-processing workflow on it."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site import conf
from detflow_site.api import representations
from detflow_site.api.parsers import content_length
from detflow_site.api.serializers import Strict
from detflow_site.api.throttles import StartThrottle
from detflow_site.api.views import IDEMPOTENCY_KEY, start
from detflow_site.errors import PayloadTooLarge
from executions.errors import IdempotencyConflict
from workflows import storage
from workflows.builtin import FILE_PROCESSING

#: Room for the multipart envelope around the file, in bytes, when the declared length is checked.
ENVELOPE_BYTES = 64 * 1024


class UploadRequest(Strict):
    file = serializers.FileField(help_text="The file; at most DETFLOW_MAX_FILE_BYTES.",
                                 allow_empty_file=True)


class UploadView(APIView):
    parser_classes = [MultiPartParser]
    throttle_classes = [StartThrottle]

    @extend_schema(request={"multipart/form-data": UploadRequest}, parameters=[IDEMPOTENCY_KEY],
                   responses={201: representations.Execution, 200: representations.Execution},
                   summary="Upload a file and start file-processing on it")
    def post(self, request: Request) -> Response:
        limit = conf.get().MAX_FILE_BYTES
        declared = content_length(request.META)
        if declared > limit + ENVELOPE_BYTES:
            raise too_large(declared, limit)
        body = UploadRequest(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data["file"]
        if upload.size > limit:
            raise too_large(upload.size, limit)
        name, digest = keep(upload)
        path = storage.storage_dir() / name
        given = {"path": name, "name": (upload.name or "upload")[:255], "size": upload.size,
                 "sha256": digest}
        try:
            doc, created = start(request, FILE_PROCESSING, given, server_path=True)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        if not created:
            path.unlink(missing_ok=True)
            first = _input(doc)
            if (first.get("sha256"), first.get("name")) != (digest, given["name"]):
                raise IdempotencyConflict(
                    f"Idempotency-Key {doc.get('idempotency_key')!r} was used for execution {doc['_id']} "
                    "with another file; use a new key for a new upload")
        return Response(representations.Execution(doc).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def keep(upload: Any) -> tuple[str, str]:
    """Copy the upload under ``uploads/`` in the storage directory; return its name and SHA-256."""
    digest = hashlib.sha256()

    def fill(out: Any) -> None:
        for chunk in upload.chunks():
            digest.update(chunk)
            out.write(chunk)

    return storage.keep_upload(fill), digest.hexdigest()


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is {size} bytes; files of at most {limit} bytes are accepted "
                           "(DETFLOW_MAX_FILE_BYTES)")


def _input(doc: dict[str, Any]) -> dict[str, Any]:
    value = json.loads(doc["input_json"])
    return value if isinstance(value, dict) else {}
