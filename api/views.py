"""The API pages: keys (create, show the secret once, revoke) with curl examples
built from the tenant's own data, and the interactive API reference."""

from __future__ import annotations

import datetime as dt

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access
from flask_wtf import FlaskForm
from wtforms import DateField, SelectMultipleField, StringField, widgets
from wtforms.validators import DataRequired, Length, Optional

from api import keys
from api.models import PLATFORM_SCOPES, TENANT_SCOPES, ApiKey
from invoices import invoicing
from permissions.matrix import RESOURCE_API_DOCS, RESOURCE_API_KEYS
from plans.periods import period_containing, today_in
from portal.audit import Actor
from portal.errors import ValidationFailed, attach_errors

SCOPE_HELP = {"usage:write": "send usage events", "usage:read": "read usage and its cost",
              "billing:read": "read costs, transactions and invoices",
              "platform:read": "read revenue and all tenants (platform keys only)"}


class KeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)],
                       description="What uses the key, e.g. metering-service")
    scopes = SelectMultipleField("Scopes", option_widget=widgets.CheckboxInput(),
                                 widget=widgets.ListWidget(prefix_label=False))
    expires_on = DateField("Expires on", validators=[Optional()],
                           description="Optional; the key stops working at the start of "
                                       "this day (UTC)")


def _examples(tenant, base: str) -> list[tuple[str, str]]:
    """curl commands that work as shown with the tenant's own data."""
    if tenant is None:
        return [("Revenue by month",
                 f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
                 f'"{base}/api/v1/platform/revenue?granularity=month"'),
                ("Tenants with balance and month-to-date spend",
                 f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
                 f'"{base}/api/v1/platform/tenants?limit=100"')]
    today = today_in(tenant.timezone)
    period = period_containing(today)
    invoices, _ = invoicing.list_invoices(tenant, limit=1)
    stamp = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    examples = [
        ("Send usage (all or nothing; an id is sent once)",
         f'curl -s -X POST -H "Authorization: Bearer $BILLFOLD_KEY" '
         f'-H "Content-Type: application/json" "{base}/api/v1/usage/events" '
         f'-d \'{{"events": [{{"id": "req-{today:%Y%m%d}-0001", "metric": "llm_tokens", '
         f'"quantity": "1250", "timestamp": "{stamp}", "user": "alice"}}]}}\''),
        (f"Usage against the plan, period {period.label}",
         f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
         f'"{base}/api/v1/usage/summary?period={period.label}"'),
        ("Daily usage and cost per metric, this month",
         f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
         f'"{base}/api/v1/usage?from={period.start}&to={today}&granularity=day"'),
        ("Cost breakdown by service and user",
         f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
         f'"{base}/api/v1/costs/breakdown?period={period.label}"'),
        ("The last 200 transactions as CSV, with jq",
         f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" '
         f'"{base}/api/v1/transactions?limit=200" | jq -r \'.data[] | '
         f'[.created_at, .type, .amount, .balance_after, .description] | @csv\''),
    ]
    if invoices:
        examples.append((f"Invoice {invoices[0].number} as PDF",
                         f'curl -s -H "Authorization: Bearer $BILLFOLD_KEY" -o '
                         f'{invoices[0].number}.pdf '
                         f'"{base}/api/v1/invoices/{invoices[0].number}/pdf"'))
    return examples


class ApiKeysView(BaseView):
    """A Tenant Admin's keys for the tenant; a Platform Admin's platform keys."""

    route_base = "/account/api-keys"
    default_view = "index"
    class_permission_name = RESOURCE_API_KEYS
    method_permission_name = {"index": "read", "create": "write", "revoke": "write"}
    object_model = ApiKey

    def _tenant(self):
        return g.user.tenant if g.user.tenant_id is not None else None

    def _form(self, formdata=None):
        form = KeyForm(formdata=formdata)
        scopes = PLATFORM_SCOPES if self._tenant() is None else TENANT_SCOPES
        form.scopes.choices = [(s, f"{s} — {SCOPE_HELP[s]}") for s in scopes]
        if formdata is None:
            form.scopes.data = ["platform:read"] if self._tenant() is None else [
                "usage:write", "usage:read", "billing:read"]
        return form

    def _render(self, form=None, secret=None, created=None, status=200):
        tenant = self._tenant()
        response = self.render_template(
            "api/keys.html", tenant=tenant, keys=keys.list_keys(tenant),
            form=form or self._form(), secret=secret, created=created,
            examples=_examples(tenant, request.host_url.rstrip("/")),
            now=dt.datetime.now(dt.UTC))
        response = self.appbuilder.app.make_response((response, status))
        response.headers["Cache-Control"] = "no-store"  # a secret may be on the page
        return response

    @expose("/")
    @has_access
    def index(self):
        return self._render()

    @expose("/create", methods=["POST"])
    @has_access
    def create(self):
        form = self._form(request.form)
        if form.validate():
            expires = None
            if form.expires_on.data:
                expires = dt.datetime.combine(form.expires_on.data, dt.time(), dt.UTC)
            try:
                key, secret = keys.create_key(Actor.for_user(g.user), self._tenant(),
                                              form.name.data, form.scopes.data or [],
                                              expires_at=expires)
            except ValidationFailed as exc:
                attach_errors(form, exc, {"expires_at": "expires_on"})
            else:
                return self._render(secret=secret, created=key)
        return self._render(form=form, status=400)

    @expose("/<pk>/revoke", methods=["POST"])
    @has_access
    def revoke(self, pk):
        key = keys.revoke_key(Actor.for_user(g.user), self._tenant(), int(pk))
        flash(f"Key {key.name} ({key.prefix}…) is revoked: its next request is refused.",
              "success")
        return redirect(url_for("ApiKeysView.index"))


class ApiDocsView(BaseView):
    """The OpenAPI document in Swagger UI, served from the project (works offline)."""

    route_base = "/api-docs"
    default_view = "index"
    class_permission_name = RESOURCE_API_DOCS
    method_permission_name = {"index": "read"}

    @expose("/")
    @has_access
    def index(self):
        return self.render_template("api/swagger.html",
                                    spec_url=url_for("api_v1.openapi"))
