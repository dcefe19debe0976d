"""Fail-closed tenant isolation in the ORM.

Every query runs in one of three explicit scopes:

* one tenant (a tenant user's request, a tenant API key, a job working on one tenant):
  every SELECT, UPDATE and DELETE of a tenant-isolated model is filtered to that tenant;
* all tenants (a Platform Admin's request, ``unscoped()`` in the CLI and jobs);
* none (the default): any query that touches a tenant-isolated model raises
  ``TenantScopeError``, so forgetting to choose a scope can never leak rows.

New rows are stamped with the scope's tenant before flush, and a row whose tenant
differs from the scope, or whose tenant changes, is refused.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from sqlalchemy import ForeignKey, event, inspect
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.sql import visitors
from sqlalchemy.sql.expression import ClauseElement, TableClause


class TenantScopeError(RuntimeError):
    """A tenant-isolated row was queried or written outside a matching scope."""


@dataclass(frozen=True)
class Scope:
    kind: str  # "none" | "tenant" | "all"
    tenant_id: int | None = None

    @property
    def is_tenant(self) -> bool:
        return self.kind == "tenant"

    @property
    def is_all(self) -> bool:
        return self.kind == "all"


NO_SCOPE = Scope("none")
ALL_TENANTS = Scope("all")

_current_scope: ContextVar[Scope] = ContextVar("billfold_tenant_scope", default=NO_SCOPE)


def current_scope() -> Scope:
    return _current_scope.get()


def current_tenant_id() -> int | None:
    """The tenant of the current scope, or None in the all-tenants and no-tenant scopes."""
    return _current_scope.get().tenant_id


def set_scope(scope: Scope):
    """Enter ``scope``; returns a token for ``reset_scope`` (request hooks use this)."""
    return _current_scope.set(scope)


def reset_scope(token) -> None:
    _current_scope.reset(token)


@contextmanager
def tenant_scope(tenant: Any) -> Iterator[Scope]:
    """Run the block as ``tenant`` (a Tenant or its id)."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.id
    if tenant_id is None:
        raise TenantScopeError("tenant_scope() needs a persisted tenant")
    token = _current_scope.set(Scope("tenant", int(tenant_id)))
    try:
        yield _current_scope.get()
    finally:
        _current_scope.reset(token)


@contextmanager
def unscoped() -> Iterator[Scope]:
    """Run the block across all tenants: Platform Admin code paths, the CLI and jobs."""
    token = _current_scope.set(ALL_TENANTS)
    try:
        yield ALL_TENANTS
    finally:
        _current_scope.reset(token)


@contextmanager
def no_scope() -> Iterator[Scope]:
    token = _current_scope.set(NO_SCOPE)
    try:
        yield NO_SCOPE
    finally:
        _current_scope.reset(token)


class TenantIsolated:
    """Marker for every model whose rows belong to a tenant.

    ``__tenant_column__`` names the attribute holding the owning tenant's id.
    ``__readable_without_scope__`` lets SELECTs run in the no-tenant scope; only the
    user table sets it, because logging in must find a user before a scope exists.
    """

    __tenant_column__: ClassVar[str] = "tenant_id"
    __readable_without_scope__: ClassVar[bool] = False


class TenantScoped(TenantIsolated):
    """Mixin for tenant-owned models: ``tenant_id`` NOT NULL, stamped and checked.

    ``__tenant_index__ = False`` leaves out the single-column index, for tables whose
    composite unique index already starts with ``tenant_id`` (a second index would
    only slow writes down and tempt the planner into scanning a tenant's rows)."""

    __tenant_index__: ClassVar[bool] = True

    @declared_attr
    def tenant_id(cls) -> Mapped[int]:
        return mapped_column(
            ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False,
            index=cls.__tenant_index__,
        )


def _isolated_mappers(state: ORMExecuteState) -> list[type[TenantIsolated]]:
    """Isolated classes the statement touches: its entities, and also any isolated
    table inside subqueries, CTEs and joins (a statement that selects from a
    subquery has no top-level entity, and must not slip past the scope)."""
    statement = cast(ClauseElement, state.statement)
    try:
        found, core_only = _statement_tables[statement]
    except KeyError:
        found, core_only = _statement_tables[statement] = _tables_of(state, statement)
    if core_only and not _current_scope.get().is_all:
        # A plain Core table is invisible to with_loader_criteria: refuse it.
        names = ", ".join(sorted(c.__name__ for c in core_only))
        raise TenantScopeError(f"query the {names} entity, not its table, in a tenant scope")
    return list(found)


# Statements are immutable, so what one touches is found once: a statement built once
# and run often (a report's, with bind parameters) is not walked on every execution.
_statement_tables: weakref.WeakKeyDictionary[
    ClauseElement, tuple[frozenset[type[TenantIsolated]], frozenset[type[TenantIsolated]]]
] = weakref.WeakKeyDictionary()


