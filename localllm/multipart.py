"""multipart/form-data parsing with the standard library's email parser.

Starlette's own form parsing needs python-multipart; a file upload endpoint that receives a handful of
fields per request does not justify another dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    data: bytes
    filename: str | None = None


def parse_form_data(content_type: str, body: bytes) -> dict[str, FormField]:
    """The fields of a multipart/form-data body by name (the last one wins); ValueError if it isn't one."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ValueError("expected a multipart/form-data body with a boundary")
    # The body is a MIME multipart entity once given its Content-Type header.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ValueError("malformed multipart/form-data body")
    fields: dict[str, FormField] = {}
    for part in message.iter_parts():
        if not isinstance(part, EmailMessage):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields[name] = FormField(name, data, part.get_filename())
    return fields
