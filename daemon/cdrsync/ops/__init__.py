"""What operators see: Prometheus metrics, logging and systemd notify, the status report.

May import: engine, vendors, http, store, config, model, errors (never app, simulator or cli).
"""
