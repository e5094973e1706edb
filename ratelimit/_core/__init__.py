"""The core: everything a decision is made of, with no I/O.

Rates and their parsing, the sliding-window arithmetic (the Python twin of the Lua),
the Redis keyspace, plans (which counters a request touches), decisions and receipts,
the script loader, the metrics sink protocol, and the located document reader the
config files and the Envoy format share. Imports nothing from the layers above.
"""