def _tables_of(state: ORMExecuteState, statement: ClauseElement
               ) -> tuple[frozenset[type[TenantIsolated]], frozenset[type[TenantIsolated]]]:
    """The isolated classes ``statement`` touches, and those it reaches only through a
    plain Core table."""
    found = {m.class_ for m in state.all_mappers if issubclass(m.class_, TenantIsolated)}
    by_table = _isolated_tables()
    orm_tables: set[type[TenantIsolated]] = set()
    core_tables: set[type[TenantIsolated]] = set()
    for element in visitors.iterate(statement):
        table = element if isinstance(element, TableClause) else getattr(element, "table", None)
        if not isinstance(table, TableClause):
            continue
        cls = by_table.get(table.name)
        if cls is None:
            continue
        found.add(cls)
        annotations = getattr(element, "_annotations", {})
        if "parententity" in annotations or "parentmapper" in annotations:
            orm_tables.add(cls)
        else:
            core_tables.add(cls)
    return frozenset(found), frozenset(core_tables - orm_tables)


@functools.cache
def _isolated_tables() -> dict[str, type[TenantIsolated]]:
    tables: dict[str, type[TenantIsolated]] = {}
    for cls in _isolated_classes():
        table = inspect(cls).local_table
        if isinstance(table, TableClause):
            tables[table.name] = cls
    return tables


@event.listens_for(Session, "do_orm_execute")
def _apply_tenant_scope(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load:
        # Refreshing attributes of an instance that an earlier, scoped query loaded.
        return
    classes = _isolated_mappers(state)
    if not classes:
        return
    scope = _current_scope.get()
    if scope.is_all:
        return
    if not scope.is_tenant:
        if state.is_select and all(c.__readable_without_scope__ for c in classes):
            return
        names = ", ".join(sorted(c.__name__ for c in classes))
        raise TenantScopeError(f"query of tenant-isolated {names} with no tenant scope")
    state.statement = state.statement.options(*_tenant_criteria(scope.tenant_id))


@functools.cache
def _isolated_classes() -> tuple[type[TenantIsolated], ...]:
    """Every mapped tenant-isolated class (collected once all models are mapped)."""
    found: list[type[TenantIsolated]] = []
    stack = list(TenantIsolated.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if inspect(cls, raiseerr=False) is not None and cls not in found:
            found.append(cls)
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _tenant_criteria(tenant_id: int | None) -> tuple:
    # One criterion per concrete class rather than one lambda on the mixin: the
    # owning column differs (Tenant is owned through its own id), and the criteria
    # also reach eager and lazy loads of related rows. The options are immutable,
    # so a tenant's set is built once and shared by every statement in its scope
    # (building it costs more than a simple query).
    return tuple(
        with_loader_criteria(
            cls, getattr(cls, cls.__tenant_column__) == tenant_id, include_aliases=True
        )
        for cls in _isolated_classes()
    )


def _owner_id(obj: TenantIsolated) -> int | None:
    column = type(obj).__tenant_column__
    value = getattr(obj, column, None)
    if value is None and column == "tenant_id":
        tenant = getattr(obj, "tenant", None)
        value = getattr(tenant, "id", None)
    return value


@event.listens_for(Session, "before_flush")
def _stamp_and_check_tenant(session: Session, flush_context, instances) -> None:
    scope = _current_scope.get()
    for obj in session.new:
        if not isinstance(obj, TenantIsolated) or type(obj).__tenant_column__ != "tenant_id":
            continue
        owner = _owner_id(obj)
        if scope.is_tenant:
            if owner is None:
                obj.tenant_id = scope.tenant_id  # type: ignore[attr-defined]
            elif owner != scope.tenant_id:
                raise TenantScopeError(
                    f"new {type(obj).__name__} belongs to another tenant than the scope"
                )
        elif scope.is_all:
            if owner is None and isinstance(obj, TenantScoped):
                raise TenantScopeError(f"new {type(obj).__name__} has no tenant")
        else:
            raise TenantScopeError(f"new {type(obj).__name__} written with no tenant scope")
    for obj in list(session.dirty) + list(session.deleted):
        if not isinstance(obj, TenantIsolated):
            continue
        column = type(obj).__tenant_column__
        history = inspect(obj).attrs[column].history
        if column == "tenant_id" and history.deleted and history.deleted[0] is not None:
            raise TenantScopeError(f"the tenant of a {type(obj).__name__} cannot change")
        if scope.is_all:
            continue
        if not scope.is_tenant or _owner_id(obj) != scope.tenant_id:
            raise TenantScopeError(
                f"{type(obj).__name__} changed outside its tenant's scope"
            )


def _check_loaded_row(target: TenantIsolated, context) -> None:
    """Last guard: a row loaded by any path (raw SQL mapped to entities included)
    must belong to the tenant of a tenant scope."""
    scope = _current_scope.get()
    if scope.is_tenant and getattr(target, type(target).__tenant_column__) != scope.tenant_id:
        raise TenantScopeError(f"{type(target).__name__} of another tenant was loaded")


event.listen(TenantIsolated, "load", _check_loaded_row, propagate=True)
