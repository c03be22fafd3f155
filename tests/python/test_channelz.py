"""meshless's gRPC channelz, read with grpcio's own channelz stubs (the `grpcio-channelz`
package): the server, its connections, and the calls made on them.

Run by .ci/run against `examples/interop-server.rs`, which serves channelz; see
test_interop.py for the environment.
"""

import os
import socket

import grpc
import pytest
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc

from testing.v1 import echo_pb2, echo_pb2_grpc

TARGET = os.environ["MESHLESS_INTEROP_TARGET"]


def test_channelz_lists_the_server_its_sockets_and_the_calls_made_on_them():
    with grpc.insecure_channel(TARGET) as channel:
        channelz = channelz_pb2_grpc.ChannelzStub(channel)
        echo = echo_pb2_grpc.EchoStub(channel)
        # Every call this channel makes goes over its one connection: `made` counts them.
        servers = channelz.GetServers(channelz_pb2.GetServersRequest())
        made = 1
        assert servers.end
        ours = [server for server in servers.server if server.ref.name == TARGET]
        assert len(ours) == 1, servers
        server = ours[0]
        assert server.ref.server_id > 0
        assert len(server.listen_socket) == 1
        before = server.data

        for i in range(3):
            echo.Unary(echo_pb2.EchoRequest(message=f"counted {i}"))
        with pytest.raises(grpc.RpcError) as failure:
            echo.Unary(
                echo_pb2.EchoRequest(
                    message="boom", fail_with_code=grpc.StatusCode.NOT_FOUND.value[0]
                )
            )
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
        made += 4

        servers = channelz.GetServers(channelz_pb2.GetServersRequest())
        made += 1
        after = [s for s in servers.server if s.ref.name == TARGET][0].data
        # Other clients may use the server meanwhile: at least ours are counted.
        assert after.calls_started - before.calls_started >= 5
        assert after.calls_succeeded - before.calls_succeeded >= 4
        assert after.calls_failed - before.calls_failed >= 1
        assert after.last_call_started_timestamp.seconds > 0

        sockets = channelz.GetServerSockets(
            channelz_pb2.GetServerSocketsRequest(server_id=server.ref.server_id)
        )
        made += 1
        assert sockets.end
        assert sockets.socket_ref
        # Ours is the socket that counts exactly our calls, this GetSocket included: started
        # and not yet ended, while every one before it ended with its status sent (NOT_FOUND
        # included: a socket's stream fails only when it is reset or dropped).
        found = []
        for ref in sockets.socket_ref:
            got = channelz.GetSocket(channelz_pb2.GetSocketRequest(socket_id=ref.socket_id))
            made += 1
            data = got.socket.data
            if data.streams_started == made:
                found.append((got.socket, data))
        assert len(found) == 1, f"no socket counted our {made} calls"
        ours, data = found[0]
        assert data.streams_succeeded == made - 1
        assert data.streams_failed == 0
        remote = ours.remote.tcpip_address
        assert socket.inet_ntop(socket.AF_INET, remote.ip_address) == "127.0.0.1"
        assert remote.port > 0
        local = ours.local.tcpip_address
        assert local.port == int(TARGET.rsplit(":", 1)[1])

        alone = channelz.GetServer(
            channelz_pb2.GetServerRequest(server_id=server.ref.server_id)
        )
        assert alone.server.ref == server.ref

        listen = channelz.GetSocket(
            channelz_pb2.GetSocketRequest(socket_id=server.listen_socket[0].socket_id)
        )
        assert listen.socket.local.tcpip_address.port == local.port

        with pytest.raises(grpc.RpcError) as missing:
            channelz.GetSocket(channelz_pb2.GetSocketRequest(socket_id=1 << 50))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
