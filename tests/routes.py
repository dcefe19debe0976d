"""The app's routes, read from Flask-AppBuilder's views and ``app.url_map`` so that a
new view is covered by the matrix and isolation tests without editing them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewRoute:
    view: object
    method_name: str
    rule: str
    http_methods: tuple[str, ...]
    permission: str | None  # e.g. "can_read"; None for unprotected methods

    @property
    def resource(self) -> str:
        return self.view.class_permission_name

    @property
    def model(self):
        datamodel = getattr(self.view, "datamodel", None)
        return getattr(datamodel, "obj", None) or getattr(self.view, "object_model", None)


def view_routes(app) -> list[ViewRoute]:
    routes = []
    for view in app.appbuilder.baseviews:
        for name in dir(type(view)):
            func = getattr(type(view), name, None)
            urls = getattr(func, "_urls", None)
            if not urls:
                continue
            permission = None
            if hasattr(func, "_permission_name"):
                mapped = (view.method_permission_name or {}).get(name)
                permission = f"can_{mapped}" if mapped else func._permission_name
                if not permission.startswith("can_"):
                    permission = f"can_{permission}"
            for url, methods in urls:
                rule = (view.route_base or "") + url
                routes.append(ViewRoute(view, name, rule, tuple(methods), permission))
    return routes


def routes_for(app, permission: str, resource: str) -> list[ViewRoute]:
    return [r for r in view_routes(app) if r.permission == permission and r.resource == resource]
