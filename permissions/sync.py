"""Write the roles of ``permissions.matrix`` to the database."""

from __future__ import annotations

from typing import Any

from flask_appbuilder import AppBuilder

from permissions.matrix import PUBLIC, ROLES, role_permissions


def sync_roles(appbuilder: AppBuilder) -> dict[str, int]:
    """Create every view's permissions, then give each role exactly its matrix rows.

    Every role, Platform Admin (FAB's admin role) included, loses any permission
    that is not in the matrix, and Public keeps none, so no default role can leak
    rights. Returns the permission count per role.
    """
    sm = appbuilder.sm
    for name in (*ROLES, PUBLIC):
        if sm.find_role(name) is None:
            sm.add_role(name)
    appbuilder.add_permissions(update_perms=True)
    _remove_stale_permissions(appbuilder)
    counts: dict[str, int] = {}
    for name in ROLES:
        role = sm.find_role(name)
        wanted: list[Any] = []
        missing: list[tuple[str, str]] = []
        for permission, resource in sorted(role_permissions(name)):
            pvm = sm.find_permission_view_menu(permission, resource)
            (wanted if pvm is not None else missing).append(pvm or (permission, resource))
        if missing:
            raise ValueError(f"the matrix grants {name} permissions no view has: {missing}")
        role.permissions = wanted
        counts[name] = len(wanted)
    sm.find_role(PUBLIC).permissions = []
    sm.session.commit()
    counts[PUBLIC] = 0
    return counts


def _remove_stale_permissions(appbuilder: AppBuilder) -> None:
    """Drop permission rows of views and menus that no longer exist."""
    sm = appbuilder.sm
    current = {
        (perm, view.class_permission_name)
        for view in appbuilder.baseviews
        for perm in (view.base_permissions or [])
    }
    for category in appbuilder.menu.get_list():
        current.add(("menu_access", category.name))
        current.update(("menu_access", item.name) for item in category.childs if item.name != "-")
    for pvm in sm.session.query(sm.permissionview_model).all():
        if pvm.permission is None or pvm.view_menu is None:
            continue
        if (pvm.permission.name, pvm.view_menu.name) not in current:
            for role in sm.get_all_roles():
                if pvm in role.permissions:
                    role.permissions.remove(pvm)
            sm.session.delete(pvm)
    sm.session.flush()
