"""Alembic environment: runs migrations on the Store's engine (no alembic.ini needed)."""

from alembic import context
from sqlalchemy import inspect, text

from bloodcells.store.errors import MigrationCheckError
from bloodcells.store.schema import Base

UPGRADE_LOCK = "bloodcells schema upgrade"
UPGRADE_WAIT_SECONDS = 600
# the tables the migrations make: the schema's, and 'cells', which 0001 made and 0002 dropped
MADE_TABLES = {*Base.metadata.tables, "cells"}

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch migrations rebuild a SQLite table by copying it and dropping the old one: with foreign
        # keys enforced, that drop would delete (ON DELETE CASCADE) every row referring to it. The
        # pragma is ignored inside a transaction, so it is set before one begins.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        with connection.begin():
            # Two servers started together both upgrade: each reads the schema's revision only once it
            # holds the database for itself, so the second finds the first's work done (it added the
            # same column again: "duplicate column name"). SQLite: the write lock; MySQL, whose DDL does
            # not wait for transactions: a named lock.
            if sqlite:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif connection.exec_driver_sql(f"SELECT GET_LOCK('{UPGRADE_LOCK}', {UPGRADE_WAIT_SECONDS})").scalar() != 1:
                raise MigrationCheckError(f"another server has been upgrading this database for over "
                                          f"{UPGRADE_WAIT_SECONDS} s; try again once it has finished")
            # A database shared with another program that has a table of one of these names: the first
            # migration made eleven tables in it and failed at the twelfth ("Table 'reviews' already exists",
            # worded as a database that cannot be reached); MySQL's DDL cannot be rolled back.
            tables = set(inspect(connection).get_table_names())
            if "alembic_version" not in tables and (clashing := sorted(tables & MADE_TABLES)):
                raise MigrationCheckError(
                    f"the database already holds tables that bloodcells did not make but would: "
                    f"{', '.join(clashing)}; give bloodcells a database of its own (e.g. CREATE DATABASE "
                    "bloodcells CHARACTER SET utf8mb4) or a new SQLite file")
            context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=sqlite)
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                broken = connection.execute(text("PRAGMA foreign_key_check")).all()
                if broken:  # rolls the migration back rather than leave rows pointing nowhere
                    raise MigrationCheckError(f"the migration left rows referring to missing rows: {broken[:5]} "
                                              "(table, row, table referred to, constraint); mend or delete "
                                              "them and upgrade again")
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
        else:
            connection.exec_driver_sql(f"SELECT RELEASE_LOCK('{UPGRADE_LOCK}')")
