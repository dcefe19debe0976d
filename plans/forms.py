"""Forms for plans, plan changes and plan-change requests."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    widgets,
)
from wtforms.validators import DataRequired, Length, Optional

from plans.metrics import METRICS

TIMING_CHOICES = [("immediately", "Immediately (base fee prorated by day)"),
                  ("period_end", "At the end of the current period")]


class MultiCheckboxField(SelectMultipleField):
    """Several choices as checkboxes."""

    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


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


ALERT_KIND_CHOICES = [
    ("usage", "Usage reaches a percentage of a plan limit"),
    ("forecast", "Burn rate projects a percentage of a limit by period end"),
    ("metric", "A metric reaches a quantity"),
    ("spend", "Spend this period reaches an amount"),
    ("credit", "Prepaid balance falls below an amount"),
    ("overage", "Usage passes a plan limit"),
]
ALERT_CHANNEL_CHOICES = [("email", "Email"), ("in_app", "In-app"), ("sms", "SMS")]


class AlertRuleForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    kind = SelectField("Alert when", choices=ALERT_KIND_CHOICES, validators=[DataRequired()])
    metric = SelectField("Metric", validators=[Optional()],
                         description="For limits: any metric with a limit when left empty",
                         choices=[("", "Any metric with a limit")]
                         + [(code, m.label) for code, m in METRICS.items()])
    threshold = StringField("Threshold", validators=[Optional(), Length(max=32)],
                            description="A percentage (e.g. 90) or, for a metric, a quantity "
                                        "in its billing unit")
    amount = StringField("Amount", validators=[Optional(), Length(max=32)],
                         description="For spend and balance rules, e.g. 500.00")
    channels = MultiCheckboxField("Channels", choices=ALERT_CHANNEL_CHOICES,
                                  default=["email", "in_app"])
    email_to = StringField("Email recipients", validators=[Optional(), Length(max=2000)],
                           description="Comma separated; the tenant's billing email when empty")
    sms_to = StringField("SMS numbers", validators=[Optional(), Length(max=500)],
                         description="Comma separated, international form, e.g. +14155550123")
    enabled = BooleanField("On", default=True)

    def data_for_service(self) -> dict:
        return {"name": self.name.data, "kind": self.kind.data, "metric": self.metric.data,
                "threshold": self.threshold.data, "amount": self.amount.data,
                "channels": self.channels.data or [], "email_to": self.email_to.data,
                "sms_to": self.sms_to.data, "enabled": bool(self.enabled.data)}
