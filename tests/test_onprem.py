"""The on-premise server as a person meets it: /docs served offline, the front page, bearer tokens.

Real servers on free ports, real HTTP; the kit's client and `kit smoke` through boto3 with a token.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import httpx
import pytest

from kit.__main__ import main
from kit.endpoints.checks import smoke
from kit.endpoints.client import TOKEN_ENV, EndpointClient, EndpointError
from model_code import __version__, auth
from model_code.settings import Auth, Settings, SettingsError
from tests.support.auth import TOKEN_A, TOKEN_B, TOKEN_FILE, WRONG, bearer, serve_with_auth
from tests.support.serving import Running


class References(HTMLParser):
    """Every URL a page's tags load (src, href, and ReDoc's spec-url)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def referenced(page: str) -> list[str]:
    parser = References()
    parser.feed(page)
    return parser.urls + re.findall(r"url: '([^']+)'", page)  # Swagger UI's schema URL, in its script


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# tokens of the on-prem server\n{TOKEN_FILE}\n\n")
    return path


@pytest.fixture(scope="module")
def guarded(artifact: Path, token_file: Path) -> Iterator[Running]:
    """A server asking for a token: two from AUTH_TOKENS, one from AUTH_TOKENS_FILE; only /ping open."""
    with serve_with_auth(artifact, Auth(tokens=(TOKEN_A, TOKEN_B), tokens_file=token_file)) as running:
        yield running


# --- /docs offline, and the front page ---------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_this_server(running: Running, page: str) -> None:
    answer = httpx.get(running.url + page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "http://" not in answer.text and "https://" not in answer.text, "the page reaches outside the server"
    urls = referenced(answer.text)
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), f"{page} references {url}, not on this server"
        asset = httpx.get(running.url + url)
        assert asset.status_code == 200 and len(asset.content) > 100, f"{url} of {page} is not served"
    if page == "/docs":  # OpenAPI 3.1 needs Swagger UI 5: version 4 refuses to render it
        assert httpx.get(running.url + "/openapi.json").json()["openapi"].startswith("3.1")
        bundle = httpx.get(running.url + next(url for url in scripts if "swagger-ui" in url)).text
        assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle)


