"""Calls GetCart until rate limited, then prints the status: ``python examples/grpc/client.py [target]``.

Set ``TOKEN`` to send ``authorization: Bearer $TOKEN`` (for a server keyed per JWT subject).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generated shop_pb2*.py
import shop_pb2
import shop_pb2_grpc


def show(err: grpc.RpcError) -> None:
    print(f"{err.code().name}: {err.details()}")
    for key, value in err.trailing_metadata() or ():
        if not key.endswith("-bin"):
            print(f"  trailer {key}: {value}")
    status = rpc_status.from_call(err)  # decodes grpc-status-details-bin
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            print(f"  RetryInfo: retry after {info.retry_delay.ToMilliseconds()} ms")
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            for v in quota.violations:
                print(f"  QuotaFailure: {v.subject}: {v.description}")


def main(target: str) -> None:
    token = os.environ.get("TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        stub = shop_pb2_grpc.CartStub(channel)
        for n in range(1, 1001):
            try:
                stub.GetCart(shop_pb2.CartRequest(cart_id="demo"), metadata=metadata, timeout=5)
            except grpc.RpcError as err:
                print(f"call {n}: ", end="")
                show(err)
                return
            print(f"call {n}: OK")
    print("never limited")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051")
