"""The services' own errors: what went wrong in domain terms, with Neutron's exception names.

Services (`vxnet.services.*`) raise these and never import the API layer; `vxnet.api.errors`
maps each class to its HTTP status (`FAULT_MAP`, as Neutron's API maps neutron-lib's exception
classes) and renders the NeutronError body. The class says what kind of failure it is; `type`
is the Neutron exception name clients match on (`NetworkNotFound`, `IpAddressAlreadyAllocated`,
...), `message` the Neutron wording.

Invariant: a ServiceError is raised before the caller's transaction commits (a service that
raises stages nothing that may be committed), so the API answers 4xx with nothing half-written.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A failure the caller caused or must resolve; subclasses say which kind."""

    def __init__(self, type_: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.detail = detail


class BadRequest(ServiceError):
    """The request is invalid in itself (Neutron: BadRequest, InvalidInput, ...)."""


class NotAuthorized(ServiceError):
    """Policy forbids the action (Neutron: PolicyNotAuthorized)."""


class NotFound(ServiceError):
    """A named object does not exist (or is not visible to the caller)."""


class Conflict(ServiceError):
    """The request conflicts with the current state (Neutron: Conflict and its subclasses)."""


class InUse(Conflict):
    """The object is in use and cannot be changed or removed (Neutron: InUse)."""


class Unavailable(ServiceError):
    """A dependency cannot be reached right now; the request may be retried."""


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


def not_found(resource: str, id_: str) -> NotFound:
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
    return NotFound(f"{name}NotFound", msg)


def bad_request(message: str, type_: str = "BadRequest") -> BadRequest:
    """A BadRequest with Neutron's type name `type_`."""
    return BadRequest(type_, message)


def invalid_input(message: str) -> BadRequest:
    """Neutron's InvalidInput wording."""
    return BadRequest("InvalidInput", f"Invalid input for operation: {message}.")


def conflict(type_: str, message: str) -> Conflict:
    """A Conflict with Neutron's type name `type_`."""
    return Conflict(type_, message)
