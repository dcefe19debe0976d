"""Extensions, created unbound; ``create_app`` binds them.

Flask-AppBuilder's ``AppBuilder`` is the exception: it keeps the registered views
and menu on itself, so one instance cannot serve two apps (tests build one app per
database). ``create_app`` makes one per app and leaves it at ``app.appbuilder``.
"""

from flask_appbuilder import Model
from flask_appbuilder.models.sqla.base import SQLA
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from portal.replica import RoutingSession

# Bound to FAB's declarative metadata so that create_all and Alembic see FAB's
# own tables beside ours. Its session sends report reads to a read replica when one
# is configured (portal/replica.py).
db: SQLAlchemy = SQLA(metadata=Model.metadata, session_options={"class_": RoutingSession})
migrate = Migrate()
