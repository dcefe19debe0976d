"""Flask-AppBuilder ModelView whose writes go through services.

FAB's own add/edit populate the model and commit it themselves. Here a valid form
becomes a plain dict handed to the view's ``create_item``/``update_item``, which
call a service; a ``ValidationFailed`` puts each message on its form field and
nothing is written.
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, g
from flask_appbuilder import ModelView

from portal.audit import Actor
from portal.errors import ValidationFailed
from portal.extensions import db

READ_WRITE = {
    "list": "read",
    "show": "read",
    "download": "read",
    "add": "write",
    "edit": "write",
    "delete": "write",
    "action": "write",
    "action_post": "write",
}


class ServiceModelView(ModelView):
    method_permission_name = READ_WRITE
    page_size = 50
    form_field_aliases: dict[str, str] = {}

    def actor(self) -> Actor:
        return Actor.for_user(g.user)

    def create_item(self, data: dict[str, Any]) -> Any:
        abort(405)

    def update_item(self, item: Any, data: dict[str, Any]) -> Any:
        abort(405)

    def delete_item(self, item: Any) -> None:
        abort(405)

    def _form_data(self, form) -> dict[str, Any]:
        return {name: field.data for name, field in form._fields.items() if name != "csrf_token"}

    def _show_errors(self, form, exc: ValidationFailed) -> None:
        db.session.rollback()
        for field, message in exc.errors.items():
            name = self.form_field_aliases.get(field, field)
            if name in form._fields:
                form._fields[name].errors = [*form._fields[name].errors, message]
            else:
                flash(message, "danger")

    def _add(self):
        from flask import request

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
        from flask import request

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
        return self._get_edit_widget(form=form, exclude_cols=[])

    def _delete(self, pk):
        item = self.datamodel.get(pk, self._base_filters)
        if item is None:
            abort(404)
        try:
            self.delete_item(item)
        except ValidationFailed as exc:
            db.session.rollback()
            flash(str(exc), "danger")
        else:
            flash(self.delete_row_message, "success")
