"""Configuration: a class of defaults, overridden by ``BILLFOLD_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def normalise_database_url(url: str) -> str:
    """Use the psycopg 3 driver for PostgreSQL URLs given without a driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Config:
    APP_NAME = "Billfold"
    APP_ICON = ""
    SECRET_KEY = "billfold-development-secret"  # replaced by BILLFOLD_SECRET_KEY in production
    DATABASE_URL: str | None = None  # default: SQLite in the instance folder
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    # A read replica of the database for the report pages and API reads (portal/replica.py).
    DATABASE_REPLICA_URL: str | None = None
    REPLICA_READ_PATHS = ("/billing/costs/", "/billing/analytics/", "/platform/overview/",
                          "/api/v1/usage", "/api/v1/costs/", "/api/v1/platform/revenue")
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

    # Flask-AppBuilder
    FAB_SECURITY_MANAGER_CLASS = "permissions.security.BillfoldSecurityManager"
    AUTH_TYPE = 1  # AUTH_DB
    AUTH_ROLE_ADMIN = "Platform Admin"
    AUTH_ROLE_PUBLIC = "Public"
    AUTH_USER_REGISTRATION = False
    # Schema and roles are owned by migrations and `flask billfold sync-roles`,
    # never by application start-up (several workers would race to create them).
    FAB_CREATE_DB = False
    FAB_UPDATE_PERMS = False
    FAB_ADD_SECURITY_API = False
    FAB_API_SWAGGER_UI = False
    FAB_INDEX_VIEW = "portal.views.HomeView"
    FAB_BASE_TEMPLATE = "billfold/baselayout.html"  # page titles name the page
    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    AUTH_RATE_LIMITED = True
    AUTH_RATE_LIMIT = "10 per 20 second"
    AUTH_DB_LOGIN_ENABLED = True  # username and password sign-in (docs/sso.md)

    # Single sign-on over OpenID Connect (docs/sso.md); off while OIDC_ISSUER is unset
    OIDC_ISSUER: str | None = None  # discovery at <issuer>/.well-known/openid-configuration
    OIDC_CLIENT_ID: str | None = None
    OIDC_CLIENT_SECRET: str | None = None  # from BILLFOLD_OIDC_CLIENT_SECRET only
    OIDC_PROVIDER_NAME = "SSO"  # the button reads "Sign in with <name>"
    OIDC_SCOPES = "openid email profile"
    OIDC_ROLE_CLAIM = "groups"  # a claim listing the person's groups
    OIDC_ROLE_MAP: dict[str, str] | str | None = None  # JSON: group -> Billfold role
    OIDC_TENANT_CLAIM: str | None = None  # a claim holding the tenant's slug
    OIDC_TENANT_DOMAINS: dict[str, str] | str | None = None  # JSON: email domain -> slug
    OIDC_REDIRECT_URI: str | None = None  # default: <portal URL>/oauth-authorized/oidc
    OIDC_TIMEOUT_SECONDS = 10
    WTF_CSRF_ENABLED = True
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    # HTTPS = true (BILLFOLD_HTTPS) where browsers reach the portal over HTTPS, directly
    # or through a TLS proxy: the session and remember-me cookies are then Secure and
    # every response carries HSTS (portal/security_headers.py).
    HTTPS = False
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    BABEL_DEFAULT_LOCALE = "en"
    LANGUAGES = {"en": {"flag": "us", "name": "English"}}

    # Billfold
    INVITATION_TTL_HOURS = 72
    STRIPE_SECRET_KEY: str | None = None
    STRIPE_WEBHOOK_SECRET: str | None = None
    STRIPE_API_BASE: str | None = None  # a local stand-in of Stripe's API
    STRIPE_TIMEOUT_SECONDS = 20  # per attempt (the library retries twice more)
    API_RATE_LIMIT = "600 per minute"  # per API key
    API_INGEST_RATE_LIMIT = "6000 per minute"  # per API key, for usage ingestion
    API_MAX_BATCH_BYTES = 16 * 1024 * 1024
    RATELIMIT_HEADERS_ENABLED = True
    JOBS_EAGER = True  # run jobs in-process after the request that committed them
    CELERY_BROKER_URL: str | None = None  # e.g. redis://127.0.0.1:6379/1; none: in-process
    CELERY_RESULT_BACKEND: str | None = None  # default: the broker
    # A task taken by a worker that died unacknowledged goes back to the queue after
    # this many seconds: longer than the longest task, or it would run twice at once.
    CELERY_VISIBILITY_TIMEOUT = 3600
    MAIL_SERVER: str | None = None  # SMTP host; email is off until it is set
    MAIL_PORT = 25
    MAIL_USE_TLS = False
    MAIL_USE_SSL = False
    MAIL_USERNAME: str | None = None
    MAIL_PASSWORD: str | None = None
    MAIL_FROM = "Billfold <billing@localhost>"
    MAIL_TIMEOUT = 10  # seconds
    # Budget alerts and their notifications.
    PORTAL_URL = "http://127.0.0.1:5000"  # the portal's address, for links in messages
    SMS_GATEWAY_URL: str | None = None  # JSON POST {"to", "message", "reference"}
    SMS_GATEWAY_TOKEN: str | None = None  # sent as "Authorization: Bearer <token>"
    SMS_TIMEOUT = 10  # seconds
    NOTIFY_MAX_ATTEMPTS = 8  # then a delivery is marked failed (a person can retry it)
    NOTIFY_RETRY_BASE_SECONDS = 60  # doubled after each failed attempt
    NOTIFY_RETRY_MAX_SECONDS = 3600
    NOTIFY_CLAIM_TIMEOUT_SECONDS = 600  # a send claimed longer ago is taken over
    DEFAULT_CURRENCY = "USD"
    DEFAULT_TIMEZONE = "UTC"

    # Production runtime and observability (portal/observability.py, portal/prod.py).
    # gunicorn.conf.py reads the web tier's BILLFOLD_WEB_* variables itself.
    PRODUCTION = False  # `make run-prod` sets it; `billfold doctor` is then strict
    LOG_FORMAT = "text"  # or "json": one JSON object per line (the default of run-prod)
    LOG_LEVEL = "INFO"
    METRICS_TOKEN: str | None = None  # /metrics also answers "Authorization: Bearer <it>"
    METRICS_ALLOW_LOCAL = True  # /metrics answers direct requests from 127.0.0.1 / ::1
    WORKER_METRICS_BIND: str | None = None  # host:port where a Celery worker serves metrics
    PROXY_COUNT = 0  # proxies in front that set X-Forwarded-For/-Proto/-Host (ProxyFix)


def load_config(app, config: dict | None) -> None:
    """Apply defaults, then ``BILLFOLD_*`` variables, then an explicit mapping (tests)."""
    app.config.from_object(Config)
    app.config.from_prefixed_env(prefix="BILLFOLD")
    if config:
        app.config.update(config)
    https = str(app.config.get("HTTPS")).lower() in ("1", "true", "yes", "on")
    app.config["HTTPS"] = https or app.config.get("PREFERRED_URL_SCHEME") == "https"
    if app.config["HTTPS"]:
        app.config["SESSION_COOKIE_SECURE"] = True
        app.config["REMEMBER_COOKIE_SECURE"] = True
    url = app.config.get("DATABASE_URL") or os.environ.get("BILLFOLD_DATABASE_URL")
    if not url:
        url = "sqlite:///" + str(Path(app.instance_path) / "billfold.db")
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(str(url))
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # SQLite serialises writers; a busy timeout lets concurrent writers wait
        # instead of failing with "database is locked".
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": 30}}
