"""The database edge: the only asyncpg user (store, stream locks, queues, embedded server, sql/).

May import: cdrsync.errors, cdrsync.model, cdrsync.config.
"""
