"""The servers of ``bench_servers.py``: app factories and processes, one variant per process.

Each module here runs inside a server subprocess started by ``bench/bench_servers.py``
(uvicorn, gunicorn, or a gRPC server of its own), or as a load-generating client
process (``grpc_load.py``). The variant and its settings come from ``BENCH_*``
environment variables (see ``common.py``).
"""
