#!/usr/bin/env python3
"""A real gRPC server and client (PyPI grpcio) for tests/http.rs.

No protobuf: the methods carry raw bytes (identity serializers), so the
test needs nothing generated.

  grpc_echo.py serve NAME          listens on 127.0.0.1:0, prints the port, serves:
    /echo.Echo/Unary       answers NAME + ":" + request; trailing metadata
                           `served-by: NAME`; a request "fail" gets NOT_FOUND
    /echo.Echo/Stream      a request "N" gets N messages "NAME:i"
    /echo.Echo/Bidi        echoes every message as NAME + ":" + message
  grpc_echo.py call ADDR CALLS     on one channel (one HTTP/2 connection):
                           CALLS unary calls, a stream of 5, a bidi of 3 and
                           one failing call; prints one JSON object (who
                           served each kind of call among it)
"""
import json
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(name):
    tag = name.encode()

    def unary(request, context):
        context.set_trailing_metadata((("served-by", name),))
        if request == b"fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return tag + b":" + request

    def stream(request, context):
        for i in range(int(request)):
            yield tag + b":" + str(i).encode()

    def bidi(requests, context):
        for r in requests:
            yield tag + b":" + r

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(addr, calls):
    # One channel, no per-call connections: everything below shares one
    # HTTP/2 connection to the client's proxy.
    channel = grpc.insecure_channel(addr, options=(("grpc.lb_policy_name", "pick_first"),))
    unary = channel.unary_unary("/echo.Echo/Unary", ident, ident)
    stream = channel.unary_stream("/echo.Echo/Stream", ident, ident)
    bidi = channel.stream_stream("/echo.Echo/Bidi", ident, ident)
    served = {}
    trailers_ok = 0
    for i in range(calls):
        reply, c = unary.with_call(b"hello" + str(i).encode(), timeout=20)
        who, _, rest = reply.decode().partition(":")
        assert rest == "hello" + str(i), reply
        served[who] = served.get(who, 0) + 1
        if dict(c.trailing_metadata()).get("served-by") == who:
            trailers_ok += 1
    streamed = [m.decode() for m in stream(b"5", timeout=20)]
    bidi_out = [m.decode() for m in bidi(iter([b"a", b"b", b"c"]), timeout=20)]
    try:
        unary(b"fail", timeout=20)
        failed = None
    except grpc.RpcError as e:
        failed = {"code": e.code().name, "details": e.details()}
    print(json.dumps({
        "served": served,
        "trailersOk": trailers_ok,
        "stream": [m.partition(":")[2] for m in streamed],
        "streamServedBy": sorted({m.partition(":")[0] for m in streamed}),
        "bidiServedBy": sorted({m.partition(":")[0] for m in bidi_out}),
        "bidi": [m.partition(":")[2] for m in bidi_out],
        "failed": failed,
    }), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], int(sys.argv[3]))
