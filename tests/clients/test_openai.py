"""The official `openai` Python client against hyperllamad's /v1 endpoints."""

import json

import openai
import pytest

from conftest import EMBED_MODEL, MODEL

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def test_chat_completion(oai):
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, seed=1)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_streamed_with_usage(oai):
    whole = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, seed=1)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, seed=1,
                                              stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_completions(oai):
    r = oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length" and isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens == 4
    streamed = list(oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_stop_sequences_end_the_reply(oai):
    r = oai.completions.create(model=MODEL, prompt="a b c", max_tokens=40, temperature=0)
    text = r.choices[0].text
    if len(text) > 2:
        stop = text[1:3]
        cut = oai.completions.create(model=MODEL, prompt="a b c", max_tokens=40, temperature=0, stop=[stop])
        assert stop not in cut.choices[0].text
        assert cut.choices[0].finish_reason == "stop"


def test_json_schema_response_format(oai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "JSON please"}], max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)


def test_json_object_response_format(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON please"}],
                                    max_tokens=200, temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        json.loads(r.choices[0].message.content)
    else:
        assert r.choices[0].message.content.lstrip().startswith(("{", "["))


def test_embeddings(oai):
    r = oai.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"])  # base64 on the wire
    assert r.object == "list" and len(r.data) == 2
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 64
    floats = oai.embeddings.create(model=EMBED_MODEL, input="first text", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-5)
    assert r.usage.prompt_tokens > 0


def test_models(oai):
    ids = {m.id for m in oai.models.list()}
    assert f"{MODEL}:latest" in ids, ids
    m = oai.models.retrieve(MODEL)
    assert m.id == f"{MODEL}:latest" and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_errors_have_openais_shape(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    assert "no-such-model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert e.value.param == "n"


def test_chat_logprobs(oai):
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True)
    content = r.choices[0].logprobs.content
    assert content and "".join(e.token for e in content) == r.choices[0].message.content
    assert all(e.logprob <= 0.0 and bytes(e.bytes) == e.token.encode() for e in content)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                              logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    # The second request reuses the first one's prompt KV, which moves the last digits.
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-2)
    plain = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=2)
    assert "top_logprobs" in str(e.value)


def test_completion_logprobs(oai):
    r = oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) and all(v <= 0.0 for v in lp.token_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, logprobs=3)
