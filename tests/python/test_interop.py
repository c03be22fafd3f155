"""Interoperability with Python's grpcio, an independent gRPC implementation.

Run by .ci/run, which builds the stubs with grpcio-tools (protoc) from the project's protos,
starts `examples/interop-server.rs`, and sets:

- MESHLESS_INTEROP_TARGET: host:port of that server;
- MESHLESS_INTEROP_CLIENT: path of the built `examples/interop-client.rs`.
"""

import os
import subprocess
import time
import uuid
from concurrent import futures

import grpc
import pytest

from meshless.v1 import meshless_pb2, meshless_pb2_grpc
from testing.v1 import orders_pb2, orders_pb2_grpc
from testing.v1 import echo_pb2, echo_pb2_grpc

TARGET = os.environ["MESHLESS_INTEROP_TARGET"]
METADATA_FIELD = 536870000


@pytest.fixture(scope="module")
def stub():
    with grpc.insecure_channel(TARGET) as channel:
        yield echo_pb2_grpc.EchoStub(channel)


def test_unary_call(stub):
    assert stub.Unary(echo_pb2.EchoRequest(message="hello")).message == "hello"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_status_codes_and_messages(stub, code):
    with pytest.raises(grpc.RpcError) as failure:
        stub.Unary(echo_pb2.EchoRequest(message="boom", fail_with_code=code.value[0]))
    assert failure.value.code() == code
    assert failure.value.details() == "failed as asked: boom"


def test_custom_metadata_ascii_and_binary(stub):
    _, call = stub.Unary.with_call(
        echo_pb2.EchoRequest(message="meta"),
        metadata=[("x-request-id", "req-7"), ("x-trace-bin", b"\x00\x9f\xff")],
    )
    received = dict(call.initial_metadata())
    assert received["x-request-id"] == "req-7"
    assert received["x-trace-bin"] == b"\x00\x9f\xff"


def test_empty_and_large_messages(stub):
    assert stub.Unary(echo_pb2.EchoRequest()) == echo_pb2.EchoReply()
    reply = stub.Unary(echo_pb2.EchoRequest(payload=b"\x07" * 271828, reply_size=314159))
    assert len(reply.payload) == 314159


def test_streaming_shapes(stub):
    assert [r.message for r in stub.ServerStream(echo_pb2.EchoRequest(message="abc"))] == ["a", "b", "c"]
    requests = iter([echo_pb2.EchoRequest(message="one"), echo_pb2.EchoRequest(message="two")])
    assert stub.ClientStream(requests).message == "one two"


def test_unknown_method_and_service_are_unimplemented():
    with grpc.insecure_channel(TARGET) as channel:
        for path in ["/testing.v1.Echo/NoSuchMethod", "/no.such.v1.Service/Method"]:
            with pytest.raises(grpc.RpcError) as failure:
                channel.unary_unary(path)(b"")
            assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


def metadata_of(event):
    """The EventMetadata in the unknown field METADATA_FIELD of a serialized event."""
    data = event.SerializeToString()
    metadata = meshless_pb2.EventMetadata()
    found = False
    i = 0

    def varint():
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == 2:
            length = varint()
            if field == METADATA_FIELD:
                metadata.MergeFromString(data[i : i + length])
                found = True
            i += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    assert found, "the event carries its metadata field"
    return metadata


def test_an_event_stream_is_a_stream_of_the_declared_message(stub):
    run = uuid.uuid4().hex[:8]
    sent = [f"{run}-{i}" for i in range(5)]
    for message in sent:
        stub.Unary(echo_pb2.EchoRequest(message=message))

    stream = stub.Echoed(meshless_pb2.Subscribe())
    received = []
    try:
        for event in stream:
            assert isinstance(event, echo_pb2.EchoedEvent)
            if event.message.startswith(run):
                received.append((event.message, metadata_of(event)))
            if len(received) == len(sent):
                break
    finally:
        stream.cancel()

    assert [message for message, _ in received] == sent, "in publish order"
    sequences = [metadata.sequence for _, metadata in received]
    assert sequences == list(range(sequences[0], sequences[0] + len(sent)))
    assert all(metadata.epoch != 0 and metadata.published_at_unix_micros > 0 for _, metadata in received)


