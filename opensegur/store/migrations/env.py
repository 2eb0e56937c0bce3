"""Alembic environment: the connection is handed over by ``Database.migrate``."""

from alembic import context

from opensegur.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    from opensegur.store.db import make_engine

    url = config.attributes.get("connection_url") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(str(url))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
