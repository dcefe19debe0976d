"""Billfold's Flask-AppBuilder security manager."""

from __future__ import annotations

from flask import current_app
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_appbuilder.security.views import RoleModelView, UserDBModelView

from permissions.matrix import RESOURCE_FAB_ROLES, RESOURCE_FAB_USERS
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


class BillfoldSecurityManager(SecurityManager):
    user_model = BillfoldUser
    userdbmodelview = BillfoldUserDBModelView
    rolemodelview = ReadOnlyRoleModelView
    userstatschartview = None  # FAB's chart loads Google Charts from the internet

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
