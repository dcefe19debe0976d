"""Tenant administration (Platform Admin), team management (Tenant Admin) and
accepting an invitation."""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, action, expose
from flask_appbuilder.models.sqla.interface import SQLAInterface
from markupsafe import Markup, escape

from permissions.matrix import (
    RESOURCE_PLATFORM_USERS,
    RESOURCE_TEAM,
    RESOURCE_TENANTS,
)
from portal.errors import NotFoundError, ValidationFailed
from portal.modelviews import READ_WRITE, ServiceModelView
from tenants import services
from tenants.forms import (
    AcceptInvitationForm,
    InviteForm,
    PlatformInviteForm,
    RuleCheck,
    TenantUserEditForm,
    currency_field,
    timezone_field,
)
from tenants.models import BillfoldUser, Tenant, TenantStatus


def _flash_invitation(user: BillfoldUser, token: str) -> None:
    link = url_for("InvitationView.accept", token=token, _external=True)
    flash(
        Markup("Invitation for {} created. Send this one-time link (shown once): "
               "<code>{}</code>").format(escape(user.email), escape(link)),
        "info",
    )


class UserViewBase(ServiceModelView):
    datamodel = SQLAInterface(BillfoldUser)
    edit_form = TenantUserEditForm
    edit_columns = ["first_name", "last_name", "role", "active"]
    label_columns = {
        "full_name": "Name",
        "role_names": "Role",
        "invitation_pending": "Invitation pending",
        "last_login": "Last login",
    }
    base_order = ("last_name", "asc")
    search_columns = ["email", "first_name", "last_name", "active"]

    def prefill_form(self, form, pk) -> None:
        item = self.datamodel.get(pk, self._base_filters)
        form.role.data = (item.role_names or [""])[0]
        form.active.data = "y" if item.active else "n"

    def update_item(self, item: BillfoldUser, data: dict[str, Any]) -> BillfoldUser:
        data = {**data, "active": data.get("active") == "y"}
        try:
            return services.update_tenant_user(self.actor(), item, data)
        except NotFoundError as exc:
            raise ValidationFailed({"role": "edit Platform Admins under Security"}) from exc


class TeamView(UserViewBase):
    """A Tenant Admin's users: the ORM scope limits every row to the admin's tenant."""

    route_base = "/team"
    class_permission_name = RESOURCE_TEAM
    list_title = "Team"
    show_title = "Team member"
    add_title = "Invite a team member"
    edit_title = "Edit team member"
    add_form = InviteForm
    add_columns = ["email", "first_name", "last_name", "role"]
    list_columns = ["full_name", "email", "role_names", "active", "invitation_pending",
                    "last_login"]
    show_columns = ["full_name", "username", "email", "role_names", "active",
                    "invitation_pending", "last_login", "login_count"]

    def create_item(self, data: dict[str, Any]) -> BillfoldUser:
        tenant = g.user.tenant
        if tenant is None:
            raise ValidationFailed({"role": "Platform Admins invite users under Platform → Users"})
        user, token = services.invite_user(self.actor(), tenant, data)
        _flash_invitation(user, token)
        return user


class PlatformUsersView(UserViewBase):
    """Every user of every tenant, with the tenant shown and filterable."""

    route_base = "/platform/users"
    class_permission_name = RESOURCE_PLATFORM_USERS
    list_title = "Users of all tenants"
    show_title = "User"
    add_title = "Invite a user"
    edit_title = "Edit user"
    add_form = PlatformInviteForm
    add_columns = ["email", "first_name", "last_name", "role", "tenant"]
    list_columns = ["full_name", "email", "tenant", "role_names", "active",
                    "invitation_pending", "last_login"]
    show_columns = ["full_name", "username", "email", "tenant", "role_names", "active",
                    "invitation_pending", "last_login", "login_count"]
    search_columns = ["tenant", "email", "first_name", "last_name", "active"]

    def create_item(self, data: dict[str, Any]) -> BillfoldUser:
        user, token = services.invite_user(self.actor(), data.get("tenant"), data)
        _flash_invitation(user, token)
        return user


class TenantView(ServiceModelView):
    datamodel = SQLAInterface(Tenant)
    route_base = "/platform/tenants"
    class_permission_name = RESOURCE_TENANTS
    method_permission_name = {**READ_WRITE, "suspend": "write", "reactivate": "write"}
    list_title = "Tenants"
    show_title = "Tenant"
    add_title = "Create a tenant"
    edit_title = "Edit tenant"
    list_columns = ["name", "slug", "status", "currency", "timezone", "billing_email",
                    "created_at"]
    show_columns = ["name", "slug", "status", "currency", "timezone", "billing_email",
                    "created_at", "suspended_at"]
    add_columns = ["name", "slug", "currency", "timezone", "billing_email"]
    edit_columns = ["name", "currency", "timezone", "billing_email"]
    search_columns = ["name", "slug", "status", "currency", "billing_email"]
    label_columns = {"timezone": "Time zone", "billing_email": "Billing email",
                     "created_at": "Created", "suspended_at": "Suspended"}
    description_columns = {
        "slug": "Lowercase letters, digits and hyphens; fixed once created",
    }
    base_order = ("name", "asc")
    add_form_extra_fields = {"currency": currency_field(), "timezone": timezone_field()}
    edit_form_extra_fields = {"currency": currency_field(), "timezone": timezone_field()}
    validators_columns = {
        "slug": [RuleCheck(services.check_slug)],
        "billing_email": [RuleCheck(services.check_email)],
    }
    related_views = [PlatformUsersView]

    def create_item(self, data: dict[str, Any]) -> Tenant:
        return services.create_tenant(self.actor(), data)

    def update_item(self, item: Tenant, data: dict[str, Any]) -> Tenant:
        return services.update_tenant(self.actor(), item, data)

    def _set_status(self, items, status: str):
        items = items if isinstance(items, list) else [items]
        for tenant in items:
            services.set_tenant_status(self.actor(), tenant, status)
        flash(f"{len(items)} tenant(s) now {status}", "success")
        return redirect(request.referrer or self.get_redirect())

    @action("suspend", "Suspend", "Suspend the selected tenants? Their users are logged out.",
            "fa-pause", multiple=True, single=True)
    def suspend(self, items):
        return self._set_status(items, TenantStatus.SUSPENDED.value)

    @action("reactivate", "Reactivate", "Reactivate the selected tenants?", "fa-play",
            multiple=True, single=True)
    def reactivate(self, items):
        return self._set_status(items, TenantStatus.ACTIVE.value)


class InvitationView(BaseView):
    """Where an invited user chooses a password. Public: the token is the credential."""

    route_base = "/invitation"
    default_view = "accept"

    @expose("/<token>", methods=["GET", "POST"])
    def accept(self, token: str):
        try:
            user = services.find_invitation(token)
        except (NotFoundError, ValidationFailed) as exc:
            message = exc.errors.get("token") if isinstance(exc, ValidationFailed) else None
            return self.render_template(
                "billfold/invitation.html", form=None, user=None,
                error=message or "This invitation link is unknown or was already used.",
            ), 404
        form = AcceptInvitationForm.refresh(request.form if request.method == "POST" else None)
        if request.method == "POST" and form.validate():
            try:
                services.accept_invitation(token, form.password.data)
            except ValidationFailed as exc:
                form.password.errors = [*form.password.errors, *exc.errors.values()]
            else:
                flash("Your password is set. Log in with your email and password.", "success")
                return redirect(self.appbuilder.get_url_for_login)
        return self.render_template("billfold/invitation.html", form=form, user=user, error=None)
