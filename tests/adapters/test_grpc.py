"""The gRPC interceptors, on real grpc.server and grpc.aio.server instances with real clients."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from ratelimit import Limiter
from ratelimit.backends.base import BackendError, SyncBackend
from ratelimit.grpc import AsyncRateLimitInterceptor, RateLimitInterceptor, peer_ip, rule_name
from ratelimit.keys import header
from ratelimit.rules import Rule
from ratelimit.testing import FakeClock

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "grpc"))
import shop_pb2
import shop_pb2_grpc

T0 = 1_700_000_040.0
METHODS = ("GetCart", "WatchCart", "AddItems", "Chat")
EXPECTED_MESSAGES = {"GetCart": 1, "WatchCart": 3, "AddItems": 1, "Chat": 2}
ITEMS = (shop_pb2.Item(sku="a", quantity=1), shop_pb2.Item(sku="b", quantity=2))
# Request-streaming behaviours send this first, so that aio clients know the server reads.
READING = (("x-reading", "1"),)


# -- servicers: one of each arity, sync and async ----------------------------------------


class SyncCart(shop_pb2_grpc.CartServicer):
    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()

    def GetCart(self, request: Any, context: Any) -> Any:
        self.ran["GetCart"] += 1
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    def WatchCart(self, request: Any, context: Any) -> Iterator[Any]:
        self.ran["WatchCart"] += 1
        for i in range(3):
            yield shop_pb2.ShoppingCart(cart_id=f"{request.cart_id}-{i}")

    def AddItems(self, request_iterator: Any, context: Any) -> Any:
        self.ran["AddItems"] += 1
        context.send_initial_metadata(READING)
        return shop_pb2.ShoppingCart(items=list(request_iterator))

    def Chat(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        self.ran["Chat"] += 1
        context.send_initial_metadata(READING)
        yield from request_iterator


class AioCart(shop_pb2_grpc.CartServicer):
    """Async behaviours: a coroutine, an async generator, and the reader/writer API."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()

    async def GetCart(self, request: Any, context: Any) -> Any:
        self.ran["GetCart"] += 1
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    async def WatchCart(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.ran["WatchCart"] += 1
        for i in range(3):
            yield shop_pb2.ShoppingCart(cart_id=f"{request.cart_id}-{i}")

    async def AddItems(self, request_iterator: Any, context: Any) -> Any:
        self.ran["AddItems"] += 1
        await context.send_initial_metadata(READING)
        return shop_pb2.ShoppingCart(items=[item async for item in request_iterator])

    async def Chat(self, request_iterator: Any, context: Any) -> None:
        self.ran["Chat"] += 1
        await context.send_initial_metadata(READING)
        async for item in request_iterator:
            await context.write(item)


# -- harness: a server of either kind and a client of the same kind -----------------------


@dataclass
class Result:
    code: grpc.StatusCode
    messages: list[Any] = field(default_factory=list)
    error: Any = None

    @property
    def trailers(self) -> dict[str, Any]:
        return dict(self.error.trailing_metadata() or ()) if self.error is not None else {}

    @property
    def details(self) -> str:
        return str(self.error.details()) if self.error is not None else ""


def sync_call(stub: Any, method: str, metadata: Any) -> Result:
    got: list[Any] = []
    request = shop_pb2.CartRequest(cart_id="c1")
    try:
        if method == "GetCart":
            got.append(stub.GetCart(request, metadata=metadata, timeout=10))
        elif method == "WatchCart":
            got.extend(stub.WatchCart(request, metadata=metadata, timeout=10))
        elif method == "AddItems":
            got.append(stub.AddItems(iter(ITEMS), metadata=metadata, timeout=10))
        else:
            got.extend(stub.Chat(iter(ITEMS), metadata=metadata, timeout=10))
    except grpc.RpcError as err:
        return Result(err.code(), got, err)
    return Result(grpc.StatusCode.OK, got)


async def aio_call(stub: Any, method: str, metadata: Any) -> Result:
    got: list[Any] = []
    request = shop_pb2.CartRequest(cart_id="c1")
    calls: list[Any] = []

    async def requests() -> AsyncIterator[Any]:
        # grpc/grpc#36066: an aio client whose write races the server's early status may
        # report INTERNAL instead of that status. Write only once the server says it reads.
        if dict(await calls[0].initial_metadata()).get("x-reading") != "1":
            await calls[0].code()
            return
        for item in ITEMS:
            yield item

    try:
        if method == "GetCart":
            got.append(await stub.GetCart(request, metadata=metadata, timeout=10))
        elif method == "WatchCart":
            got.extend([m async for m in stub.WatchCart(request, metadata=metadata, timeout=10)])
        elif method == "AddItems":
            calls.append(stub.AddItems(requests(), metadata=metadata, timeout=10))
            got.append(await calls[0])
        else:
            calls.append(stub.Chat(requests(), metadata=metadata, timeout=10))
            got.extend([m async for m in calls[0]])
    except grpc.aio.AioRpcError as err:
        return Result(err.code(), got, err)
    return Result(grpc.StatusCode.OK, got)


class Client:
    """Calls one server; ``servicer.ran`` counts how often each behaviour really ran."""

    def __init__(self, stub: Any, servicer: Any, aio: bool) -> None:
        self.stub, self.servicer, self.aio = stub, servicer, aio

    async def call(self, method: str = "GetCart", **metadata: str) -> Result:
        md = tuple((k.replace("_", "-"), v) for k, v in metadata.items())
        if self.aio:
            return await aio_call(self.stub, method, md)
        return sync_call(self.stub, method, md)


Serve = Callable[..., Awaitable[Client]]


@pytest.fixture(params=["sync", "aio"])
async def serve(request: pytest.FixtureRequest) -> AsyncIterator[Serve]:
    """Start a server of the parametrized kind with a rate limit interceptor; close all after."""
    cleanups: list[Callable[[], Awaitable[None] | None]] = []

    async def start(limits: Any = None, *, limiter: Limiter | None = None, servicer: Any = None,
                    **options: Any) -> Client:  # fmt: skip
        limiter = limiter or Limiter(clock=FakeClock(T0))
        if request.param == "sync":
            servicer = servicer or SyncCart()
            pool = ThreadPoolExecutor(max_workers=8)
            server = grpc.server(pool, interceptors=[RateLimitInterceptor(limiter, limits, **options)])
            shop_pb2_grpc.add_CartServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")

            def stop() -> None:
                channel.close()
                server.stop(None).wait()
                pool.shutdown()

            cleanups.append(stop)
            return Client(shop_pb2_grpc.CartStub(channel), servicer, aio=False)
        servicer = servicer or AioCart()
        pool = ThreadPoolExecutor(max_workers=4)  # for sync behaviours on the aio server
        aserver = grpc.aio.server(pool, interceptors=[AsyncRateLimitInterceptor(limiter, limits, **options)])
        shop_pb2_grpc.add_CartServicer_to_server(servicer, aserver)
        port = aserver.add_insecure_port("127.0.0.1:0")
        await aserver.start()
        achannel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        async def astop() -> None:
            await achannel.close()
            await aserver.stop(None)
            await asyncio.to_thread(pool.shutdown)  # its threads may still need the loop

        cleanups.append(astop)
        return Client(shop_pb2_grpc.CartStub(achannel), servicer, aio=True)

    yield start
    for cleanup in reversed(cleanups):
        pending = cleanup()
        if pending is not None:
            await pending


def rich(result: Result) -> tuple[Any, list[Any]]:
    """The google.rpc.Status of a failed call and its unpacked details."""
    status = rpc_status.from_call(result.error)
    assert status is not None
    unpacked = []
    for any_detail in status.details:
        for cls in (error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure):
            if any_detail.Is(cls.DESCRIPTOR):
                msg = cls()
                any_detail.Unpack(msg)
                unpacked.append(msg)
    return status, unpacked


# -- denials --------------------------------------------------------------------------------


async def test_allowed_then_resource_exhausted(serve: Serve) -> None:
    """Calls pass until the limit, then end with RESOURCE_EXHAUSTED and the retry trailers."""
    client = await serve({"/shop.Cart/GetCart": "2/minute"})
    assert [(await client.call()).code for _ in range(2)] == [grpc.StatusCode.OK] * 2
    denied = await client.call()
    assert denied.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = denied.trailers
    seconds, pushback = int(trailers["retry-after"]), int(trailers["grpc-retry-pushback-ms"])
    assert seconds >= 1 and (seconds - 1) * 1000 < pushback <= seconds * 1000
    assert denied.details == f"rate limit exceeded; retry after {seconds} s"
    assert trailers["ratelimit-policy"] == '"shop.Cart.GetCart";q=2;w=60'
    assert trailers["ratelimit"] == f'"shop.Cart.GetCart";r=0;t={seconds}'
    assert not any(k.startswith("x-ratelimit") for k in trailers)
    assert client.servicer.ran["GetCart"] == 2


async def test_rich_status_details(serve: Serve) -> None:
    """grpc-status-details-bin holds RetryInfo (the pushback) and QuotaFailure naming the policy."""
    client = await serve({"/shop.Cart/GetCart": "1/second;100/minute"})
    await client.call()
    denied = await client.call()
    status, details = rich(denied)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED and status.message == denied.details
    retry = next(d for d in details if isinstance(d, error_details_pb2.RetryInfo))
    quota = next(d for d in details if isinstance(d, error_details_pb2.QuotaFailure))
    assert retry.retry_delay.ToMilliseconds() == int(denied.trailers["grpc-retry-pushback-ms"])
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("shop.Cart.GetCart-1s", "at most 1 calls per 1 s")
    ]


