"""Neutron-style API errors.

Every error leaves the server as `{"NeutronError": {"type", "message", "detail"}}` with a 4xx
status, using Neutron's exception names and wording (clients and tempest match on them).
Raise `ApiError` (or a helper below) anywhere in request handling; `app.py` renders it.
"""

from __future__ import annotations

from typing import Any


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


_NOT_FOUND_NAMES = {
    "network": "Network",
    "subnet": "Subnet",
    "port": "Port",
    "router": "Router",
    "floatingip": "FloatingIP",
    "security_group": "SecurityGroup",
    "security_group_rule": "SecurityGroupRule",
    "agent": "Agent",
    "subnetpool": "SubnetPool",
}


def not_found(resource: str, id_: str) -> ApiError:
    """`NetworkNotFound: Network <id> could not be found.` and friends."""
    name = _NOT_FOUND_NAMES.get(resource, resource.title().replace("_", ""))
    if resource == "security_group":
        msg = f"Security group {id_} does not exist"
    elif resource == "security_group_rule":
        msg = f"Security group rule {id_} does not exist"
    elif resource == "floatingip":
        msg = f"Floating IP {id_} could not be found"
    elif resource == "subnetpool":
        msg = f"Subnet pool {id_} could not be found."
    else:
        msg = f"{name} {id_} could not be found."
    return ApiError(404, f"{name}NotFound", msg)


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