def test_front_page_names_models_version_and_links(running: Running) -> None:
    answer = httpx.get(running.url + "/")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["version"] == __version__ and body["status"] == "serving"
    assert body["models"] == list(running.server.models.runners)  # type: ignore[union-attr]
    assert {"docs", "metrics", "ping", "redoc", "openapi"} <= set(body["links"])
    for url in [*body["links"].values(), *body["metadata"].values()]:
        assert httpx.get(running.url + url).status_code == 200, url
    page = httpx.get(running.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in page.text and 'href="/metrics"' in page.text and __version__ in page.text
    assert all(name in page.text for name in body["models"])


def test_without_tokens_every_route_is_open(running: Running) -> None:
    for path in ("/", "/metrics", "/docs", "/api/metadata/h1"):
        assert httpx.get(running.url + path).status_code == 200, path
    assert "securitySchemes" not in httpx.get(running.url + "/openapi.json").json().get("components", {})


# --- bearer tokens -------------------------------------------------------------------------------------------


def test_no_token_is_refused_with_the_error_layout_and_a_challenge(guarded: Running) -> None:
    for method, path in [("GET", "/"), ("GET", "/api/metadata/h1"), ("POST", "/invocations"), ("GET", "/nowhere")]:
        answer = httpx.request(method, guarded.url + path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"] == 'Bearer realm="optimus"'
        body = answer.json()
        assert body["field"] == "authorization" and body["status"] == 401 and "Bearer" in body["reason"]
        assert set(body) == {"error", "status", "field", "reason", "record"}


def test_wrong_token_or_scheme_is_refused(guarded: Running) -> None:
    wrong = httpx.get(guarded.url + "/api/metadata/h1", headers=bearer(WRONG))
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert wrong.json()["reason"] == "the token is not valid" and WRONG not in wrong.text
    for header in (f"Basic {TOKEN_A}", "Bearer", TOKEN_A, f"Bearer {TOKEN_A[:-1]}"):
        assert httpx.get(guarded.url + "/", headers={"Authorization": header}).status_code == 401, header


@pytest.mark.parametrize("token", [TOKEN_A, TOKEN_B, TOKEN_FILE], ids=["first", "second-in-list", "from-file"])
def test_each_configured_token_is_accepted(guarded: Running, token: str) -> None:
    assert httpx.get(guarded.url + "/api/metadata/h1", headers=bearer(token)).json()["embedding_dim"] == 1536
    assert httpx.get(guarded.url + "/", headers=bearer(token)).json()["status"] == "serving"
    assert httpx.get(guarded.url + "/", headers={"Authorization": f"bearer  {token}"}).status_code == 200


def test_ping_stays_open_and_metrics_and_docs_are_protected_by_default(guarded: Running) -> None:
    assert httpx.get(guarded.url + "/ping").status_code == 200
    assert httpx.head(guarded.url + "/ping").status_code == 200
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
        assert httpx.get(guarded.url + path).status_code == 401, path
    metrics = httpx.get(guarded.url + "/metrics", headers=bearer(TOKEN_A)).text
    assert re.search(r'optimus_requests_total\{route="unmatched",status="401"\} [1-9]', metrics), "401s counted"


def test_schema_declares_bearer_so_docs_offer_authorize(guarded: Running) -> None:
    schema = httpx.get(guarded.url + "/openapi.json", headers=bearer(TOKEN_A)).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/ping"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/invocations"]["post"]  # the global requirement applies


def test_auth_open_leaves_metrics_and_docs_open(artifact: Path) -> None:
    with serve_with_auth(artifact, Auth(tokens=(TOKEN_A,), open=frozenset({"metrics", "docs"}))) as running:
        page = httpx.get(running.url + "/docs")
        assert page.status_code == 200
        for url in referenced(page.text):
            assert httpx.get(running.url + url).status_code == 200, url
        assert httpx.get(running.url + "/metrics").status_code == 200
        assert httpx.get(running.url + "/").status_code == 401
        assert httpx.get(running.url + "/api/metadata/h1").status_code == 401


def test_tokens_are_compared_in_constant_time_with_every_token(guarded: Running) -> None:
    with mock.patch.object(auth.hmac, "compare_digest", wraps=auth.hmac.compare_digest) as compare:
        assert httpx.get(guarded.url + "/", headers=bearer(TOKEN_A)).status_code == 200
    compared = {call.args[1] for call in compare.call_args_list}
    assert compared == {TOKEN_A.encode(), TOKEN_B.encode(), TOKEN_FILE.encode()}, "every token, even after a match"
    assert all(call.args[0] == TOKEN_A.encode() for call in compare.call_args_list)


def test_token_file_rotation_and_no_token_in_logs(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_A + "\n")
    caplog.set_level(logging.DEBUG)
    with serve_with_auth(artifact, Auth(tokens_file=path)) as running:
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_A)).status_code == 200
        staged = tmp_path / "tokens.new"
        staged.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")  # rotation: both while clients move over ...
        os.replace(staged, path)
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_B)).status_code == 200
        staged.write_text(f"{TOKEN_B}\n")  # ... then the old one withdrawn
        os.replace(staged, path)
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_A)).status_code == 401
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_B)).status_code == 200
        path.write_text("short\n")  # a broken file lets nobody in until fixed
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_B)).status_code == 401
        path.unlink()
        assert httpx.get(running.url + "/", headers=bearer(TOKEN_B)).status_code == 401
        assert httpx.get(running.url + "/ping").status_code == 200
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "bearer-token authentication on" in text and "tokens are refused until it is fixed" in text
    assert TOKEN_A not in text and TOKEN_B not in text and "short" not in text


