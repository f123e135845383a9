#!/usr/bin/env python3
"""An echo WebSocket server on the `websockets` library, which negotiates permessage-deflate
(RFC 7692) with its own defaults: server_max_window_bits=12, client_max_window_bits=12 when the
client offers it, and each side's context_takeover as the client asks.

Every frame is sent back as it came (text as text, binary as binary). For each connection a line
goes to `connections.log` in the working directory: the Sec-WebSocket-Extensions header of the
server's answer (empty when nothing was negotiated), so a test can see what was agreed.

usage: echo_server.py --port P [--no-compression]
"""
import argparse
import asyncio
import logging

import websockets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-compression", action="store_true")
    args = parser.parse_args()

    log = open("connections.log", "a", encoding="ascii", buffering=1)

    async def handler(ws):
        log.write(ws.response.headers.get("Sec-WebSocket-Extensions", "") + "\n")
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    # The test's readiness probe opens and closes a bare TCP connection: not worth a traceback.
    logging.getLogger("websockets.server").setLevel(logging.CRITICAL)

    async def serve():
        compression = None if args.no_compression else "deflate"
        async with websockets.serve(handler, "127.0.0.1", args.port, compression=compression,
                                    max_size=None):
            await asyncio.Future()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
