"""Tenant isolation: the ORM layer, and every route of the app tried with another
tenant's ids. The route list comes from ``app.url_map``, so a new view is covered
without editing this file."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, text, update

from portal.audit import AuditEvent
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import (
    TenantIsolated,
    TenantScopeError,
    no_scope,
    tenant_scope,
    unscoped,
)
from tests.conftest import page_text

# URL arguments that do not name a stored object.
NON_OBJECT_ARGS = {"filename", "locale", "token", "name", "path", "provider"}
API_PREFIX = "api_v1."
B_MARKERS = ("Bravo GmbH", "bravo-admin", "bravo-billing", "billing@bravo.example")


def _views_by_endpoint_prefix(app):
    return {type(v).__name__: v for v in app.appbuilder.baseviews}


def _owner_filter(model, tenant_id):
    return getattr(model, model.__tenant_column__) == tenant_id


def object_rules(app):
    """Rules that take an object id, with the view's model."""
    views = _views_by_endpoint_prefix(app)
    found = []
    for rule in app.url_map.iter_rules():
        args = set(rule.arguments)
        object_args = args - NON_OBJECT_ARGS
        if not object_args or rule.endpoint.startswith(API_PREFIX):
            continue  # API routes are probed with API keys below
        view = views.get(rule.endpoint.split(".")[0])
        key = getattr(view, "object_key", "id")
        expected = {"pk"} if key == "id" else {key}
        assert object_args == expected, f"{rule.rule}: teach the probe to fill {object_args}"
        method = rule.endpoint.split(".", 1)[-1]
        model = (getattr(view, "object_models", {}).get(method)
                 or getattr(getattr(view, "datamodel", None), "obj", None)
                 or getattr(view, "object_model", None))
        found.append((rule, view, model))
    return found


def _fill(rule, view, pk):
    key = getattr(view, "object_key", "id")
    url = rule.rule.replace("<pk>" if key == "id" else f"<{key}>", str(pk))
    if "<string:name>" in url:
        action = next(iter(view.actions), "none") if view.actions else "none"
        url = url.replace("<string:name>", action)
    return re.sub(r"<[^>]+>", "x", url)


def _ids_of(app, model, tenant_id, key="id"):
    with app.app_context(), unscoped():
        return db.session.scalars(
            select(getattr(model, key)).where(_owner_filter(model, tenant_id))
            .order_by(model.id)
        ).all()


@pytest.fixture
def every_kind(app, world):
    """Rows of the kinds the world lacks, for both tenants: an invoice and a credit
    purchase each."""
    import datetime as dt

    from api import keys
    from invoices import invoicing
    from invoices.models import CreditPurchase
    from plans import alerts
    from plans.metering import ingest_events
    from plans.periods import period_containing
    from portal import jobs
    from portal.audit import Actor

    with app.app_context(), unscoped():
        for key in ("a", "b"):
            tenant = db.session.get(Tenant, world.ids[key])
            db.session.add(CreditPurchase(tenant_id=tenant.id, kind="purchase",
                                          status="succeeded", amount_minor=5_000,
                                          currency=tenant.currency, stripe_ref=f"cs_{key}"))
            db.session.commit()
            invoicing.close_period(tenant, period_containing(dt.date.today()).previous())
            keys.create_key(Actor.system("probe"), tenant, f"{key} key", "usage:read")
            # An alert with its deliveries and in-app notices.
            alerts.create_rule(Actor.system("probe"), tenant, {
                "name": f"{key} queries", "kind": "metric", "metric": "sql_queries",
                "threshold": "1", "channels": ["email", "in_app"]})
            ingest_events(tenant, [{"id": f"q-{key}", "metric": "sql_queries", "quantity": 5,
                                    "timestamp": dt.datetime.now(dt.UTC).isoformat()}])
            jobs.drain()
    return world


@pytest.mark.parametrize("who", ["alpha-admin", "alpha-billing"])
def test_every_object_route_answers_404_for_another_tenants_ids(app, every_kind, login, who):
    world = every_kind
    user = login(who)
    attempts = leaks = 0
    failures = []
    for rule, view, model in object_rules(app):
        if model is None or not issubclass(model, TenantIsolated):
            continue
        key = getattr(view, "object_key", "id")
        theirs = _ids_of(app, model, world.ids["b"], key)
        ours = _ids_of(app, model, world.ids["a"], key)
        assert theirs and ours, f"no {model.__name__} rows to probe {rule.rule}"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            own = getattr(user.client, method.lower())(_fill(rule, view, ours[0]))
            for pk in theirs:
                attempts += 1
                response = getattr(user.client, method.lower())(_fill(rule, view, pk))
                body = page_text(response)
                refused = response.status_code == 404 or (
                    response.status_code == 403 and own.status_code == 403
                )
                if not refused or any(m in body for m in B_MARKERS):
                    leaks += 1
                    failures.append(f"{method} {rule.rule} pk={pk} -> {response.status_code}")
    kinds = {model.__name__ for _, _, model in object_rules(app) if model is not None}
    print(f"\nisolation probe ({who}): {len(object_rules(app))} object routes, "
          f"{len(kinds)} object kinds, {attempts} attempts, {leaks} leaks")
    assert attempts > 0
    assert leaks == 0, failures


