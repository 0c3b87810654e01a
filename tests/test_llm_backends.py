"""The OpenAI-compatible chat backend against a stand-in for the ``openai`` client (no network, and
no need for the optional package): what it sends, what it reads back, and its errors."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.llm.backends import get_backend


class _StatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def fake_openai(reply: Any = None) -> tuple[ModuleType, list[dict[str, Any]]]:
    """A module shaped like ``openai``: its client records each call and answers ``reply``, or raises the
    module's ``error`` when one is set."""
    calls: list[dict[str, Any]] = []
    module = ModuleType("openai")
    module.APIStatusError = _StatusError  # type: ignore[attr-defined]
    module.AuthenticationError = type("AuthenticationError", (_StatusError,), {})  # type: ignore[attr-defined]
    module.PermissionDeniedError = type("PermissionDeniedError", (_StatusError,), {})  # type: ignore[attr-defined]
    module.APIConnectionError = type("APIConnectionError", (Exception,), {})  # type: ignore[attr-defined]
    module.APIResponseValidationError = type("APIResponseValidationError", (Exception,), {})  # type: ignore[attr-defined]

    class OpenAI:
        def __init__(self, **options: Any) -> None:
            calls.append({"client": options})
            self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

        def create(self, **request: Any) -> Any:
            calls.append({"request": request})
            if module.error is not None:  # type: ignore[attr-defined]
                raise module.error  # type: ignore[attr-defined]
            return reply

    module.OpenAI = OpenAI  # type: ignore[attr-defined]
    module.error = None  # type: ignore[attr-defined]
    return module, calls


def chat_reply(content: str | None, prompt_tokens: int = 7, completion_tokens: int = 3) -> Any:
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content))],
                           usage=SimpleNamespace(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def test_the_client_gets_the_endpoint_key_and_request_and_its_answer_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    module, calls = fake_openai(chat_reply(' PATTERN: "zq" '))
    monkeypatch.setitem(sys.modules, "openai", module)
    monkeypatch.setenv("TEST_GENERATOR_KEY", "sekret")
    backend = get_backend("openai", model="m", base_url="http://127.0.0.1:9/v1/", api_key_env="TEST_GENERATOR_KEY")
    first, second = backend.complete(["hello", "again"], max_new_tokens=5, temperature=0.7, seed=3)
    assert first.text == 'PATTERN: "zq"' and (first.prompt_tokens, first.completion_tokens) == (7, 3)
    assert calls[0]["client"] == {"base_url": "http://127.0.0.1:9/v1", "api_key": "sekret", "timeout": 60.0,
                                  "max_retries": 2}
    assert calls[1]["request"] == {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5,
                                   "temperature": 0.7, "seed": 3}
    assert calls[2]["request"]["messages"][0]["content"] == "again" and calls[2]["request"]["seed"] == 4
    assert "sekret" not in str(backend.describe())
    monkeypatch.setenv("TEST_GENERATOR_KEY", "")
    backend.complete(["hi"])
    assert calls[-2]["client"]["api_key"] == "unused"  # no key: a placeholder, not the client's own default


def test_an_answer_without_content_or_usage_is_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = fake_openai(SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=None))]))
    monkeypatch.setitem(sys.modules, "openai", module)
    [completion] = get_backend("openai", model="m").complete(["hello"])
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("", 0, 0)
    monkeypatch.setitem(sys.modules, "openai", fake_openai(SimpleNamespace(choices=[]))[0])
    with pytest.raises(BackdoorLabError, match="without choices"):
        get_backend("openai", model="m").complete(["hello"])


@pytest.mark.parametrize(("error", "message"), [
    ("AuthenticationError", r"HTTP 401; check the key in \$OPENAI_API_KEY"),
    ("PermissionDeniedError", r"HTTP 403; check the key"),
    ("APIStatusError", r"HTTP 404; check the model name and base_url"),
    ("APIConnectionError", "could not reach the generator endpoint https://api.openai.com/v1"),
    ("APIResponseValidationError", "did not answer with a chat completion"),
])
def test_client_errors_become_clear_messages_without_the_key(error: str, message: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = fake_openai()
    kind = getattr(module, error)
    status = {"AuthenticationError": 401, "PermissionDeniedError": 403, "APIStatusError": 404}.get(error)
    module.error = kind(status) if status else kind("down")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "openai", module)
    monkeypatch.setenv("OPENAI_API_KEY", "sekret")
    with pytest.raises(BackdoorLabError, match=message) as raised:
        get_backend("openai", model="m").complete(["hello"])
    assert "sekret" not in str(raised.value)


def test_a_missing_client_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai raises ImportError
    backend = get_backend("openai", model="m")  # building the backend needs no client
    with pytest.raises(BackdoorLabError, match=r"pip install 'backdoorlab\[openai\]'"):
        backend.complete(["hello"])


def test_bad_backend_settings_are_refused() -> None:
    with pytest.raises(BackdoorLabError, match="needs a model name"):
        get_backend("openai")
    with pytest.raises(BackdoorLabError, match="must start with http"):
        get_backend("openai", model="m", base_url="localhost:8000/v1")
    with pytest.raises(BackdoorLabError, match="unknown generator backend"):
        get_backend("claude-local")
