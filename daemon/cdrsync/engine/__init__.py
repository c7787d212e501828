"""The sync engine: window, day, lookup and outbox streams, their loop, planning and batch queue.

May import: vendors, http, store, config, model, errors (never app, ops or simulator).
"""
