"""Forms for tenants and tenant users. Field checks reuse the services' rules."""

from __future__ import annotations

from zoneinfo import available_timezones

from babel.numbers import list_currencies
from flask_appbuilder.fields import QuerySelectField
from flask_appbuilder.fieldwidgets import BS3TextFieldWidget, Select2Widget
from flask_appbuilder.forms import DynamicForm
from sqlalchemy import select
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length
from wtforms.validators import ValidationError as WTFValidationError

from permissions.matrix import PLATFORM_ADMIN, TENANT_ROLES
from portal.extensions import db
from tenants import services
from tenants.models import Tenant


class RuleCheck:
    """A WTForms validator running one of the services' checks, so a form and the
    CLI refuse the same input with the same message."""

    def __init__(self, check):
        self.check = check

    def __call__(self, form, field) -> None:
        try:
            self.check(field.data)
        except ValueError as exc:
            raise WTFValidationError(str(exc)) from exc


def currency_choices() -> list[tuple[str, str]]:
    return [(c, c) for c in sorted(list_currencies())]


def timezone_choices() -> list[tuple[str, str]]:
    return [(z, z) for z in sorted(available_timezones())]


def currency_field() -> SelectField:
    return SelectField(
        "Currency", choices=currency_choices(), default="USD", widget=Select2Widget(),
        validators=[RuleCheck(services.check_currency)],
        description="ISO 4217 code; a tenant bills in one currency",
    )


def timezone_field() -> SelectField:
    return SelectField(
        "Time zone", choices=timezone_choices(), default="UTC", widget=Select2Widget(),
        validators=[RuleCheck(services.check_timezone)],
        description="Days, periods and date ranges are counted in this zone",
    )


class InviteForm(DynamicForm):
    email = StringField("Email", validators=[DataRequired(), RuleCheck(services.check_email)],
                        widget=BS3TextFieldWidget())
    first_name = StringField("First name", validators=[DataRequired(), Length(max=64)],
                             widget=BS3TextFieldWidget())
    last_name = StringField("Last name", validators=[DataRequired(), Length(max=64)],
                            widget=BS3TextFieldWidget())
    role = SelectField("Role", choices=[(r, r) for r in TENANT_ROLES], widget=Select2Widget())


class PlatformInviteForm(InviteForm):
    role = SelectField(
        "Role", choices=[(r, r) for r in (*TENANT_ROLES, PLATFORM_ADMIN)], widget=Select2Widget(),
        description="Platform Admins belong to no tenant; leave the tenant empty for them",
    )
    tenant = QuerySelectField(
        "Tenant",
        query_func=lambda: db.session.scalars(select(Tenant).order_by(Tenant.name)).all(),
        get_pk_func=lambda t: t.id,
        get_label=lambda t: f"{t.name} ({t.slug})",
        allow_blank=True,
        blank_text="— none (Platform Admin) —",
        widget=Select2Widget(),
    )


class TenantUserEditForm(DynamicForm):
    first_name = StringField("First name", validators=[DataRequired(), Length(max=64)],
                             widget=BS3TextFieldWidget())
    last_name = StringField("Last name", validators=[DataRequired(), Length(max=64)],
                            widget=BS3TextFieldWidget())
    role = SelectField("Role", choices=[(r, r) for r in TENANT_ROLES], widget=Select2Widget())
    active = SelectField("Active", choices=[("y", "Active"), ("n", "Deactivated")],
                         widget=Select2Widget())


class AcceptInvitationForm(DynamicForm):
    password = PasswordField(
        "Password",
        validators=[DataRequired(), Length(min=services.MIN_PASSWORD_LENGTH)],
    )
    confirm = PasswordField(
        "Repeat password", validators=[DataRequired(), EqualTo("password", "passwords differ")]
    )