def test_another_tenants_rows_are_unchanged_after_the_probe(app, world, login):
    user = login("alpha-admin")
    b_user = world.ids["b_billing"]
    user.post(f"/team/edit/{b_user}", data={"first_name": "Hacked", "last_name": "X",
                                            "role": "Tenant Admin", "active": "n"})
    user.post("/team/action_post", data={"action": "none", "rowid": [b_user]})
    with app.app_context(), unscoped():
        row = db.session.get(BillfoldUser, b_user)
        assert row.first_name == "Test" and row.active


def test_list_views_and_filters_never_show_another_tenant(world, login):
    admin = login("alpha-admin")
    team = page_text(admin.get("/team/list/"))
    assert "alpha-billing@example.com" in team
    assert not any(m in team for m in B_MARKERS)
    by_param = page_text(admin.get(f"/team/list/?_flt_0_tenant={world.ids['b']}"))
    assert not any(m in by_param for m in B_MARKERS)
    audit = page_text(admin.get("/audit/list/"))
    assert "Alpha Ltd" in audit
    assert not any(m in audit for m in B_MARKERS)


def test_related_field_dropdown_lists_only_own_tenant(world, login):
    """The audit log's search form offers a Tenant dropdown built by FAB from the
    relationship; the ORM scope must narrow it."""
    html = login("alpha-admin").get("/audit/list/").get_data(as_text=True)
    # FAB embeds the filter widgets in a JSON blob with escaped angle brackets.
    html = html.replace("\\u003c", "<").replace("\\u003e", ">").replace('\\"', '"')
    options = re.findall(r"<option[^>]*>([^<]*)</option>", html)
    assert "Alpha Ltd" in options
    assert "Bravo GmbH" not in options


def test_invite_form_cannot_place_a_user_in_another_tenant(app, world, login):
    admin = login("alpha-admin")
    admin.post("/team/add", data={"email": "new@alpha.example", "first_name": "New",
                                  "last_name": "Person", "role": "Billing Contact",
                                  "tenant": world.ids["b"], "tenant_id": world.ids["b"]})
    with app.app_context(), unscoped():
        user = db.session.scalar(select(BillfoldUser).where(
            BillfoldUser.email == "new@alpha.example"))
        assert user.tenant_id == world.ids["a"]


# -- the ORM layer ---------------------------------------------------------------

def test_query_with_no_scope_raises(app, world):
    with app.app_context(), no_scope():
        with pytest.raises(TenantScopeError):
            db.session.scalars(select(Tenant)).all()
        with pytest.raises(TenantScopeError):
            db.session.scalars(select(AuditEvent)).all()
        with pytest.raises(TenantScopeError):
            db.session.execute(update(AuditEvent).values(action="x"))


def test_tenant_scope_filters_select_update_and_delete(app, world):
    with app.app_context():
        with tenant_scope(world.ids["a"]):
            tenants = db.session.scalars(select(Tenant)).all()
            assert [t.slug for t in tenants] == ["alpha"]
            users = db.session.scalars(select(BillfoldUser)).all()
            assert {u.tenant_id for u in users} == {world.ids["a"]}
            assert db.session.get(BillfoldUser, world.ids["b_admin"]) is None
            result = db.session.execute(update(AuditEvent).values(request_id="scoped"))
            db.session.commit()
        with unscoped():
            touched = db.session.scalars(
                select(AuditEvent.tenant_id).where(AuditEvent.request_id == "scoped")
            ).all()
        assert result.rowcount == len(touched) > 0
        assert set(touched) == {world.ids["a"]}


def test_unscoped_sees_every_tenant(app, world):
    with app.app_context(), unscoped():
        assert {t.slug for t in db.session.scalars(select(Tenant))} == {"alpha", "bravo"}


def test_before_flush_stamps_new_rows_with_the_scope_tenant(app, world):
    with app.app_context(), tenant_scope(world.ids["a"]):
        event = AuditEvent(actor_kind="system", actor_label="t", action="probe",
                           object_type="-")
        db.session.add(event)
        db.session.commit()
        assert event.tenant_id == world.ids["a"]


