"""Flask-AppBuilder ModelView whose writes go through services.

FAB's own add/edit populate the model and commit it themselves. Here a valid form
becomes a plain dict handed to the view's ``create_item``/``update_item``, which
call a service; a ``ValidationFailed`` puts each message on its form field and
nothing is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import abort, flash, g, request
from flask_appbuilder import ModelView, expose
from flask_appbuilder.urltools import get_order_args, get_page_args, get_page_size_args

from portal.audit import Actor
from portal.errors import ValidationFailed, attach_errors
from portal.extensions import db

# Deleting is not a write: billing records are suspended or deactivated, never
# deleted, so "delete" keeps its own permission, which no role is given.
READ_WRITE = {
    "list": "read",
    "show": "read",
    "download": "read",
    "add": "write",
    "edit": "write",
    "action": "write",
    "action_post": "write",
}


if TYPE_CHECKING:
    # To the type checker the mixin is the ModelView it is mixed into.
    from flask_appbuilder import ModelView as _ActionsBase
else:
    _ActionsBase = object


class SafeActionsMixin(_ActionsBase):
    """FAB's action routes fail with a 500 on an unknown action name and hand
    ``None`` to the action for an id outside the scope. Both answer 404 here."""

    def get_action_permission_name(self, name: str) -> str:
        if name not in self.actions:
            abort(404)
        return super().get_action_permission_name(name)

    @expose("/action/<string:name>/<pk>", methods=["GET", "POST"])
    def action(self, name, pk):
        if name not in self.actions or self.datamodel.get(pk, self._base_filters) is None:
            abort(404)
        return super().action(name, pk)

    @expose("/action_post", methods=["POST"])
    def action_post(self):
        name = request.form.get("action", "")
        pks = request.form.getlist("rowid")
        if name not in self.actions or not pks:
            abort(404)
        if any(self.datamodel.get(pk, self._base_filters) is None for pk in pks):
            abort(404)
        return super().action_post()


class BillfoldModelView(SafeActionsMixin, ModelView):
    page_size = 50


class ServiceModelView(BillfoldModelView):
    method_permission_name = READ_WRITE
    base_permissions = ["can_read", "can_write"]
    page_size = 50
    form_field_aliases: dict[str, str] = {}

    def actor(self) -> Actor:
        return Actor.for_user(g.user)

    def create_item(self, data: dict[str, Any]) -> Any:
        abort(405)

    def update_item(self, item: Any, data: dict[str, Any]) -> Any:
        abort(405)

    def _form_data(self, form) -> dict[str, Any]:
        return {name: field.data for name, field in form._fields.items() if name != "csrf_token"}

    def _show_errors(self, form, exc: ValidationFailed) -> None:
        db.session.rollback()
        attach_errors(form, exc, self.form_field_aliases)

    def _add(self):
        form = self.add_form.refresh()
        if request.method == "POST" and form.validate():
            try:
                self.create_item(self._form_data(form))
            except ValidationFailed as exc:
                self._show_errors(form, exc)
            else:
                flash(self.add_row_message, "success")
                return None
        return self._get_add_widget(form=form, exclude_cols=[])

    def _edit(self, pk):
        item = self.datamodel.get(pk, self._base_filters)
        if item is None:
            abort(404)
        if request.method == "POST":
            form = self.edit_form.refresh(request.form)
            form._id = self.datamodel.get_pk_value(item)
            if form.validate():
                try:
                    self.update_item(item, self._form_data(form))
                except ValidationFailed as exc:
                    self._show_errors(form, exc)
                else:
                    flash(self.edit_row_message, "success")
                    return None
        else:
            form = self.edit_form.refresh(obj=item)
            self.prefill_form(form, pk)
        widgets = self._get_edit_widget(form=form, exclude_cols=[])
        return self._get_related_views_widgets(
            item, filters={}, orders=get_order_args(), pages=get_page_args(),
            page_sizes=get_page_size_args(), widgets=widgets,
        )
