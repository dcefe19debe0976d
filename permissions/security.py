"""Billfold's Flask-AppBuilder security manager."""

from __future__ import annotations

from flask import abort, current_app, g, redirect, request, session, url_for
from flask_appbuilder import expose
from flask_appbuilder.security.decorators import no_cache
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_appbuilder.security.views import AuthDBView, RoleModelView, UserDBModelView
from flask_appbuilder.utils.base import get_safe_redirect
from flask_login import login_user

from permissions.matrix import RESOURCE_FAB_ROLES, RESOURCE_FAB_USERS
from portal import sso
from portal.extensions import db
from portal.modelviews import SafeActionsMixin
from tenants.models import BillfoldUser
from tenants.scoping import tenant_scope, unscoped


def own_scope(user):
    """The scope a user's own row is written in."""
    return tenant_scope(user.tenant_id) if user.tenant_id is not None else unscoped()


class BillfoldUserDBModelView(SafeActionsMixin, UserDBModelView):
    """FAB's user administration with the tenant shown; Platform Admin only."""

    class_permission_name = RESOURCE_FAB_USERS

    list_columns = ["first_name", "last_name", "username", "email", "tenant", "active", "roles"]
    show_fieldsets = [
        ("User", {"fields": ["username", "first_name", "last_name", "email", "tenant"]}),
        ("Security", {"fields": ["roles", "active", "last_login", "login_count"]}),
    ]
    user_show_fieldsets = [
        ("User", {"fields": ["username", "first_name", "last_name", "email", "tenant"]}),
        ("Security", {"fields": ["roles", "last_login"]}),
    ]
    search_columns = ["username", "email", "first_name", "last_name", "tenant", "active"]


class ReadOnlyRoleModelView(SafeActionsMixin, RoleModelView):
    """Roles are data synced by ``flask billfold sync-roles``; edits here would be lost."""

    class_permission_name = RESOURCE_FAB_ROLES

    base_permissions = ["can_list", "can_show"]


class BillfoldAuthView(AuthDBView):
    """The sign-in page: username and password (unless turned off) and, when an
    OpenID Connect provider is configured, single sign-on through it."""

    class_permission_name = "AuthDBView"  # the public resource of permissions.matrix
    login_template = "billfold/login.html"
    refused_template = "billfold/sso_refused.html"
    db_login_off_message = "Password sign-in is turned off here; use single sign-on."

    @expose("/login/", methods=["GET", "POST"])
    @no_cache
    def login(self):
        if request.method == "POST" and not self.appbuilder.sm.db_login_enabled:
            html = self.render_template(self.login_template, title=self.title, form=None,
                                        appbuilder=self.appbuilder,
                                        error=self.db_login_off_message)
            return html, 403
        return super().login()

    @expose("/login/<provider>")
    @no_cache
    def sso_login(self, provider: str):
        """Send the browser to the provider, remembering where to go afterwards."""
        client, settings = self._provider(provider)
        if g.user is not None and g.user.is_authenticated:
            return redirect(self._get_safe_next_url())
        next_url = request.args.get("next")
        session["sso_next"] = get_safe_redirect(next_url) if next_url else None
        redirect_uri = settings.redirect_uri or url_for(
            ".sso_authorized", provider=provider, _external=True
        )
        try:
            sso.provider_metadata(client, settings)
            return client.authorize_redirect(redirect_uri)
        except sso.SsoRefused as exc:
            return self._refused(exc, settings)

    @expose("/oauth-authorized/<provider>")
    @no_cache
    def sso_authorized(self, provider: str):
        """The provider's callback: verify the ID token, find or create the user, sign in."""
        client, settings = self._provider(provider)
        sm = self.appbuilder.sm
        next_url = session.pop("sso_next", None)
        try:
            token = sso.verified_token(client, settings)
            userinfo = sm.oauth_user_info(provider, token)
            user = sm.auth_user_oauth(userinfo)
        except sso.SsoRefused as exc:
            db.session.rollback()
            return self._refused(exc, settings)
        login_user(user, remember=False)
        return redirect(next_url or self.appbuilder.get_url_for_index)

    def _provider(self, provider: str):
        sm = self.appbuilder.sm
        settings = sm.sso_settings
        client = (sm.oauth_remotes or {}).get(provider)
        if settings is None or client is None:
            abort(404)
        return client, settings

    def _refused(self, exc: sso.SsoRefused, settings: sso.SsoSettings):
        current_app.logger.warning("single sign-on refused: %s", exc.message)
        html = self.render_template(self.refused_template, title="Sign-in refused",
                                    message=exc.message, provider_name=settings.provider_name,
                                    appbuilder=self.appbuilder)
        return html, exc.status


