"""The data plane in process: one authenticator, one model lookup, extensions by name, and the two
adapters (HTTP, gRPC) answering from the same plane. The server tests cover the wire behaviour."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from runtime.serve.app import EXTENSION_ROUTES, ServeApp
from runtime.serve.auth import Authenticator
from runtime.serve.body import Refused
from runtime.serve.dataplane import DataPlane
from runtime.serve.generate import Generate, GenerateLimits
from runtime.serve.grpc_service import InferenceService
from runtime.serve.metrics import Metrics
from runtime.serve.protocol import Limits, RequestError

TOKEN = "plane-token-0123456789abcdef"
AUTH = (b"authorization", b"Bearer " + TOKEN.encode())


def _plane(current=None) -> DataPlane:
    manager = SimpleNamespace(model="tiny", current=current)
    return DataPlane(manager, Authenticator(TOKEN), Metrics(), limits=Limits(), max_body_bytes=1 << 16)


def _model(version: int = 3):
    return SimpleNamespace(name="tiny", version=version, version_str=str(version))


def test_the_authenticator_checks_the_bearer_token_and_rotates():
    auth = Authenticator(TOKEN)
    assert auth.valid(b"Bearer " + TOKEN.encode()) and auth.valid(b"bearer " + TOKEN.encode() + b" ")
    for bad in (None, b"", TOKEN.encode(), b"Basic " + TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"x"):
        assert not auth.valid(bad), bad
    auth.set_token("another-token-0123456789")
    assert not auth.valid(b"Bearer " + TOKEN.encode()) and auth.valid(b"Bearer another-token-0123456789")
    with pytest.raises(ValueError):
        auth.set_token("")


def test_one_authorization_per_request_in_both_protocols_even_on_public_routes():
    auth = Authenticator(TOKEN)
    raw = [AUTH, (b"host", b"x"), AUTH]
    for public in (False, True):
        with pytest.raises(Refused) as http:
            auth.http(dict(raw), raw, public)
        with pytest.raises(Refused) as grpc:
            auth.grpc((("authorization", "Bearer x"), ("authorization", "Bearer y")), public)
        for caught in (http.value, grpc.value):
            assert caught.status == 400 and caught.reason == "duplicate_authorization"
    assert auth.http(dict([AUTH]), [AUTH], False) and not auth.http({}, [], False) and auth.http({}, [], True)
    assert auth.grpc((("authorization", "Bearer " + TOKEN),), False) and not auth.grpc(None, False)


def test_model_lookup_is_one_rule():
    plane = _plane()
    with pytest.raises(RequestError) as caught:
        plane.model("other", "", _model())
    assert caught.value.status == 404 and "unknown model 'other'" in caught.value.message
    with pytest.raises(RequestError) as caught:
        plane.model("tiny", "", None)
    assert caught.value.status == 503
    with pytest.raises(RequestError) as caught:
        plane.model("tiny", "2", _model(3))
    assert caught.value.status == 404 and "serving 3" in caught.value.message
    model = _model(3)
    assert plane.model("tiny", "", model) is model and plane.model("tiny", "3", model) is model
    assert not plane.ready() and not plane.model_ready("tiny", "")
    plane.manager.current = model
    assert plane.ready() and plane.model_ready("tiny", "") and plane.model_ready("tiny", "3")
    assert not plane.model_ready("tiny", "2") and not plane.model_ready("other", "")


def test_extensions_are_found_by_name_and_mount_their_http_routes():
    plane = _plane()
    assert {r.name for r in ServeApp(plane).routes}.isdisjoint({"generate", "generate_stream"})
    with pytest.raises(RequestError) as caught:
        plane.extension("generate")
    assert caught.value.status == 404
    generate = Generate(GenerateLimits())
    plane.add_extension(generate.name, generate)
    with pytest.raises(ValueError):
        plane.add_extension("generate", generate)
    assert plane.extension("generate") is generate
    names = {r.name for r in ServeApp(plane).routes}
    assert {route.name for route, _ in EXTENSION_ROUTES["generate"]} <= names


def test_a_model_gets_only_the_extension_its_artifact_names():
    """The export records the family's `serving_extension` in the manifest; the plane holds a model
    to it (an artifact from before the field is left to the extension's own check)."""
    plane = _plane()
    generate = Generate(GenerateLimits())
    plane.add_extension(generate.name, generate)
    lm = SimpleNamespace(name="tiny", version=2, manifest={"serving_extension": "generate"})
    assert plane.model_extension(lm, "generate") is generate
    older = SimpleNamespace(name="tiny", version=1, manifest={"language_model": {}})
    assert plane.model_extension(older, "generate") is generate
    for declared, says in ((None, "serves no extension"), ("other", "serves the 'other' extension")):
        mlp = SimpleNamespace(name="tiny", version=3, manifest={"serving_extension": declared})
        with pytest.raises(RequestError) as caught:
            plane.model_extension(mlp, "generate")
        assert caught.value.status == 400 and says in caught.value.message and "use /infer" in caught.value.message


def _get(app: ServeApp, path: str) -> tuple[int, dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "client": ("127.0.0.1", 1), "headers": [AUTH]}
    asyncio.run(app(scope, receive, send))
    body = sent[1]["body"]
    return sent[0]["status"], orjson.loads(body) if body else {}


def test_both_adapters_answer_from_the_same_plane():
    plane = _plane()
    app, service = ServeApp(plane), InferenceService(plane)
    assert service.plane is app.plane
    status, body = _get(app, "/v2/models/other")
    with pytest.raises(RequestError) as caught:
        plane.model("other", "", None)
    assert (status, body["error"]) == (404, caught.value.message)
    assert _get(app, "/v2/models/tiny/ready")[0] == 503
    plane.manager.current = _model(3)
    assert _get(app, "/v2/models/tiny/versions/3/ready")[0] == 200
    assert _get(app, "/v2/models/tiny/versions/2/ready")[0] == 404
    ready = asyncio.run(service._model_ready(SimpleNamespace(name="tiny", version="3"), None))  # noqa: SLF001
    assert ready.ready
    assert plane.metrics.stats.requests[("model_ready", "200")] == 1
