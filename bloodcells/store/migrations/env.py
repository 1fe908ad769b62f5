"""Alembic environment: runs migrations on the Store's engine (no alembic.ini needed)."""

from alembic import context

from bloodcells.store.schema import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
