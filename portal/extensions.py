"""Extensions, created unbound; ``create_app`` binds them."""

from flask_appbuilder import AppBuilder, Model
from flask_appbuilder.models.sqla.base import SQLA
from flask_migrate import Migrate

# Bound to FAB's declarative metadata so that create_all and Alembic see FAB's
# own tables beside ours.
db = SQLA(metadata=Model.metadata)
appbuilder = AppBuilder()
migrate = Migrate()
