"""Trace context (W3C `traceparent`) between meshless and grpcio instrumented with OpenTelemetry
(`opentelemetry-instrumentation-grpc` from PyPI), both ways.

Run by .ci/run beside test_interop.py, with the same environment: MESHLESS_INTEROP_TARGET (the
meshless `interop-server`, which answers the message `trace-id?` with the trace id of the span
that served it) and MESHLESS_INTEROP_CLIENT (the meshless `interop-client`).
"""

import os
import subprocess
from concurrent import futures

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.sdk.trace import TracerProvider

from testing.v1 import echo_pb2, echo_pb2_grpc

TARGET = os.environ["MESHLESS_INTEROP_TARGET"]
PROVIDER = TracerProvider()


def trace_id_hex(span):
    return format(span.get_span_context().trace_id, "032x")


def test_a_grpcio_client_s_trace_continues_in_the_meshless_server():
    tracer = PROVIDER.get_tracer("interop")
    interceptor = client_interceptor(tracer_provider=PROVIDER)
    with grpc.insecure_channel(TARGET) as channel:
        # The instrumentation's own channel wrapper, as GrpcInstrumentorClient uses.
        stub = echo_pb2_grpc.EchoStub(intercept_channel(channel, interceptor))
        with tracer.start_as_current_span("python-client") as span:
            reply = stub.Unary(echo_pb2.EchoRequest(message="trace-id?"), timeout=10)
    assert reply.message == trace_id_hex(span)


def test_without_trace_context_the_meshless_server_starts_a_trace_of_its_own():
    with grpc.insecure_channel(TARGET) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        with PROVIDER.get_tracer("interop").start_as_current_span("not-sent") as span:
            reply = stub.Unary(echo_pb2.EchoRequest(message="trace-id?"), timeout=10)
    assert len(reply.message) == 32
    assert reply.message != trace_id_hex(span)
    assert reply.message != "0" * 32


class TraceIdEcho(echo_pb2_grpc.EchoServicer):
    """Answers with the trace id of the server span grpcio's instrumentation made."""

    def Unary(self, request, context):
        return echo_pb2.EchoReply(message=trace_id_hex(trace.get_current_span()))


def test_the_meshless_client_s_trace_continues_in_a_grpcio_server():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[server_interceptor(tracer_provider=PROVIDER)],
    )
    echo_pb2_grpc.add_EchoServicer_to_server(TraceIdEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = subprocess.run(
            [os.environ["MESHLESS_INTEROP_CLIENT"], "--target", f"ipv4:127.0.0.1:{port}", "--traced-call"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "client trace" in result.stdout
    finally:
        server.stop(grace=None)
