"""Fixtures for the conformance tests: clients pointed at the daemon that tests/http_clients.rs
started (HL_* environment variables). Inference goes over loopback TCP, as a new user's tools
would; store changes go through the caller's own unix socket when run as root (root over TCP is
anonymous by design)."""

import os

import httpx
import ollama
import openai
import pytest

HOST = os.environ.get("HL_HOST", "")
SOCKET = os.environ.get("HL_SOCKET", "")
MODEL = os.environ.get("HL_MODEL", "tiny")
EMBED_MODEL = os.environ.get("HL_EMBED_MODEL", "tiny-embed")
REGISTRY_MODEL = os.environ.get("HL_REGISTRY_MODEL", "tinyreg")
GGUF = os.environ.get("HL_GGUF", "")
ROOT = os.environ.get("HL_ROOT") == "1"

if not HOST:
    pytest.exit("HL_HOST is not set: run these through `cargo test --test http_clients`", returncode=2)


@pytest.fixture(scope="session")
def client():
    return ollama.Client(host=HOST)


@pytest.fixture(scope="session")
def admin():
    if SOCKET:
        return ollama.Client(host="http://localhost", transport=httpx.HTTPTransport(uds=SOCKET))
    return ollama.Client(host=HOST)


@pytest.fixture(scope="session")
def oai():
    # OpenAI clients insist on a key; on loopback any non-token value is ignored.
    return openai.OpenAI(base_url=HOST + "/v1", api_key="ollama", max_retries=0)
