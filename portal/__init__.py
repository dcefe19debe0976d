"""Billfold's application factory."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask, g, request
from flask_appbuilder import AppBuilder
from flask_wtf.csrf import CSRFProtect

from portal.config import PROJECT_ROOT, load_config
from portal.extensions import db, migrate

csrf = CSRFProtect()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the portal. ``config`` overrides the defaults and ``BILLFOLD_*`` variables."""
    app = Flask(
        __name__,
        instance_path=str(PROJECT_ROOT / "instance"),
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    load_config(app, config)
    from portal.jsonio import DecimalJSONProvider

    app.json = DecimalJSONProvider(app)
    init_instance_folder(app)
    init_observability(app)
    init_database(app)
    init_appbuilder(app)
    init_request_scope(app)
    init_blueprints(app)
    init_errors(app)
    init_security_headers(app)
    init_jobs(app)
    init_template_filters(app)
    init_cli(app)
    return app


def init_instance_folder(app: Flask) -> None:
    import os

    os.makedirs(app.instance_path, exist_ok=True)


def init_observability(app: Flask) -> None:
    from portal.observability import init_observability as init

    init(app)


def init_database(app: Flask) -> None:
    import api.models  # noqa: F401 - register every model on the metadata
    import invoices.models  # noqa: F401
    import plans.models  # noqa: F401
    import portal.audit  # noqa: F401
    import portal.notifications  # noqa: F401
    import tenants.models  # noqa: F401
    from portal.replica import init_replica

    init_replica(app)  # before the engines are made
    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)


def init_appbuilder(app: Flask) -> None:
    from api.views import ApiDocsView, ApiKeysView
    from invoices.analytics_views import (
        CostBreakdownView,
        PlatformOverviewView,
        UsageAnalyticsView,
    )
    from invoices.invoice_views import InvoicesView
    from invoices.views import LedgerAdminView, PaymentsView, TransactionsView
    from permissions.matrix import (
        MENU_ACCOUNT,
        MENU_ALERT_HISTORY,
        MENU_ALERTS,
        MENU_ALL_USERS,
        MENU_ANALYTICS,
        MENU_API_DOCS,
        MENU_API_KEYS,
        MENU_AUDIT_LOG,
        MENU_BILLING,
        MENU_COSTS,
        MENU_INVOICES,
        MENU_LEDGER_ADMIN,
        MENU_NOTIFICATIONS,
        MENU_PAYMENTS,
        MENU_PLAN,
        MENU_PLAN_CATALOG,
        MENU_PLAN_REQUESTS,
        MENU_PLATFORM,
        MENU_PLATFORM_OVERVIEW,
        MENU_TEAM,
        MENU_TENANTS,
        MENU_TRANSACTIONS,
        MENU_USAGE,
    )
    from plans.alert_views import AlertsView
    from plans.views import PlanCatalogView, PlanRequestQueueView, PlanView, UsageView
    from portal.notification_views import NotificationsView
    from portal.views import AuditLogView
    from tenants.views import InvitationView, PlatformUsersView, TeamView, TenantView

    appbuilder = AppBuilder()
    with app.app_context():
        appbuilder.init_app(app, db.session)
        appbuilder.add_view(UsageView, MENU_USAGE, icon="fa-tachometer",
                            category=MENU_BILLING, category_icon="fa-credit-card")
        appbuilder.add_view(PlanView, MENU_PLAN, icon="fa-cubes", category=MENU_BILLING)
        appbuilder.add_view(InvoicesView, MENU_INVOICES, icon="fa-file-text-o",
                            category=MENU_BILLING)
        appbuilder.add_view(TransactionsView, MENU_TRANSACTIONS, icon="fa-exchange",
                            category=MENU_BILLING)
        appbuilder.add_view(PaymentsView, MENU_PAYMENTS, icon="fa-credit-card",
                            category=MENU_BILLING)
        appbuilder.add_view(CostBreakdownView, MENU_COSTS, icon="fa-pie-chart",
                            category=MENU_BILLING)
        appbuilder.add_view(UsageAnalyticsView, MENU_ANALYTICS, icon="fa-line-chart",
                            category=MENU_BILLING)
        appbuilder.add_view(AlertsView, MENU_ALERTS, icon="fa-bell", category=MENU_BILLING)
        appbuilder.add_link(MENU_ALERT_HISTORY, href="/billing/alerts/history",
                            icon="fa-bell-o", category=MENU_BILLING)
        appbuilder.add_view(TenantView, MENU_TENANTS, icon="fa-building",
                            category=MENU_PLATFORM, category_icon="fa-server")
        appbuilder.add_view(PlatformOverviewView, MENU_PLATFORM_OVERVIEW, icon="fa-bar-chart",
                            category=MENU_PLATFORM)
        appbuilder.add_view(PlanCatalogView, MENU_PLAN_CATALOG, icon="fa-list",
                            category=MENU_PLATFORM)
        appbuilder.add_view(PlanRequestQueueView, MENU_PLAN_REQUESTS, icon="fa-inbox",
                            category=MENU_PLATFORM)
        appbuilder.add_view(LedgerAdminView, MENU_LEDGER_ADMIN, icon="fa-balance-scale",
                            category=MENU_PLATFORM)
        appbuilder.add_view(PlatformUsersView, MENU_ALL_USERS, icon="fa-users",
                            category=MENU_PLATFORM)
        appbuilder.add_view(TeamView, MENU_TEAM, icon="fa-users", category=MENU_ACCOUNT,
                            category_icon="fa-id-card",
                            menu_cond=lambda: g.user.tenant_id is not None)
        appbuilder.add_view(AuditLogView, MENU_AUDIT_LOG, icon="fa-history",
                            category=MENU_ACCOUNT)
        appbuilder.add_view(NotificationsView, MENU_NOTIFICATIONS, icon="fa-bell",
                            category=MENU_ACCOUNT)
        appbuilder.add_view(ApiKeysView, MENU_API_KEYS, icon="fa-key", category=MENU_ACCOUNT)
        appbuilder.add_view(ApiDocsView, MENU_API_DOCS, icon="fa-book", category=MENU_ACCOUNT)
        appbuilder.add_view_no_menu(InvitationView)