def test_before_flush_refuses_a_row_of_another_tenant(app, world):
    with app.app_context(), tenant_scope(world.ids["a"]):
        db.session.add(AuditEvent(tenant_id=world.ids["b"], actor_kind="system",
                                  actor_label="t", action="probe", object_type="-"))
        with pytest.raises(TenantScopeError):
            db.session.flush()
        db.session.rollback()


def test_tenant_of_a_row_cannot_change(app, world):
    with app.app_context(), unscoped():
        user = db.session.get(BillfoldUser, world.ids["a_billing"])
        user.tenant_id = world.ids["b"]
        with pytest.raises(TenantScopeError):
            db.session.flush()
        db.session.rollback()


def test_raw_sql_mapped_to_entities_is_still_checked(app, world):
    with app.app_context(), tenant_scope(world.ids["a"]):
        stmt = select(Tenant).from_statement(text("SELECT * FROM tenant ORDER BY id"))
        with pytest.raises(TenantScopeError):
            db.session.scalars(stmt).all()
        db.session.rollback()


def test_writes_with_no_scope_are_refused(app, world):
    with app.app_context(), no_scope():
        db.session.add(AuditEvent(tenant_id=world.ids["a"], actor_kind="system",
                                  actor_label="t", action="probe", object_type="-"))
        with pytest.raises(TenantScopeError):
            db.session.flush()
        db.session.rollback()


def test_subqueries_and_ctes_are_scoped_too(app, world):
    """A statement selecting from a subquery has no top-level entity; the scope must
    still reach the isolated table inside it."""
    from sqlalchemy import func

    with app.app_context(), tenant_scope(world.ids["a"]):
        sub = select(BillfoldUser.id, BillfoldUser.tenant_id).subquery()
        assert set(db.session.scalars(select(sub.c.tenant_id))) == {world.ids["a"]}
        cte = select(AuditEvent.tenant_id).cte()
        assert set(db.session.scalars(select(cte.c.tenant_id))) == {world.ids["a"]}
        assert db.session.scalar(select(func.count()).select_from(sub)) == 2
    with app.app_context(), no_scope():
        with pytest.raises(TenantScopeError):
            db.session.scalars(select(select(AuditEvent.id).subquery().c.id)).all()


def test_core_tables_of_isolated_models_are_refused_in_a_tenant_scope(app, world):
    """with_loader_criteria cannot see a plain Table: such a query must not run."""
    from sqlalchemy import func

    table = AuditEvent.__table__
    with app.app_context(), tenant_scope(world.ids["a"]):
        with pytest.raises(TenantScopeError):
            db.session.execute(select(func.count()).select_from(table))
        with pytest.raises(TenantScopeError):
            db.session.execute(select(table.c.id))
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count()).select_from(table)) > 0


API_OBJECT_KINDS = {"number": ("invoices.models", "Invoice", "number")}


def test_every_api_route_refuses_another_tenants_objects(app, every_kind, client):
    """A key of tenant A asks for B's objects by URL and by query parameter: every
    answer is 404 (or an empty page) and never carries B's data."""
    import importlib

    from api import keys
    from portal.audit import Actor

    world = every_kind
    with app.app_context(), unscoped():
        alpha = db.session.get(Tenant, world.ids["a"])
        _, secret = keys.create_key(Actor.system("probe"), alpha, "probe",
                                    "usage:write,usage:read,billing:read")
    headers = {"Authorization": f"Bearer {secret}"}
    attempts = leaks = 0
    failures = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(API_PREFIX):
            continue
        args = set(rule.arguments)
        if not args:
            continue
        (arg,) = args
        module, name, column = API_OBJECT_KINDS[arg]
        model = getattr(importlib.import_module(module), name)
        for value in _ids_of(app, model, world.ids["b"], column):
            attempts += 1
            response = client.get(rule.rule.replace(f"<{arg}>", str(value)), headers=headers)
            body = response.get_data(as_text=True)
            if response.status_code != 404 or any(m in body for m in B_MARKERS):
                leaks += 1
                failures.append(f"{rule.rule} {arg}={value} -> {response.status_code}")
    # Cursors and filters cannot reach B's rows either.
    from invoices.models import Invoice, LedgerEntry

    for url, model in (("/api/v1/transactions?before={}", LedgerEntry),
                       ("/api/v1/invoices?before={}", Invoice)):
        for value in _ids_of(app, model, world.ids["b"]):
            attempts += 1
            body = client.get(url.format(value + 1), headers=headers).get_json()
            if any(row.get("number") in _ids_of(app, Invoice, world.ids["b"], "number")
                   for row in body["data"]) or any(m in str(body) for m in B_MARKERS):
                leaks += 1
                failures.append(url.format(value + 1))
    print(f"\nAPI isolation probe: {attempts} attempts, {leaks} leaks")
    assert attempts > 0
    assert leaks == 0, failures