def test_tokens_are_ignored_on_sagemaker(artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = Auth.from_env({"AUTH_TOKENS": TOKEN_A, "SAGEMAKER_HOSTED": "1"})
    assert settings.sagemaker and settings.configured
    with serve_with_auth(artifact, settings) as running:
        assert httpx.get(running.url + "/api/metadata/h1").status_code == 200
    assert "ignored on SageMaker" in caplog.text and TOKEN_A not in caplog.text


def test_auth_settings_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_FILE}\n")
    env = {"AUTH_TOKENS": f"{TOKEN_A}, {TOKEN_B}", "AUTH_TOKENS_FILE": str(path), "AUTH_OPEN": "metrics"}
    loaded = Settings.load(env).auth
    assert loaded == Auth((TOKEN_A, TOKEN_B), path, frozenset({"metrics"}), sagemaker=False)
    assert not Settings.load({}).auth.configured
    assert Auth.from_env({"SAGEMAKER_REGION": "eu-west-1"}).sagemaker
    bad = {
        "AUTH_TOKENS": ("tooshort", "at least 16"),
        "AUTH_TOKENS_FILE": (str(tmp_path / "missing"), "cannot be read"),
        "AUTH_OPEN": ("metrics,everything", "AUTH_OPEN names everything"),
    }
    for name, (value, reason) in bad.items():
        with pytest.raises(SettingsError, match=reason) as error:
            Settings.load({name: value})
        assert name in str(error.value) and (name == "AUTH_OPEN" or "tooshort" not in str(error.value))
    (tmp_path / "empty").write_text("# no token yet\n")
    with pytest.raises(SettingsError, match="holds no token"):
        Settings.load({"AUTH_TOKENS_FILE": str(tmp_path / "empty")})
    with pytest.raises(SettingsError, match="visible ASCII") as error:
        Settings.load({"AUTH_TOKENS": "é" * 20})
    assert "é" not in str(error.value)


# --- the kit's client and smoke with a token ----------------------------------------------------------------


