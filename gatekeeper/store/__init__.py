"""Postgres and Redis: clients, the schema and its migrations, and the writes that change what the
edge enforces."""
