"""A real WebSocket server and client (PyPI websockets) for tests/http.rs.

    ws_echo.py serve          echoes every message; prints its port
    ws_echo.py call URL N     N text messages then a 1 MiB binary one, each
                              checked against its echo; prints a JSON summary
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def server():
    async with serve(echo, "127.0.0.1", 0, max_size=None) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def call(url, n):
    got = {"text": 0, "binary": 0, "bytes": 0}
    async with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        for i in range(n):
            message = f"hello {i}"
            await ws.send(message)
            if await ws.recv() == message:
                got["text"] += 1
        big = bytes(i % 251 for i in range(1 << 20))
        await ws.send(big)
        back = await ws.recv()
        if back == big:
            got["binary"] += 1
            got["bytes"] += len(back)
    print(json.dumps(got), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(server())
    else:
        asyncio.run(call(sys.argv[2], int(sys.argv[3])))
