"""The live event stream of a job (an extension): its events as Server-Sent Events, read from the database.

Events are polled from the database, not taken from process memory, so any API replica can serve a stream. Each
poll is a short read in a worker thread; between polls the stream waits on the event loop, so an open stream holds
no thread. The stream ends, after every event has been sent, once the job is terminal or paused.

PostgreSQL may make an event visible after one with a higher ``seq`` (concurrent transactions commit in any
order), so the cursor lags: rows up to ``LAG_SECONDS`` behind the newest one sent are read again and the ones
already sent skipped. Each event is sent once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio

from openft import jobs
from openft.store import Store

KEEP_ALIVE_SECONDS = 15.0
LAG_SECONDS = 5.0
PAGE = 500
ENDS = jobs.TERMINAL | {"paused"}


def frame(event) -> str:
    """One event as an SSE frame whose data is the JSON object the list route returns for it."""
    data = jobs.event_to_wire(event).model_dump_json()
    return f"id: {event.id}\nevent: fine_tuning.job.event\ndata: {data}\n\n"


async def job_events(store: Store, job_id: str, after: str | None, poll_seconds: float) -> AsyncIterator[str]:
    cursor = await anyio.to_thread.run_sync(store.event_seq, job_id, after) if after else 0
    sent: dict[str, tuple[int, float]] = {}  # event id → (seq, when sent), for the lagging re-read
    last_write = time.monotonic()
    while True:
        status = await anyio.to_thread.run_sync(store.job_status, job_id)
        # The status is read first: every event committed before it is then in this read.
        position, full = cursor, True
        while full:
            rows = await anyio.to_thread.run_sync(store.events_after, job_id, position, PAGE)
            full, now = len(rows) == PAGE, time.monotonic()
            for row in rows:
                if row.id not in sent:
                    sent[row.id] = (row.seq, now)
                    last_write = now
                    yield frame(row)
            position = rows[-1].seq if rows else position
        settled = [seq for seq, at in sent.values() if now - at > LAG_SECONDS]
        if settled:
            cursor = max(cursor, max(settled))
            sent = {k: v for k, v in sent.items() if v[0] > cursor}
        if status is None or status in ENDS:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if now - last_write >= KEEP_ALIVE_SECONDS:
            last_write = now
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_seconds)