def init_request_scope(app: Flask) -> None:
    """Choose each request's tenant scope from the logged-in user, after FAB has
    loaded it: a tenant user is confined to their tenant, a Platform Admin sees all,
    anyone else gets no scope (any tenant query then raises and answers 404)."""
    from portal.audit import current_request_id
    from tenants.scoping import ALL_TENANTS, NO_SCOPE, Scope, reset_scope, set_scope

    @app.before_request
    def _enter_scope():
        g._request_id_token = current_request_id.set(
            request.headers.get("X-Request-Id") or uuid.uuid4().hex
        )
        user = getattr(g, "user", None)
        scope = NO_SCOPE
        if user is not None and user.is_authenticated:
            if user.tenant_id is not None:
                scope = Scope("tenant", user.tenant_id)
            elif any(r.name == app.config["AUTH_ROLE_ADMIN"] for r in user.roles):
                scope = ALL_TENANTS
        g._scope_token = set_scope(scope)

    @app.teardown_request
    def _leave_scope(exc):
        token = g.pop("_scope_token", None)
        if token is not None:
            reset_scope(token)
        rid = g.pop("_request_id_token", None)
        if rid is not None:
            current_request_id.reset(rid)


def init_blueprints(app: Flask) -> None:
    from api.v1 import bp as api_bp
    from api.v1 import init_api
    from invoices.webhooks import bp as webhooks_bp
    from portal.public import bp as public_bp

    init_api(app)
    csrf.exempt(api_bp)  # bearer keys, not cookies, authenticate the API
    app.register_blueprint(public_bp)
    app.register_blueprint(webhooks_bp)
    csrf.exempt(webhooks_bp)  # Stripe signs its payloads instead


def init_security_headers(app: Flask) -> None:
    from portal.security_headers import init_security_headers as init

    init(app)


def init_errors(app: Flask) -> None:
    from portal.errors import init_error_handlers

    init_error_handlers(app)


def init_jobs(app: Flask) -> None:
    import invoices.auto_recharge  # noqa: F401 - registers its jobs
    import invoices.invoicing  # noqa: F401
    import plans.alerts  # noqa: F401
    import portal.notifications  # noqa: F401
    from portal.jobs import init_jobs as init
    from portal.tasks import init_celery

    init(app)
    init_celery(app)


def init_template_filters(app: Flask) -> None:
    from portal.formatting import init_filters
    from portal.notifications import init_notifications

    init_filters(app)
    init_notifications(app)


def init_cli(app: Flask) -> None:
    from portal.cli import billfold

    app.cli.add_command(billfold)
