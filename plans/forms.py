"""Forms for plans, plan changes and plan-change requests."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import RadioField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from plans.metrics import METRICS

TIMING_CHOICES = [("immediately", "Immediately (base fee prorated by day)"),
                  ("period_end", "At the end of the current period")]


class PlanChoiceMixin:
    def set_plans(self, plans) -> None:
        self.plan.choices = [(str(p.id), p.name) for p in plans]


class RequestPlanChangeForm(FlaskForm, PlanChoiceMixin):
    plan = SelectField("New plan", validators=[DataRequired()])
    timing = RadioField("When", choices=TIMING_CHOICES, default="period_end",
                        validators=[DataRequired()])
    reason = TextAreaField("Reason", validators=[DataRequired(), Length(min=5, max=2000)],
                           description="The Platform Admin who decides sees this")


class ChangePlanForm(FlaskForm, PlanChoiceMixin):
    plan = SelectField("Plan", validators=[DataRequired()])
    timing = RadioField("When", choices=TIMING_CHOICES, default="immediately",
                        validators=[DataRequired()])
    custom_price = StringField("Negotiated monthly price", validators=[Optional()],
                               description="Custom-priced plans only, e.g. 2500.00")


class DecideRequestForm(FlaskForm):
    note = TextAreaField("Note to the tenant", validators=[Optional(), Length(max=2000)])
    custom_price = StringField("Negotiated monthly price", validators=[Optional()])


def plan_terms_form(custom_priced: bool) -> type[FlaskForm]:
    """A form class with a price, a user limit and, per metric, the included amount
    and the overage unit price."""

    class PlanTermsForm(FlaskForm):
        base_price = StringField(
            "Monthly base price (USD)",
            validators=[Optional()] if custom_priced else [DataRequired()],
            description="Empty for a custom-priced plan" if custom_priced else "",
        )
        user_limit = StringField("Users included", validators=[Optional()],
                                 description="Empty for unlimited")

    for code, metric in METRICS.items():
        setattr(PlanTermsForm, f"{code}_included", StringField(
            f"{metric.label} included ({metric.unit})", validators=[Optional()],
            description="Empty for unlimited"))
        setattr(PlanTermsForm, f"{code}_unit_price", StringField(
            f"{metric.label} overage price per {metric.unit_one} (USD)",
            validators=[Optional()]))
    return PlanTermsForm
