"""The official `ollama` Python client against hyperllamad."""

import base64
import json

import httpx
import ollama
import pytest

from conftest import EMBED_MODEL, GGUF, HOST, MODEL, REGISTRY_MODEL, ROOT

GREEDY = {"temperature": 0, "num_predict": 6, "seed": 1}


def test_version_and_root():
    assert httpx.get(HOST + "/").text == "Ollama is running"
    assert isinstance(httpx.get(HOST + "/api/version").json()["version"], str)


def test_generate_streamed_and_not_agree(client):
    whole = client.generate(model=MODEL, prompt="Once upon a time", options=GREEDY)
    assert whole.done is True
    assert whole.done_reason == "length"
    assert whole.model == MODEL
    assert whole.eval_count == 6
    assert whole.prompt_eval_count > 0
    assert whole.total_duration >= whole.eval_duration > 0
    assert whole.prompt_eval_duration > 0
    assert isinstance(whole.response, str) and whole.response
    parts = list(client.generate(model=MODEL, prompt="Once upon a time", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done and parts[-1].done_reason == "length" and parts[-1].eval_count == 6
    assert parts[-1].created_at
    assert "".join(p.response for p in parts) == whole.response


def test_chat_streamed_and_not_agree(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    whole = client.chat(model=MODEL, messages=messages, options=GREEDY)
    assert whole.message.role == "assistant"
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 6
    assert whole.prompt_eval_count > 5, "the template wraps the messages"
    parts = list(client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 6
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_chat_format_schema_gives_valid_json(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Reply in JSON"}], format=schema,
                    options={"temperature": 0, "num_predict": 64})
    assert r.done_reason == "stop", r
    assert isinstance(json.loads(r.message.content)["ok"], bool)


def test_options_stop_and_keep_alive(client):
    r = client.generate(model=MODEL, prompt="abc", options={"temperature": 0, "num_predict": 3}, keep_alive="10m")
    assert r.eval_count == 3
    r = client.generate(model=MODEL, prompt="abc", options={"temperature": 0, "num_predict": 3}, keep_alive=600)
    assert r.eval_count == 3


def test_empty_prompt_loads_the_model(client):
    r = client.generate(model=MODEL, prompt="")
    assert r.done and r.done_reason == "load"


def test_images_need_a_vision_model(client):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "what is this", "images": [png]}])
    assert e.value.status_code == 400
    assert "vision" in e.value.error


def test_embed(client):
    r = client.embed(model=EMBED_MODEL, input=["first text", "second text"])
    assert len(r.embeddings) == 2
    assert len(r.embeddings[0]) == 64
    assert r.prompt_eval_count > 0
    assert r.embeddings[0] != r.embeddings[1]
    one = client.embed(model=EMBED_MODEL, input="first text")
    assert len(one.embeddings) == 1
    assert one.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-4)
    legacy = client.embeddings(model=EMBED_MODEL, prompt="first text")
    assert len(legacy.embedding) == 64


def test_list_show_ps(client):
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    names = {m.model: m for m in client.list().models}
    assert f"{MODEL}:latest" in names, names
    tiny = names[f"{MODEL}:latest"]
    assert tiny.size > 0 and len(tiny.digest) == 64
    assert tiny.details.format == "gguf" and tiny.details.family == "llama"
    shown = client.show(MODEL)
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities
    assert shown.modelfile.startswith("#") and "FROM" in shown.modelfile
    running = {m.model: m for m in client.ps().models}
    assert f"{MODEL}:latest" in running, running
    assert running[f"{MODEL}:latest"].size > 0 and running[f"{MODEL}:latest"].expires_at is not None


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="x")
    assert e.value.status_code == 404
    assert "no-such-model" in e.value.error


def test_pull_create_copy_delete(admin, client):
    progress = list(admin.pull(REGISTRY_MODEL, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest", statuses
    assert statuses[-1] == "success", statuses
    assert any(p.total for p in progress), "per-layer progress has totals"
    assert admin.pull(REGISTRY_MODEL).status == "success", "pulling again is a no-op success"
    assert f"{REGISTRY_MODEL}:latest" in {m.model for m in client.list().models}

    made = list(admin.create(model="made", from_=REGISTRY_MODEL, system="Be brief.",
                             parameters={"temperature": 0.1, "stop": ["<end>"]}, stream=True))
    assert made[-1].status == "success", made
    shown = admin.show("made")
    assert "Be brief." in shown.modelfile
    assert "temperature" in shown.parameters

    digest = admin.create_blob(GGUF)
    assert digest.startswith("sha256:")
    assert admin.create(model="from-blob", files={"model.gguf": digest}).status == "success"
    assert admin.copy("made", "made-copy").status == "success"
    assert "made-copy:latest" in {m.model for m in client.list().models}

    assert client.generate(model=REGISTRY_MODEL, prompt="hi", options={"num_predict": 2}).eval_count == 2
    assert client.generate(model="from-blob", prompt="x", options={"num_predict": 1}).eval_count == 1
    # Usage is written just after a reply ends; the deletes below race it. Catalog transactions
    # start with BEGIN IMMEDIATE, so they wait for the lock instead of failing as "database is
    # locked" (a deferred read-then-write transaction cannot wait).
    if ROOT:
        with pytest.raises(ollama.ResponseError) as e:
            client.delete("made-copy")
        assert e.value.status_code == 403, "root over TCP is anonymous: no implicit rights"
    for name in ["made-copy", "made", "from-blob"]:
        assert admin.delete(name).status == "success"
    assert "made:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        admin.delete("made")
    assert e.value.status_code == 404


def test_pull_of_an_unknown_model_fails(admin):
    with pytest.raises(ollama.ResponseError):
        admin.pull("no-such-model-anywhere")


def test_push_is_clearly_unsupported(admin):
    with pytest.raises(ollama.ResponseError) as e:
        admin.push("made")
    assert "not supported" in e.value.error


def test_blob_upload_checks_the_digest(admin):
    wrong = "sha256:" + "0" * 64
    r = admin._client.post(f"/api/blobs/{wrong}", content=b"not what the digest says")
    assert r.status_code == 400, r.text
    assert admin._client.head(f"/api/blobs/{wrong}").status_code == 404
    bad = admin._client.head("/api/blobs/sha256:../../etc/passwd")
    assert bad.status_code in (400, 404)


def test_logprobs_of_generate_and_chat(client):
    whole = client.generate(model=MODEL, prompt="Once upon a time", options=GREEDY, logprobs=True)
    assert whole.logprobs, "logprobs were asked for"
    assert "".join(lp.token for lp in whole.logprobs) == whole.response
    assert all(lp.logprob <= 0.0 for lp in whole.logprobs)
    parts = list(client.generate(model=MODEL, prompt="Once upon a time", options=GREEDY, stream=True, logprobs=True))
    streamed = [lp for p in parts for lp in (p.logprobs or [])]
    assert [lp.token for lp in streamed] == [lp.token for lp in whole.logprobs]
    # The second request reuses the first one's prompt KV, which moves the last digits.
    assert [lp.logprob for lp in streamed] == pytest.approx([lp.logprob for lp in whole.logprobs], abs=1e-2)
    assert client.generate(model=MODEL, prompt="Once upon a time", options=GREEDY).logprobs is None
    chat = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], options=GREEDY, logprobs=True)
    assert chat.logprobs and "".join(lp.token for lp in chat.logprobs) == chat.message.content
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", options=GREEDY, logprobs=True, top_logprobs=3)
    assert e.value.status_code == 400 and "top_logprobs" in str(e.value)
