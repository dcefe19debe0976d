"""The in-app notifications of the signed-in user, and marking them read."""

from __future__ import annotations

from flask import abort, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access

from permissions.matrix import RESOURCE_NOTIFICATIONS
from portal import notifications
from portal.notifications import Notification
from portal.paging import INT32_MAX, cursor_arg

PAGE_SIZE = 50


class NotificationsView(BaseView):
    route_base = "/notifications"
    default_view = "index"
    class_permission_name = RESOURCE_NOTIFICATIONS
    method_permission_name = {"index": "read", "read": "write", "read_all": "write"}
    object_model = Notification

    @expose("/")
    @has_access
    def index(self):
        user = g.user
        unread_only = request.args.get("unread") == "1"
        rows, has_more = [], False
        if user.tenant_id is not None:
            rows = notifications.list_notifications(user, unread_only=unread_only,
                                                    before=cursor_arg(INT32_MAX),
                                                    limit=PAGE_SIZE + 1)
            has_more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
        return self.render_template(
            "billfold/notifications.html", rows=rows, has_more=has_more,
            unread_only=unread_only, next_before=rows[-1].id if has_more else None,
            unread=notifications.unread_count(user),
            zone=user.tenant.timezone if user.tenant_id is not None else "UTC",
            title="Notifications")

    @expose("/<pk>/read", methods=["POST"])
    @has_access
    def read(self, pk):
        if g.user.tenant_id is None:
            abort(404)
        notifications.mark_read(g.user, int(pk))
        target = request.form.get("next", "")
        if not target.startswith("/") or target.startswith("//"):
            target = url_for("NotificationsView.index")
        return redirect(target)

    @expose("/read-all", methods=["POST"])
    @has_access
    def read_all(self):
        changed = notifications.mark_read(g.user) if g.user.tenant_id is not None else 0
        flash(f"{changed} notification{'s' if changed != 1 else ''} marked read.", "success")
        return redirect(url_for("NotificationsView.index"))