@pytest.mark.parametrize("method", METHODS)
async def test_every_arity_allowed_then_denied_before_any_message(serve: Serve, method: str) -> None:
    """Each arity works when allowed; when denied the behaviour never runs and no message is sent."""
    client = await serve({"/shop.Cart/*": "1/minute"})
    ok = await client.call(method)
    assert ok.code == grpc.StatusCode.OK and len(ok.messages) == EXPECTED_MESSAGES[method]
    denied = await client.call(method)
    assert denied.code == grpc.StatusCode.RESOURCE_EXHAUSTED and denied.messages == []
    assert "retry-after" in denied.trailers and rich(denied)[1]
    assert client.servicer.ran[method] == 1


async def test_unmatched_methods_are_untouched(serve: Serve) -> None:
    """Methods no rule matches are never counted or limited."""
    client = await serve({"/shop.Cart/GetCart": "1/minute"})
    for _ in range(3):
        result = await client.call("WatchCart")
        assert result.code == grpc.StatusCode.OK and len(result.messages) == 3
    assert (await client.call()).code == grpc.StatusCode.OK
    assert (await client.call()).code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_config_file_rules_with_metadata_conditions_and_reload(serve: Serve, tmp_path: Path) -> None:
    """A Limiter.from_config limiter needs no limits: its gRPC rules apply, metadata conditions
    are checked per call, and a reload changes the limits the interceptor enforces."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "identity: {claim_headers: {sub: x-user-id}}\n"
        "rules:\n"
        "  - {name: cart, match: {grpc: {service: shop.Cart, method: GetCart}}, key: claim:sub, limits: 2/minute}\n"  # noqa: E501
        "  - name: beta\n"
        "    match: {grpc: {service: shop.Cart, method: GetCart}, headers: {x-beta: '1'}}\n"
        "    limits: 1/minute\n"
    )
    limiter = Limiter.from_config(path, reload=False, clock=FakeClock(T0))
    client = await serve(limiter=limiter)
    assert (await client.call(x_user_id="ann")).code == grpc.StatusCode.OK
    assert (await client.call(x_user_id="ann", x_beta="1")).code == grpc.StatusCode.OK
    # The beta rule (1/minute, shared) now denies beta calls, but not plain ones.
    assert (await client.call(x_user_id="bob", x_beta="1")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.call(x_user_id="bob")).code == grpc.StatusCode.OK
    assert (await client.call(x_user_id="ann")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    path.write_text(
        "identity: {claim_headers: {sub: x-user-id}}\n"
        "rules: [{name: cart, match: {grpc: {service: shop.Cart}}, key: claim:sub, limits: 4/minute}]\n"
    )
    assert limiter.reload_config()
    assert (await client.call(x_user_id="ann")).code == grpc.StatusCode.OK  # 3 of 4 on the same counter
    assert (await client.call("WatchCart", x_user_id="ann")).code == grpc.StatusCode.OK  # now matched too
    assert (await client.call(x_user_id="ann")).code == grpc.StatusCode.RESOURCE_EXHAUSTED


def handler_call_details(method: str) -> Any:
    return type("Details", (), {"method": method, "invocation_metadata": ()})()


async def test_unmatched_handler_is_returned_as_is() -> None:
    """For an unmatched method intercept_service returns the very handler it got (no wrapper)."""
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: r)
    sync = RateLimitInterceptor(Limiter(), {"/shop.Cart/GetCart": "1/second"})
    assert sync.intercept_service(lambda d: handler, handler_call_details("/other.Svc/Get")) is handler
    assert (
        sync.intercept_service(lambda d: handler, handler_call_details("/shop.Cart/GetCart")) is not handler
    )
    assert sync.intercept_service(lambda d: None, handler_call_details("/shop.Cart/GetCart")) is None

    async def continuation(details: Any) -> Any:
        return handler

    aio = AsyncRateLimitInterceptor(Limiter(), {"/shop.Cart/GetCart": "1/second"})
    assert await aio.intercept_service(continuation, handler_call_details("/other.Svc/Get")) is handler


# -- identities -----------------------------------------------------------------------------


async def test_tenants_are_counted_apart(serve: Serve) -> None:
    """With key=header("x-tenant") each tenant has its own bucket."""
    client = await serve({"/shop.Cart/*": "1/minute"}, key=header("x-tenant"))
    assert (await client.call(x_tenant="acme")).code == grpc.StatusCode.OK
    assert (await client.call(x_tenant="acme")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.call(x_tenant="globex")).code == grpc.StatusCode.OK


async def test_missing_identity_reject(serve: Serve) -> None:
    """Under missing_identity="reject" a call without identity is UNAUTHENTICATED, not counted."""
    client = await serve({"/shop.Cart/*": "1/minute"}, key=header("x-tenant"), missing_identity="reject")
    for method in METHODS:
        result = await client.call(method)
        assert result.code == grpc.StatusCode.UNAUTHENTICATED and result.messages == []
    assert (await client.call(x_tenant="acme")).code == grpc.StatusCode.OK
    assert sum(client.servicer.ran.values()) == 1


async def test_default_key_is_the_peer_ip(serve: Serve) -> None:
    """Without key= calls are counted per peer address; a metadata-only change does not escape."""
    client = await serve({"/shop.Cart/*": "1/minute"})
    assert (await client.call(x_forwarded_for="1.2.3.4")).code == grpc.StatusCode.OK
    assert (await client.call(x_forwarded_for="5.6.7.8")).code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_failing_key_function_counts_as_missing_identity(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A key function that raises is logged and the call is counted per peer IP instead."""

    def broken(request: Any) -> str:
        raise RuntimeError("bug in key function")

    client = await serve({"/shop.Cart/*": "1/minute"}, key=broken)
    with caplog.at_level(logging.ERROR, logger="ratelimit"):
        assert (await client.call()).code == grpc.StatusCode.OK
        assert (await client.call()).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert any("key function" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes, bytes]:
    """(private PEM, public PEM, an unrelated private PEM) for RS256 tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def private() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    real, other = private(), private()
    public = real.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem(real), public, pem(other)


async def test_jwt_subject_and_forged_tokens(serve: Serve, rsa_keys: tuple[bytes, bytes, bytes]) -> None:
    """Verified subjects have their own buckets; a forged token is counted per peer IP, not as its subject."""
    jwt = pytest.importorskip("jwt")
    from ratelimit.keys import jwt_subject

    private, public, attacker = rsa_keys

    def bearer(sub: str, key: bytes = private) -> str:
        token = jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, key, algorithm="RS256")
        return f"Bearer {token}"

    client = await serve({"/shop.Cart/*": "2/minute"}, key=jwt_subject(key=public))
    assert (await client.call(authorization=bearer("alice"))).code == grpc.StatusCode.OK
    forged = bearer("alice", attacker)
    assert (await client.call(authorization=forged)).code == grpc.StatusCode.OK
    assert (await client.call(authorization=forged)).code == grpc.StatusCode.OK
    assert (await client.call(authorization=forged)).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The three forged calls went to the peer's bucket: alice still has one call left.
    assert (await client.call(authorization=bearer("alice"))).code == grpc.StatusCode.OK
    assert (await client.call(authorization=bearer("alice"))).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.call(authorization=bearer("bob"))).code == grpc.StatusCode.OK


# -- configuration, backends, the sync-behaviour path of grpc.aio ------------------------------


async def test_explicit_rules_and_metrics(serve: Serve) -> None:
    """rules= works beside limits=, each rule with its own key, and metrics see adapter "grpc"."""
    seen: list[tuple[str, str, str]] = []

    class Recorder:
        def decision(self, rule: str, result: str, adapter: str) -> None:
            seen.append((rule, result, adapter))

    client = await serve(
        {"/shop.Cart/WatchCart": "5/minute"},
        rules=[Rule.of("carts", "1/minute", header("x-tenant"), paths="/shop.Cart/GetCart")],
        metrics=Recorder(),
    )
    assert (await client.call(x_tenant="a")).code == grpc.StatusCode.OK
    assert (await client.call(x_tenant="a")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.call("WatchCart")).code == grpc.StatusCode.OK
    assert seen == [
        ("carts", "allowed", "grpc"),
        ("carts", "denied", "grpc"),
        ("shop.Cart.WatchCart", "allowed", "grpc"),
    ]


class DownBackend(SyncBackend):
    name = "down"

    def evaluate(self, plan: Any) -> Any:
        raise BackendError("redis is down")

    def delete(self, keys: Any, prefixes: Any) -> int:
        raise BackendError("redis is down")

    def refund(self, plan: Any, nows: Any) -> None:
        raise BackendError("redis is down")


@pytest.mark.parametrize(("mode", "code"), [("open", "OK"), ("closed", "RESOURCE_EXHAUSTED")])
async def test_backend_down_follows_failure_mode(serve: Serve, mode: Any, code: str) -> None:
    """A failing backend never crashes a call: fail open lets it through, fail closed denies it cleanly."""
    limiter = Limiter(DownBackend(), failure_mode=mode, closed_retry_after=2.5)
    client = await serve({"/shop.Cart/*": "100/second"}, limiter=limiter)
    result = await client.call("Chat")
    assert result.code == getattr(grpc.StatusCode, code)
    if mode == "closed":
        assert result.trailers["grpc-retry-pushback-ms"] == "2500" and result.trailers["retry-after"] == "3"


async def test_aio_server_with_sync_behaviours() -> None:
    """On grpc.aio.server, sync behaviours (run in its thread pool) are limited like async ones."""
    pool = ThreadPoolExecutor(max_workers=4)
    servicer = SyncCart()
    limits = {f"/shop.Cart/{m}": "1/minute" for m in METHODS}
    interceptor = AsyncRateLimitInterceptor(Limiter(clock=FakeClock(T0)), limits)
    server = grpc.aio.server(pool, interceptors=[interceptor])
    shop_pb2_grpc.add_CartServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = shop_pb2_grpc.CartStub(channel)
            for method in METHODS:
                ok = await aio_call(stub, method, ())
                assert ok.code == grpc.StatusCode.OK and len(ok.messages) == EXPECTED_MESSAGES[method]
            for method in METHODS:
                denied = await aio_call(stub, method, ())
                assert denied.code == grpc.StatusCode.RESOURCE_EXHAUSTED and denied.messages == []
                assert rich(denied)[1] and "grpc-retry-pushback-ms" in denied.trailers
            assert servicer.ran == Counter(dict.fromkeys(METHODS, 1))
    finally:
        await server.stop(None)
        await asyncio.to_thread(pool.shutdown)  # its threads may still need the loop


# -- small pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.1.2.3:5678", "10.1.2.3"),
        ("ipv6:[::1]:5678", "::1"),
        ("ipv6:%5B::1%5D:5678", "::1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:80", "fe80::1%eth0"),
        ("unix:/tmp/grpc.sock", None),
        ("unix-abstract:x", None),
        ("", None),
        (None, None),
    ],
)
def test_peer_ip(peer: str | None, ip: str | None) -> None:
    """Peer strings of every transport yield the IP address, or None when there is none."""
    assert peer_ip(peer) == ip


def test_rule_names_from_patterns() -> None:
    """limits= patterns become valid, unique rule names."""
    assert rule_name("/shop.Cart/*") == "shop.Cart.all"
    assert rule_name("/shop.Cart/GetCart") == "shop.Cart.GetCart"
    assert rule_name("/shop.*/**") == "shop.all.all"
    interceptor = RateLimitInterceptor(
        Limiter(),
        {"/shop.Cart/*": "1/second", "re:/shop.Cart/.*": "2/second"},
        rules=[Rule.of("shop.Cart.all", "3/second")],
    )
    names = [r.name for r in interceptor.rules]
    assert names == ["shop.Cart.all-2", "shop.Cart.all-3", "shop.Cart.all"]
    with pytest.raises(ValueError):
        RateLimitInterceptor(Limiter())
