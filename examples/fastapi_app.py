"""A FastAPI app on asyncpool: pool lifespan, a connection or transaction per request,
health endpoints, and cancelling handlers whose client went away.

    pip install "asyncpool[fastapi]" uvicorn
    python examples/fastapi_app.py

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one while it serves
(see examples/_database.py).

Then ``curl -X POST localhost:8000/notes -H 'content-type: application/json'
-d '{"text": "hi"}'``, ``curl localhost:8000/notes``, ``curl localhost:8000/readyz``.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from asyncpool.contrib.fastapi import (
    CancelOnDisconnect,
    ConnectionDep,
    TransactionDep,
    health_router,
    pool_lifespan,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS asyncpool_example_notes (
    id bigserial PRIMARY KEY,
    text text NOT NULL CHECK (text <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # Opens the pool at start-up (fails start-up if the database is unreachable; pass
    # degraded_ok=True to start anyway) and closes it gracefully at shutdown.
    pool_state = pool_lifespan(
        os.environ["ASYNCPOOL_DSN"],
        min_size=1,
        max_size=10,
        acquire_timeout=5,
        server_settings={"application_name": "asyncpool-example-api"},
    )
    async with pool_state(app) as state:
        async with state["pool"].acquire() as conn:
            await conn.execute(SCHEMA)
        yield state  # handlers see request.state.pool


app = FastAPI(title="asyncpool example", lifespan=lifespan)
app.add_middleware(CancelOnDisconnect)  # a client hang-up cancels its handler
app.include_router(health_router())  # GET /livez, GET /readyz


class NoteIn(BaseModel):
    # Validated before the handler runs: an empty note is a 422, not a CHECK violation
    # (a 500) from the database.
    text: str = Field(min_length=1)


class BatchNoteIn(BaseModel):
    text: str  # (checked in the handler, to show a batch rolled back as a whole)


class Note(BaseModel):
    id: int
    text: str


@app.get("/notes")
async def list_notes(conn: ConnectionDep, limit: int = 20) -> list[Note]:
    rows = await conn.fetch(
        "SELECT id, text FROM asyncpool_example_notes ORDER BY id DESC LIMIT $1", limit
    )
    return [Note(**dict(row)) for row in rows]


@app.get("/notes/{note_id}")
async def get_note(note_id: int, conn: ConnectionDep) -> Note:
    row = await conn.fetchrow("SELECT id, text FROM asyncpool_example_notes WHERE id = $1", note_id)
    if row is None:
        raise HTTPException(status_code=404, detail="no such note")
    return Note(**dict(row))


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, tx: TransactionDep) -> Note:
    # Committed when this returns (before the response is sent); rolled back if it raises.
    row = await tx.fetchrow(
        "INSERT INTO asyncpool_example_notes (text) VALUES ($1) RETURNING id, text", note.text
    )
    return Note(**dict(row))


@app.post("/notes/batch", status_code=201)
async def create_notes(notes: list[BatchNoteIn], tx: TransactionDep) -> list[Note]:
    """All or nothing: one bad note (empty text) rolls the whole batch back."""
    created = []
    for note in notes:
        if not note.text:
            raise HTTPException(status_code=422, detail="empty note; nothing was saved")
        row = await tx.fetchrow(
            "INSERT INTO asyncpool_example_notes (text) VALUES ($1) RETURNING id, text",
            note.text,
        )
        created.append(Note(**dict(row)))
    return created


if __name__ == "__main__":
    import uvicorn
    from _database import database

    with database():  # sets ASYNCPOOL_DSN, starting a throwaway server if it is unset
        uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
