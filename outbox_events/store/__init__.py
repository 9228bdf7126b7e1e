"""The outbox table, its statements and the database engines."""
