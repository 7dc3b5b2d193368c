"""The routes every Neutron resource router shares, built once: list, show, update, delete.

A `Resource` says how one resource is served: its `ResourceSpec` (envelope names, visibility,
presentation for the caller), the store collection it lives in, its 404 and, where the view
needs more than the record (a trunk's status comes from its parent port), an `expand` hook.
The routers keep what really differs (creates, custom actions, in-use checks) and hand the
rest to these factories:

- `fetch`: the stored object, or the resource's 404 when it is missing or the caller cannot
  see it (another project's object is indistinguishable from a missing one).
- `add_list` / `add_show`: `GET /<collection>` with Neutron's query language and
  `GET /<collection>/{id}` with `fields` (collection.py).
- `add_create`: `POST /<collection>`: the body (single or bulk) parsed by the create model, then
  in one transaction the resource's `build` hook per item, in order (it enforces the create
  policy, checks, stores and returns the new object); the 201 answer of `created`.
- `add_update`: `PUT /<collection>/{id}`: the body `{member: {...}}` parsed by the update model
  (read-only attributes 400), `update_<member>` enforced over the changed attribute names,
  `If-Match` (when asked), the resource's `apply` hook (checks and changes in place; it may
  return the object as shown, read in the same transaction), the object stored, the answer
  `{member: view}`.
- `add_delete`: `DELETE /<collection>/{id}`: `delete_<member>` enforced, `If-Match` (when
  asked), the resource's `remove` hook (checks, then the deletes), 204.
- `add_action`: `PUT /<collection>/{id}/<action>` (Neutron's member actions such as
  `add_prefixes`): the body parsed by the route's parser, the action's policy rule enforced on
  the object, then the `change` hook, whose result (expanded, when asked) is the answer.
- `created`: the 201 answer of a create, single or bulk.

Invariants:
- Every handler reads and writes the store inside one transaction, and runs `off_loop`.
- A handler is registered under the name and path parameter the router gives, with the same
  signature shape as a hand-written one, so `/openapi.json` (operation ids, summaries, response
  titles, parameters) does not depend on whether a route was written out or built here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response, show_response
from vxnet.api.errors import ApiError, not_found
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import changes, parse_create, parse_update
from vxnet.services.repo import Repo, UnitOfWork

Obj = dict[str, Any]
Expand = Callable[[AppState, Obj], Obj]
Apply = Callable[[UnitOfWork, Context, Obj, dict[str, Any]], Obj | None]
Remove = Callable[[UnitOfWork, Context, Obj], None]
Change = Callable[[UnitOfWork, Context, Obj, Any], Obj]
Build = Callable[[UnitOfWork, Context, Any, policy.Policy], Obj]
BuildAll = Callable[[UnitOfWork, Context, list[Any], policy.Policy], list[Obj]]


def _no_expand(st: AppState, obj: Obj) -> Obj:
    return obj


@dataclasses.dataclass(frozen=True)
class Resource:
    """One resource as its router serves it."""

    spec: ResourceSpec
    store: str = ""  # the store collection; "" = spec.collection
    missing: Callable[[str], ApiError] | None = None  # the 404; None = Neutron's generic `<Member>NotFound`
    expand: Expand = _no_expand  # the record as served, before spec.present

    @property
    def collection(self) -> str:
        return self.store or self.spec.collection

    def not_found(self, id_: str) -> ApiError:
        return self.missing(id_) if self.missing is not None else not_found(self.spec.member, id_)

    def fetch(self, reader: Repo | UnitOfWork, ctx: Context, id_: str) -> Obj:
        """The object as stored, or the resource's 404 (also for one the caller cannot see)."""
        obj = reader.get(self.collection, id_)
        if obj is None or not self.spec.visible(ctx, obj):
            raise self.not_found(id_)
        return obj

    def view(self, st: AppState, ctx: Context, obj: Obj) -> Obj:
        """The object as the caller is shown it."""
        return self.spec.present(ctx, self.expand(st, obj))

    def created(self, st: AppState, ctx: Context, objs: list[Obj], bulk: bool) -> JSONResponse:
        """The 201 answer of a create: `{member: ...}` or, for a bulk create, `{collection: [...]}`."""
        shown = [self.view(st, ctx, o) for o in objs]
        body = {self.spec.collection: shown} if bulk else {self.spec.member: shown[0]}
        return JSONResponse(body, status_code=201)

    def add_list(self, router: APIRouter, path: str, name: str) -> None:
        """`GET path`: the visible objects, filtered, sorted and paged."""

        async def run(request: Request) -> Response:
            st = AppState.of(request)
            objs = st.repo.list(self.collection)
            if self.expand is not _no_expand:
                objs = [self.expand(st, o) for o in objs]
            return list_response(request, st.context(request), self.spec, objs)

        _register(router, "GET", path, name, [], run, Response)

    def add_show(self, router: APIRouter, path: str, name: str, id_param: str) -> None:
        """`GET path`: one visible object, or its 404."""

        async def run(request: Request, id_: str) -> Obj:
            st = AppState.of(request)
            ctx = st.context(request)
            return show_response(request, ctx, self.spec, self.expand(st, self.fetch(st.repo, ctx, id_)))

        _register(router, "GET", path, name, [id_param], run, dict[str, Any])

    def add_create(self, router: APIRouter, path: str, name: str, model: type[BaseModel], build: Build | None,
                   build_all: BuildAll | None = None) -> None:
        """`POST path`: `build(uow, ctx, item, policy)` for every item of the body, in one transaction
        (or `build_all(uow, ctx, items, policy)` once, for items that share work)."""

        async def run(request: Request) -> JSONResponse:
            st = AppState.of(request)
            ctx = st.context(request)
            items, bulk = parse_create(await read_json(request), self.spec.member, self.spec.collection, model)
            pol = policy.of(st.config)

            def txn(uow: UnitOfWork) -> list[Obj]:
                if build_all is not None:
                    return build_all(uow, ctx, items, pol)
                assert build is not None
                return [build(uow, ctx, item, pol) for item in items]

            return self.created(st, ctx, st.repo.transact(txn), bulk)

        _register(router, "POST", path, name, [], run, JSONResponse, status_code=201)

    def add_update(self, router: APIRouter, path: str, name: str, id_param: str, model: type[BaseModel],
                   apply: Apply, read_only: tuple[str, ...] = ("id", "project_id"), if_match: bool = True) -> None:
        """`PUT path`: `apply` changes the fetched object in place (after the policy check); it is
        then stored and shown: as `expand` shows it after the commit, or, when `apply` returns
        an object, that one (read in the transaction)."""
        member = self.spec.member

        async def run(request: Request, id_: str) -> Obj:
            st = AppState.of(request)
            ctx = st.context(request)
            fields = changes(parse_update(await read_json(request), member, model, read_only=read_only))
            pol = policy.of(st.config)

            def txn(uow: UnitOfWork) -> tuple[Obj, Obj | None]:
                obj = self.fetch(uow, ctx, id_)
                pol.enforce(ctx, f"update_{member}", policy.target(member, obj), sorted(fields))
                if if_match:
                    check_if_match(request, obj)
                shown = apply(uow, ctx, obj, dict(fields))  # a copy: a retried transaction sees the body again
                uow.put(self.collection, obj)
                return obj, shown

            obj, shown = st.repo.transact(txn)
            return {member: self.view(st, ctx, obj) if shown is None else self.spec.present(ctx, shown)}

        _register(router, "PUT", path, name, [id_param], run, dict[str, Any])

    def add_delete(self, router: APIRouter, path: str, name: str, id_param: str, remove: Remove,
                   if_match: bool = True) -> None:
        """`DELETE path`: `remove` checks and deletes the fetched object (after the policy check)."""
        member = self.spec.member

        async def run(request: Request, id_: str) -> Response:
            st = AppState.of(request)
            ctx = st.context(request)
            pol = policy.of(st.config)

            def txn(uow: UnitOfWork) -> None:
                obj = self.fetch(uow, ctx, id_)
                pol.enforce(ctx, f"delete_{member}", policy.target(member, obj))
                if if_match:
                    check_if_match(request, obj)
                remove(uow, ctx, obj)

            st.repo.transact(txn)
            return Response(status_code=204)

        _register(router, "DELETE", path, name, [id_param], run, Response, status_code=204)


    def add_action(self, router: APIRouter, path: str, name: str, id_param: str, action: str,
                   parse: Callable[[Any], Any], change: Change, expand_answer: bool = False) -> None:
        """`PUT path`: `change(uow, ctx, obj, parse(body))` after the policy rule `action`; it
        stores what it changes and returns the answer (the object, expanded, if `expand_answer`)."""
        member = self.spec.member

        async def run(request: Request, id_: str) -> Obj:
            st = AppState.of(request)
            ctx = st.context(request)
            wanted = parse(await read_json(request))
            pol = policy.of(st.config)

            def txn(uow: UnitOfWork) -> Obj:
                obj = self.fetch(uow, ctx, id_)
                pol.enforce(ctx, action, policy.target(member, obj))
                return change(uow, ctx, obj, wanted)

            result = st.repo.transact(txn)
            return self.expand(st, result) if expand_answer else result

        _register(router, "PUT", path, name, [id_param], run, dict[str, Any])


def _register(router: APIRouter, method: str, path: str, name: str, params: list[str],
              run: Callable[..., Awaitable[Any]], returns: Any, status_code: int | None = None) -> None:
    """Add `run(request, *path_values)` as the handler `name(<params>: str, request: Request)`."""

    async def handler(**kwargs: Any) -> Any:
        request = kwargs.pop("request")
        return await run(request, *(kwargs[p] for p in params))

    handler.__name__ = handler.__qualname__ = name
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str) for p in params]
        + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)],
        return_annotation=returns)
    extra: dict[str, Any] = {} if status_code is None else {"status_code": status_code}
    router.add_api_route(path, off_loop(handler), methods=[method], name=name, **extra)
