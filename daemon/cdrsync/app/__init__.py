"""The composition root: the daemon's run and backfill, the streams per vendor, the supervisor
and the push receiver.

May import: ops, engine, vendors, http, store, config, model, errors (never the simulator or cli).
"""
