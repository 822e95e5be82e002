"""OpenAI's Uploads API through the official SDK: a file larger than the single-request limit sent in parts (in
parallel, out of order), assembled in the order ``complete`` lists; byte count and md5 checked; cancel."""

from __future__ import annotations

import hashlib
import signal
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import sqlalchemy

from openft import tables

from tests.conftest import Server, _kill_trainers
from tests.helpers import chat_rows, jsonl

LIMIT = 2000
DATA = jsonl(chat_rows(60))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    data_dir = tmp_path_factory.mktemp("uploads")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)},
                    max_file_bytes=LIMIT, enable_scheduler=False).start()
    yield server
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def _create(client, size: int = len(DATA)):
    return client.uploads.create(bytes=size, filename="big.jsonl", mime_type="application/jsonl",
                                 purpose="fine-tune")


def _split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


def test_a_file_over_the_request_limit_goes_up_in_parts_with_upload_file_chunked(server):
    client = server.client()
    assert len(DATA) > 4 * LIMIT
    with pytest.raises(openai.APIStatusError) as err:  # too large for one request…
        client.files.create(file=("big.jsonl", DATA), purpose="fine-tune")
    assert err.value.status_code == 413
    upload = client.uploads.upload_file_chunked(file=DATA, filename="big.jsonl", bytes=len(DATA), part_size=LIMIT,
                                                mime_type="application/jsonl", purpose="fine-tune",
                                                md5=hashlib.md5(DATA).hexdigest())
    assert upload.status == "completed" and upload.file.bytes == len(DATA) and upload.file.filename == "big.jsonl"
    assert upload.expires_at == upload.created_at + 3600
    assert client.files.content(upload.file.id).content == DATA  # …but whole, in order, in parts
    assert client.files.retrieve(upload.file.id).purpose == "fine-tune"
    assert not list((server.data_dir / "blobs" / "uploads" / upload.id).glob("*"))  # parts removed


def test_parts_sent_in_parallel_and_out_of_order_are_assembled_in_the_order_listed(server):
    client = server.client()
    upload = _create(client)
    chunks = _split(DATA, 5)
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda c: client.uploads.parts.create(upload.id, data=c), reversed(chunks)))
    assert all(p.object == "upload.part" and p.upload_id == upload.id for p in parts)
    done = client.uploads.complete(upload.id, part_ids=[p.id for p in reversed(parts)])
    assert client.files.content(done.file.id).content == DATA
    with pytest.raises(openai.BadRequestError):  # a completed upload takes no more parts
        client.uploads.parts.create(upload.id, data=b"x")


def test_a_wrong_byte_count_or_md5_or_part_is_a_400_and_the_upload_stays_open(server):
    client = server.client()
    short = _create(client, len(DATA) + 1)
    part = client.uploads.parts.create(short.id, data=DATA)
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(short.id, part_ids=[part.id])
    assert err.value.param == "bytes" and str(len(DATA)) in err.value.message

    upload = _create(client)
    part = client.uploads.parts.create(upload.id, data=DATA)
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload.id, part_ids=[part.id], md5="0" * 32)
    assert err.value.param == "md5"
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload.id, part_ids=[part.id, "part_nope"])
    assert err.value.param == "part_ids[1]"
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=9 * 1024**3, filename="x.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    assert err.value.param == "bytes"
    assert client.uploads.complete(upload.id, part_ids=[part.id]).status == "completed"


def test_a_cancelled_upload_keeps_no_parts_and_takes_no_more(server):
    client = server.client()
    upload = _create(client)
    client.uploads.parts.create(upload.id, data=DATA[:100])
    folder = server.data_dir / "blobs" / "uploads" / upload.id
    assert len(list(folder.glob("*"))) == 1
    cancelled = client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    assert not list(folder.glob("*"))
    for call in (lambda: client.uploads.parts.create(upload.id, data=b"x"),
                 lambda: client.uploads.complete(upload.id, part_ids=[]),
                 lambda: client.uploads.cancel(upload.id)):
        with pytest.raises(openai.BadRequestError):
            call()
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_missing")


def test_an_upload_expires_an_hour_after_creation_and_its_parts_are_swept(server):
    from openft import uploads
    from openft.blobs import Blobs
    from openft.store import Store

    client = server.client()
    upload = _create(client)
    client.uploads.parts.create(upload.id, data=DATA[:100])
    store = Store(f"sqlite:///{server.data_dir / 'openft.db'}")
    with store.session.begin() as s:  # an hour later
        s.execute(sqlalchemy.update(tables.Upload).where(tables.Upload.id == upload.id)
                  .values(expires_at=upload.created_at - 1))
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.parts.create(upload.id, data=b"x")
    assert err.value.code == "upload_expired"
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload.id, part_ids=[])
    folder = server.data_dir / "blobs" / "uploads" / upload.id
    assert len(list(folder.glob("*"))) == 1
    uploads.sweep_expired(store, Blobs(str(server.data_dir / "blobs")))  # what the scheduler's tick runs
    assert not list(folder.glob("*"))
    assert store.get_upload(store_scope(), upload.id).status == "expired"
    store.engine.dispose()


def store_scope():
    from openft.store import Scope

    return Scope(org="org_local", user=None)
