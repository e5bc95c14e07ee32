"""The one exception every route raises to answer in OpenAI's error shape (no web framework imported)."""

from __future__ import annotations

from contract.openai_shapes import JSONObject, error_body


class ApiError(Exception):
    """A request failure reported to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str = "invalid_request_error",
        code: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        body: JSONObject | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # A prepared body (e.g. context_length_exceeded's) wins over the one built from the fields.
        self._body = body or error_body(message, err_type, code=code, param=param)

    @classmethod
    def with_body(cls, status: int, body: JSONObject) -> ApiError:
        """An error whose body was built elsewhere (e.g. ``context_length_exceeded``)."""
        return cls(status, str(body["error"]["message"]), body=body)

    def body(self) -> JSONObject:
        return self._body

    @property
    def code(self) -> str | None:
        code = self._body["error"].get("code")
        return code if isinstance(code, str) else None


def not_found(kind: str, object_id: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id {object_id!r}.", code="not_found")
