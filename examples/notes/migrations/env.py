"""The notes service's migrations run on the service's own settings (docs/alembic.md)."""

from examples.notes.models import Base

from dbscope.alembic import run_migrations

run_migrations(Base.metadata)