def test_client_sends_the_token(guarded: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    def client(**options: object) -> EndpointClient:
        return EndpointClient("optimus-local", "h1", region="us-east-1", endpoint_url=guarded.url, **options)  # type: ignore[arg-type]

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert client(token=TOKEN_B).metadata()["embedding_dim"] == 1536
    with pytest.raises(EndpointError) as refused:
        client(backoff_s=0.01).metadata()
    assert refused.value.status == 401 and not refused.value.retryable
    monkeypatch.setenv(TOKEN_ENV, TOKEN_FILE)
    assert client().metadata()["embedding_dim"] == 1536
    with pytest.raises(ValueError, match="endpoint_url"):
        EndpointClient("optimus-h1", "h1", region="us-east-1", token=TOKEN_A)


def test_smoke_with_a_token(guarded: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    endpoints = {"optimus-local": ["h1", "tissue-seg"]}
    report = smoke(endpoints, endpoint_url=guarded.url, requests=2, region="us-east-1", token=TOKEN_A)
    assert report.passed, report.text()
    refused = smoke(endpoints, endpoint_url=guarded.url, requests=2, region="us-east-1")
    assert not refused.passed and "401" in refused.text()
    args = ["smoke", "--endpoint", "optimus-local", "--models", "h1", "--endpoint-url", guarded.url]
    args += ["--region", "us-east-1", "--requests", "2"]
    assert main([*args, "--token", TOKEN_B]) == 0
    monkeypatch.setenv(TOKEN_ENV, TOKEN_FILE)
    assert main(args) == 0
    assert main(["smoke", "--endpoint", "optimus-h1", "--models", "h1", "--token", TOKEN_A]) == 2


def test_matches_compares_with_every_token() -> None:
    tokens = [TOKEN_A.encode(), TOKEN_B.encode()]
    assert auth.matches(TOKEN_B.encode(), tokens) and not auth.matches(WRONG.encode(), tokens)
    assert not auth.matches(TOKEN_A.encode(), [])


# --- what "Try it out" in /docs sends, and the front page's first requests -----------------------------------


def tried(url: str, path: str, operation: dict[str, object]) -> list[tuple[str, str, object]]:
    """(name, the URL Swagger's "Try it out" fills in, body) for each example body of an operation; the first
    is what the page shows by default (the path parameter's example, the first example)."""
    parameters = {p["name"]: p for p in operation.get("parameters", [])}  # type: ignore[attr-defined]
    content = operation["requestBody"]["content"]["application/json"]  # type: ignore[index]
    sent = []
    for name, example in content["examples"].items():
        model = name if "model" in parameters else None
        filled = path.replace("{model}", model or "").replace("{endpoint_name}", "local")
        sent.append((name, url + filled, example["value"]))
    default = parameters.get("model", {}).get("example")
    assert default is None or sent[0][0] == default, "the default model and the default example must agree"
    return sent


def test_every_tile_routes_examples_succeed(running: Running) -> None:
    document = httpx.get(running.url + "/openapi.json").json()
    posted = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method != "post" or "requestBody" not in operation:
                continue
            assert operation["requestBody"]["content"]["application/json"]["examples"], path
            for name, target, body in tried(running.url, path, operation):
                answer = httpx.post(target, json=body, timeout=30)
                assert answer.status_code == 200, (path, name, answer.text)
                assert len(answer.json()["output"]) > 0
                posted += 1
    assert posted >= 9  # /invocations and /endpoints/.../invocations x 3 models, and the /api tile routes


def test_openapi_names_hosted_models_the_slide_body_and_400(running: Running) -> None:
    document = httpx.get(running.url + "/openapi.json").json()
    hosted = list(running.server.models.runners)  # type: ignore[union-attr]
    embed = document["paths"]["/api/embed/{model}"]["post"]
    (model,) = [p for p in embed["parameters"] if p["name"] == "model"]
    assert model["schema"]["enum"] == [m for m in hosted if m != "tissue-seg"]  # the models with mode embedding
    assert [p["name"] for p in embed["parameters"]] == ["model"]  # no `mode` query parameter
    body = embed["requestBody"]["content"]
    assert {"image/tiff", "application/x-tar", "application/octet-stream", "application/json"} <= set(body)
    schema = body["application/json"]["schema"]
    assert "model_name" not in schema.get("required", []) and "mode" not in schema.get("required", [])
    assert "base64" in schema["properties"]["image_data"]["description"]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path
    assert "400" in embed["responses"] and "HTTPValidationError" not in document["components"]["schemas"]


def test_metadata_of_a_model_not_hosted_names_the_routes_model(running: Running) -> None:
    answer = httpx.get(running.url + "/api/metadata/h9")
    assert answer.status_code == 404
    body = answer.json()
    assert body["field"] == "model" and body["record"] is None and "'h9' is not hosted here" in body["error"]
    assert "h0" not in body["error"] and all(m in body["error"] for m in running.server.models.runners)  # type: ignore[union-attr]
    tile = httpx.post(running.url + "/api/embed/h0", json={"image_data": ""})
    assert tile.status_code == 404 and tile.json()["field"] == "model"


def test_front_pages_first_requests_succeed_as_copied(running: Running) -> None:
    import subprocess

    tries = httpx.get(running.url + "/").json()["try"]
    assert len(tries) == 2 and tries[0].startswith("curl ") and "/invocations" in tries[1]
    page = httpx.get(running.url + "/", headers={"Accept": "text/html"}).text
    assert "A first request" in page and "/api/metadata/" in page
    for command in tries:
        done = subprocess.run(["bash", "-c", command + " --fail --silent"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command[:200], done.stderr)
        assert '"output"' in done.stdout or '"model_name"' in done.stdout


def test_a_server_open_to_the_network_without_a_token_says_so(artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    from model_code.server import create_app

    caplog.set_level(logging.WARNING)
    create_app(Settings(model_dir=artifact, host="127.0.0.1"))
    assert "open to anyone" not in caplog.text
    create_app(Settings(model_dir=artifact, host="0.0.0.0"))
    assert "every route on 0.0.0.0 is open to anyone who can reach this port; set AUTH_TOKENS" in caplog.text
    caplog.clear()
    create_app(Settings(model_dir=artifact, host="0.0.0.0", auth=Auth(tokens=(TOKEN_A,))))
    create_app(Settings(model_dir=artifact, host="0.0.0.0", auth=Auth(sagemaker=True)))
    assert "open to anyone" not in caplog.text