class BillfoldSecurityManager(SecurityManager):
    user_model = BillfoldUser
    userdbmodelview = BillfoldUserDBModelView
    rolemodelview = ReadOnlyRoleModelView
    authdbview = BillfoldAuthView
    userstatschartview = None  # FAB's chart loads Google Charts from the internet

    def __init__(self, appbuilder):
        super().__init__(appbuilder)
        # Database sign-in stays FAB's AUTH_DB; an OpenID Connect provider is added
        # beside it through FAB's OAuth attributes (``oauth``, ``oauth_remotes``,
        # ``oauth_user_info``), so both can be offered on one sign-in page.
        config = current_app.config
        settings = sso.load_settings(config)
        if not sso.db_login_enabled(config) and settings is None:
            raise sso.SsoConfigError(
                "BILLFOLD_AUTH_DB_LOGIN_ENABLED is off and no OpenID Connect provider is "
                "configured (BILLFOLD_OIDC_ISSUER): nobody could sign in"
            )
        self.sso_settings: sso.SsoSettings | None = settings
        if settings is not None:
            from authlib.integrations.flask_client import OAuth

            self.oauth = OAuth(current_app)
            self.oauth_remotes = {sso.PROVIDER: sso.register_client(self.oauth, settings)}
            self.oauth_user_info = self.get_oauth_user_info

    @property
    def sso_provider(self) -> str | None:
        """The provider's name in the sign-in URL, when single sign-on is on."""
        return sso.PROVIDER if self.oauth_remotes and self.sso_settings else None

    @property
    def sso_provider_name(self) -> str | None:
        settings = self.sso_settings
        return settings.provider_name if settings is not None else None

    @property
    def db_login_enabled(self) -> bool:
        return sso.db_login_enabled(current_app.config)

    def auth_user_db(self, username, password):
        if not self.db_login_enabled:
            return None
        return super().auth_user_db(username, password)

    def get_oauth_user_info(self, provider, resp):
        """The claims of the verified ID token (``resp`` from ``sso.verified_token``),
        completed from the provider's userinfo endpoint where needed."""
        return sso.claims_of(self.oauth_remotes[provider], self.sso_settings, resp)

    def auth_user_oauth(self, userinfo):
        """The user the claims identify, found by verified email or created in the
        tenant they name; raises ``sso.SsoRefused`` with the reason otherwise."""
        identity = sso.identity_from_claims(userinfo, self.sso_settings)
        user = sso.sign_in(identity)
        self.update_user_auth_stat(user)
        return user

    def register_views(self) -> None:
        """Register login, one's own account pages, and user/role lists for the
        Platform Admin; FAB's permission editors and JWT security API are left out
        because roles are data (``permissions.matrix``)."""
        appbuilder = self.appbuilder
        appbuilder.add_view_no_menu(self.userinfoeditview())
        self.user_view = self.userdbmodelview
        self.auth_view = self.authdbview()
        appbuilder.add_view_no_menu(self.resetpasswordview())
        appbuilder.add_view_no_menu(self.resetmypasswordview())
        appbuilder.add_view_no_menu(self.auth_view)
        if self.is_auth_limited:
            self.limiter.limit(
                current_app.config["AUTH_RATE_LIMIT"], methods=["POST"]
            )(self.auth_view.blueprint)
        self.user_view = appbuilder.add_view(
            self.user_view, "List Users", icon="fa-user", category="Security",
            category_icon="fa-cogs",
        )
        role_view = appbuilder.add_view(
            self.rolemodelview, "List Roles", icon="fa-user-gear", category="Security"
        )
        role_view.related_views = [self.user_view.__class__]

    # Logging in happens before a request has a scope; the user's own bookkeeping
    # (login count, last login, failed attempts) is written in the user's own scope.
    def update_user_auth_stat(self, user, success=True):
        with own_scope(user):
            return super().update_user_auth_stat(user, success)

    def noop_user_update(self, user) -> None:
        with own_scope(user):
            super().noop_user_update(user)
