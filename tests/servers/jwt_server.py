#!/usr/bin/env python3
"""A WebSocket server that admits only users holding a valid JWT, verified by PyJWT.

Protocol (JSON text frames): the first frame must be {"type":"login","user":U,"token":T}; the
token must be signed with the server's key (HS256 secret or RS256 public key), carry `sub` = U,
`iat` and an `exp` in the future, else {"type":"error","reason":...} and close 4001. While
connected: {"type":"ping","ts":N} -> {"type":"pong","ts":N}; {"type":"refresh","token":T} ->
{"type":"refreshed"} once T verifies (same rules), which moves the connection's expiry to T's
`exp`. When the current token expires the server closes with 4002 "token expired".

usage: jwt_server.py --port P (--secret S | --public-key FILE)
"""
import argparse
import asyncio
import json
import logging
import time

import jwt
import websockets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret")
    parser.add_argument("--public-key")
    args = parser.parse_args()
    if args.secret:
        key, algorithm = args.secret, "HS256"
    else:
        with open(args.public_key, encoding="ascii") as f:
            key, algorithm = f.read(), "RS256"

    def verify(token, user):
        claims = jwt.decode(token, key, algorithms=[algorithm],
                            options={"require": ["exp", "iat", "sub"]})
        if claims["sub"] != user:
            raise jwt.InvalidTokenError(f"sub {claims['sub']!r} is not {user!r}")
        return claims

    async def handler(ws):
        try:
            login = json.loads(await asyncio.wait_for(ws.recv(), 5))
            user = login.get("user")
            expires = verify(login.get("token", ""), user)["exp"]
        except (jwt.InvalidTokenError, ValueError, KeyError, asyncio.TimeoutError) as err:
            await ws.send(json.dumps({"type": "error", "reason": str(err)}))
            await ws.close(4001, "bad token")
            return
        await ws.send(json.dumps({"type": "login_ok"}))
        while True:
            left = expires - time.time()
            if left <= 0:
                await ws.close(4002, "token expired")
                return
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            except asyncio.TimeoutError:
                continue
            except websockets.ConnectionClosed:
                return
            if frame.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong", "ts": frame.get("ts")}))
            elif frame.get("type") == "refresh":
                try:
                    expires = verify(frame.get("token", ""), user)["exp"]
                except jwt.InvalidTokenError as err:
                    await ws.send(json.dumps({"type": "error", "reason": str(err)}))
                    await ws.close(4001, "bad token")
                    return
                await ws.send(json.dumps({"type": "refreshed"}))

    # The test's readiness probe opens and closes a bare TCP connection: not worth a traceback.
    logging.getLogger("websockets.server").setLevel(logging.CRITICAL)

    async def serve():
        async with websockets.serve(handler, "127.0.0.1", args.port):
            await asyncio.Future()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
