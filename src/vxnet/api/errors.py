"""Neutron-style API errors.

Every error leaves the server as `{"NeutronError": {"type", "message", "detail"}}` with a 4xx
status, using Neutron's exception names and wording (clients and tempest match on them).
Raise `ApiError` (or a helper below) anywhere in request handling; `app.py` renders it.
Services raise their own `vxnet.services.errors.ServiceError`s; `FAULT_MAP` gives each kind its
HTTP status (as Neutron's API maps neutron-lib's exception classes) and `from_service` turns one
into an ApiError, so both render the same way.
"""

from __future__ import annotations

from typing import Any

from vxnet.services import errors


class ApiError(Exception):
    """An error the client caused (or a conflict): rendered as a NeutronError body."""

    def __init__(self, status: int, type_: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"NeutronError": {"type": self.type, "message": self.message, "detail": self.detail}}


def not_found(resource: str, id_: str) -> ApiError:
    """`NetworkNotFound: Network <id> could not be found.` and friends."""
    return from_service(errors.not_found(resource, id_))


def bad_request(message: str, type_: str = "BadRequest") -> ApiError:
    return ApiError(400, type_, message)


def invalid_input(message: str) -> ApiError:
    return ApiError(400, "InvalidInput", f"Invalid input for operation: {message}.")


def conflict(type_: str, message: str) -> ApiError:
    return ApiError(409, type_, message)


def policy_denied(action: str) -> ApiError:
    return ApiError(403, "PolicyNotAuthorized", f"({action}) is disallowed by policy")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "The request you have made requires authentication.")


def precondition_failed(message: str = "Constraint not met.") -> ApiError:
    return ApiError(412, "PreconditionFailed", message)


# Most specific first: InUse is a Conflict.
FAULT_MAP: tuple[tuple[type[errors.ServiceError], int], ...] = (
    (errors.InUse, 409),
    (errors.Conflict, 409),
    (errors.NotFound, 404),
    (errors.NotAuthorized, 403),
    (errors.BadRequest, 400),
    (errors.Unavailable, 503),
)


def from_service(exc: errors.ServiceError) -> ApiError:
    """The API error of a service error: its kind's status, its Neutron type and message."""
    status = next((code for kind, code in FAULT_MAP if isinstance(exc, kind)), 400)
    return ApiError(status, exc.type, exc.message, exc.detail)
