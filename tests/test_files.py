"""Files API through the official openai SDK: upload, list, retrieve, content, delete, limits."""

from __future__ import annotations

import io

import openai
import pytest

from tests.helpers import chat_rows, jsonl, upload


@pytest.fixture
def api(make_server):
    return make_server(enable_scheduler="false", max_file_bytes=5000).start()


def test_uploaded_file_can_be_listed_retrieved_read_and_deleted(api):
    client = api.client()
    data = jsonl(chat_rows(3))
    created = client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.id.startswith("file_") and created.bytes == len(data) and created.purpose == "fine-tune"
    assert created.status == "processed" and created.filename == "train.jsonl"
    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).read() == data
    assert [f.id for f in client.files.list()] == [created.id]
    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_file_list_pages_with_after_limit_order_and_purpose(api):
    client = api.client()
    ids = [upload(client, chat_rows(1), f"f{i}.jsonl") for i in range(5)]
    client.files.create(file=("notes.txt", io.BytesIO(b"x")), purpose="assistants")
    page = client.files.list(limit=2, purpose="fine-tune")
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    assert [f.id for f in client.files.list(purpose="fine-tune", limit=2)] == ids[::-1]  # auto-paging follows `after`
    asc = client.files.list(order="asc", purpose="fine-tune", limit=3)
    assert [f.id for f in asc.data] == ids[:3]
    assert len(client.files.list().data) == 6


def test_upload_over_the_size_limit_is_refused_with_a_clear_error(api):
    with pytest.raises(openai.APIStatusError) as err:
        api.client().files.create(file=("big.jsonl", io.BytesIO(b"x" * 6000)), purpose="fine-tune")
    assert err.value.status_code == 413 and "5000 bytes" in err.value.message


@pytest.mark.parametrize(
    "name, purpose, param, words",
    [("t.jsonl", "fun", "purpose", "Invalid purpose"), ("t.csv", "fine-tune", "file", ".jsonl")],
)
def test_bad_upload_is_a_400_naming_the_field(api, name, purpose, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        api.client().files.create(file=(name, io.BytesIO(b"{}")), purpose=purpose)
    assert err.value.param == param and words in err.value.message