def test_a_grpcio_client_subscribes_with_a_filter_the_producer_evaluates(stub):
    run = uuid.uuid4().hex[:8]
    wanted = [f"{run}-keep-1", f"{run}-keep-2"]
    for message in [f"{run}-drop-1", wanted[0], f"{run}-drop-2", wanted[1], f"{run}-drop-3"]:
        stub.Unary(echo_pb2.EchoRequest(message=message))

    condition = meshless_pb2.FieldFilter(
        path="message", any_of=[meshless_pb2.FilterValue(text=text) for text in wanted]
    )
    stream = stub.Echoed(
        meshless_pb2.Subscribe(filter=meshless_pb2.Filter(all_of=[condition])), timeout=30
    )
    received = []
    try:
        for event in stream:
            received.append(event.message)
            if len(received) == len(wanted):
                break
    finally:
        stream.cancel()
    assert received == wanted, "only the matching events, in publish order"

    # A path the event does not have is refused when subscribing, saying why.
    wrong = meshless_pb2.FieldFilter(path="mesage", any_of=[meshless_pb2.FilterValue(text="x")])
    with pytest.raises(grpc.RpcError) as error:
        next(iter(stub.Echoed(meshless_pb2.Subscribe(filter=meshless_pb2.Filter(all_of=[wrong])), timeout=30)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no field `mesage`" in error.value.details()


def test_a_grpcio_client_is_a_consumer_group_member(stub):
    run = uuid.uuid4().hex[:8]
    sent = [f"{run}-{i}" for i in range(3)]
    for message in sent:
        stub.Unary(echo_pb2.EchoRequest(message=message))

    with grpc.insecure_channel(TARGET) as channel:
        groups = meshless_pb2_grpc.EventGroupsStub(channel)
        group, member = f"py-{run}", "member-1"
        # A window of one: every event after the first arrives only once the one before it is
        # acknowledged.
        stream = stub.Echoed(
            meshless_pb2.Subscribe(group=group, member=member, max_unacknowledged=1)
        )
        received = []
        for event in stream:
            metadata = metadata_of(event)
            assert metadata.delivery_count == 1
            if event.message.startswith(run):
                received.append(event.message)
            handled = meshless_pb2.Cursor(epoch=metadata.epoch, sequence=metadata.sequence)
            reply = groups.Acknowledge(
                meshless_pb2.Acknowledgement(
                    rpc="/testing.v1.Echo/Echoed", group=group, member=member, handled=handled
                )
            )
            assert reply.unacknowledged <= 1
            if len(received) == len(sent):
                break
        assert received == sent

        with pytest.raises(grpc.RpcError) as error:
            groups.Acknowledge(
                meshless_pb2.Acknowledgement(
                    rpc="/testing.v1.Echo/Echoed", group="no-such-group", member=member, handled=handled
                )
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error.value.details()

        # Leaving ends the member's stream.
        groups.Acknowledge(
            meshless_pb2.Acknowledgement(
                rpc="/testing.v1.Echo/Echoed", group=group, member=member, handled=handled, leave=True
            )
        )
        assert list(stream) == []


def test_a_grpcio_member_gets_one_event_per_key_at_a_time_and_acknowledges_each(stub):
    run = uuid.uuid4().hex[:8]
    first, second = f"{run}-a", f"{run}-b"
    with grpc.insecure_channel(TARGET) as channel:
        orders = orders_pb2_grpc.OrdersStub(channel)
        groups = meshless_pb2_grpc.EventGroupsStub(channel)
        group, member = f"py-keys-{run}", "member-1"
        # Only this test publishes orders on the server: the group, starting at the oldest event
        # retained, gets exactly these three changes, whenever the subscription arrives.
        stream = orders.OrderChanged(
            meshless_pb2.Subscribe(group=group, member=member, max_unacknowledged=10)
        )
        for order, step in [(first, 0), (first, 1), (second, 0)]:
            reply = orders.Change(
                orders_pb2.ChangeRequest(order=orders_pb2.Order(id=order), step=step)
            )
            assert reply.served_by == "interop-server"
        events = iter(stream)

        def next_event():
            event = next(events)
            metadata = metadata_of(event)
            # The key travels in the metadata, as the order id's bytes.
            assert metadata.key == event.order.id.encode()
            return event, metadata

        # The second change of the first order waits for the first to be acknowledged, though
        # the window has room; the other order's does not wait.
        got = [next_event(), next_event()]
        assert [(e.order.id, e.step) for e, _ in got] == [(first, 0), (second, 0)]
        cursor = lambda m: meshless_pb2.Cursor(epoch=m.epoch, sequence=m.sequence)
        # Acknowledged alone, out of delivery order: only its key moves on, at once (the second
        # order's event and the first's next are now out).
        reply = groups.Acknowledge(
            meshless_pb2.Acknowledgement(
                rpc="/testing.orders.v1.Orders/OrderChanged",
                group=group,
                member=member,
                handled_each=[cursor(got[0][1])],
            )
        )
        assert reply.unacknowledged == 2
        event, metadata = next_event()
        assert (event.order.id, event.step) == (first, 1)
        groups.Acknowledge(
            meshless_pb2.Acknowledgement(
                rpc="/testing.orders.v1.Orders/OrderChanged",
                group=group,
                member=member,
                handled_each=[cursor(got[1][1]), cursor(metadata)],
                leave=True,
            )
        )
        assert list(events) == []


class PythonEcho(echo_pb2_grpc.EchoServicer):
    def Unary(self, request, context):
        if request.fail_with_code:
            code = next(c for c in grpc.StatusCode if c.value[0] == request.fail_with_code)
            context.abort(code, f"python failed: {request.message}")
        echoed = tuple((key, value) for key, value in context.invocation_metadata() if key.startswith("x-"))
        context.send_initial_metadata(echoed)
        return echo_pb2.EchoReply(message=f"python: {request.message}", payload=b"y" * request.reply_size)


def test_the_meshless_client_calls_a_grpcio_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    echo_pb2_grpc.add_EchoServicer_to_server(PythonEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = subprocess.run(
            [os.environ["MESHLESS_INTEROP_CLIENT"], "--target", f"ipv4:127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        server.stop(grace=None)


class SilentEcho(PythonEcho):
    """Answers `ServerStream` after as many seconds of silence as its message says."""

    def ServerStream(self, request, context):
        time.sleep(float(request.message))
        yield echo_pb2.EchoReply(message="done")


# The ping policy of every gRPC server by default (C-core, Go, Java): at most one ping per
# 5 minutes while calls are open, none without calls, GOAWAY `too_many_pings` after 2 strikes.
# Scaled down 100 times, as are the client's intervals below.
SCALE = 100
DEFAULT_MIN_PING_INTERVAL_MS = 300_000
MESHLESS_DEFAULT_KEEPALIVE_MS = 300_000


def run_keepalive_client(interval_ms):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.http2.min_ping_interval_without_data_ms", DEFAULT_MIN_PING_INTERVAL_MS // SCALE),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_ping_strikes", 2),
        ],
    )
    echo_pb2_grpc.add_EchoServicer_to_server(SilentEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        return subprocess.run(
            [
                os.environ["MESHLESS_INTEROP_CLIENT"],
                "--target",
                f"ipv4:127.0.0.1:{port}",
                "--keepalive-interval-ms",
                str(interval_ms),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop(grace=None)


def test_the_meshless_client_s_default_keepalive_is_within_a_grpc_server_s_ping_policy():
    result = run_keepalive_client(MESHLESS_DEFAULT_KEEPALIVE_MS // SCALE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_client_pinging_too_often_is_sent_away_by_that_policy():
    # The control: the policy is in force. 30 s, the old default, scaled the same way.
    result = run_keepalive_client(30_000 // SCALE)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "the silent call failed" in result.stderr, result.stderr
