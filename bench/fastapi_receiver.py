"""The webhook receiver as a Python team would write it: FastAPI + aiokafka, a baseline.

``python -m bench.fastapi_receiver BOOTSTRAP TOPIC PORT SECRET``

FastAPI under uvicorn (one worker, its defaults), an idempotent ``acks=all`` aiokafka producer
at its defaults: ``POST /webhooks/hitl`` checks the ``X-HITL-Signature-256`` HMAC of the body,
reads the request id (``data.request.id``, or ``data.id``/``request_id``), and answers 200
only after ``send_and_wait`` put the body on TOPIC keyed by the request id (durable before
the answer, as the connector's gateway); 401 for a bad signature, 400 for a body without a
request id. ``GET /readyz`` answers 200 once the producer started. Not part of the
connector; runs in the bench's baseline environment (the ``bench`` extra).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime
# (`Request` is imported inside main).
import contextlib
import hashlib
import hmac
import sys
from collections.abc import AsyncIterator
from typing import Any


def request_id_of(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if isinstance(data, dict):
        request = data.get("request")
        if isinstance(request, dict) and isinstance(request.get("id"), str):
            return str(request["id"])
        if isinstance(data.get("id"), str):
            return str(data["id"])
    rid = body.get("request_id")
    return rid if isinstance(rid, str) else None


def main(argv: list[str]) -> None:
    import orjson
    import uvicorn
    from aiokafka import AIOKafkaProducer
    from fastapi import FastAPI, Request, Response

    bootstrap, topic, port, secret = argv[0], argv[1], int(argv[2]), argv[3].encode()
    producer: Any = None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal producer
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            yield
        finally:
            await producer.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/webhooks/hitl")
    async def webhook(request: Request) -> Response:
        raw = await request.body()
        given = request.headers.get("x-hitl-signature-256", "").removeprefix("sha256=")
        expected = hmac.new(secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            return Response(status_code=401)
        try:
            rid = request_id_of(orjson.loads(raw))
        except orjson.JSONDecodeError:
            rid = None
        if rid is None:
            return Response(status_code=400)
        await producer.send_and_wait(topic, raw, key=rid.encode())
        return Response(status_code=200)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
