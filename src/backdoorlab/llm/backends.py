"""Chat backends: a local causal LM or an OpenAI-compatible endpoint, behind one interface.

The endpoint's API key is read from an environment variable at request time and is never stored
in an object's options, written to disk, or put into an error message or log.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.records import Example
from ..errors import BackdoorLabError, unknown_name


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ChatBackend:
    """Answers single-turn user messages; subclasses implement :meth:`complete`."""

    name: str = ""

    def complete(self, messages: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class LocalChat(ChatBackend):
    """A local causal LM (a packaged name such as ``smollm2-135m-instruct``, or a folder), loaded once.

    Messages are rendered with the model's chat template (the shared prompt format); sampling is
    seeded so a run repeats exactly.
    """

    name = "local"

    def __init__(self, model: str = "smollm2-135m-instruct", device: str = "auto", batch_size: int = 16) -> None:
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._victim: Any = None

    @property
    def victim(self) -> Any:
        if self._victim is None:
            from ..models.loading import load_victim

            self._victim = load_victim(self.model_name, kind="generator", device=self.device)
            self._victim.max_length = 1024
        return self._victim

    def complete(self, messages: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        import torch

        victim = self.victim
        settings: dict[str, Any] = {}
        if temperature > 0:
            torch.manual_seed(seed)
            settings = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
        rows = [Example(instruction=m) for m in messages]
        texts = victim.generate(rows, max_new_tokens=max_new_tokens, batch_size=self.batch_size, **settings)
        tokenizer = victim.tokenizer
        return [Completion(text, len(tokenizer(prompt).input_ids), len(tokenizer(text).input_ids))
                for prompt, text in zip(victim.prompts(rows), texts)]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name}


class OpenAIChat(ChatBackend):
    """Any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp server, Ollama …),
    through the ``openai`` client (the optional extra ``backdoorlab[openai]``).

    ``api_key_env`` names the environment variable holding the key; when it is empty a placeholder
    key is sent (local servers usually ignore it). Failed requests are retried ``max_retries`` times
    by the client.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 2) -> None:
        if not model:
            raise BackdoorLabError("the openai generator backend needs a model name (--option generator_model=...)")
        if not base_url.startswith(("http://", "https://")):
            raise BackdoorLabError(f"generator base_url must start with http:// or https://, got {base_url!r}")
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries

    def complete(self, messages: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        openai = _openai_module()
        client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env, "") or "unused",
                               timeout=self.timeout, max_retries=self.max_retries)
        return [self._one(openai, client, message, max_new_tokens, temperature, seed + i)
                for i, message in enumerate(messages)]

    def _one(self, openai: Any, client: Any, message: str, max_new_tokens: int, temperature: float,
             seed: int) -> Completion:
        try:
            response = client.chat.completions.create(model=self.model_name,
                                                      messages=[{"role": "user", "content": message}],
                                                      max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise BackdoorLabError(f"the generator endpoint {self.base_url} answered HTTP {error.status_code}; "
                                   f"check the key in ${self.api_key_env}") from None
        except openai.APIStatusError as error:
            raise BackdoorLabError(f"the generator endpoint {self.base_url} answered HTTP {error.status_code}; "
                                   "check the model name and base_url") from None
        except openai.APIConnectionError:  # also a timeout
            raise BackdoorLabError(f"could not reach the generator endpoint {self.base_url}; check --option base_url "
                                   "and that the server is running, or use generator=local") from None
        except openai.APIResponseValidationError:
            raise BackdoorLabError(f"the generator endpoint {self.base_url} did not answer with a chat completion; "
                                   "is base_url an OpenAI-compatible API root (usually ending in /v1)?") from None
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise BackdoorLabError(f"the generator endpoint {self.base_url} answered without choices[0].message."
                                   "content; it does not look OpenAI-compatible") from None
        usage = getattr(response, "usage", None)
        return Completion(text.strip(), int(getattr(usage, "prompt_tokens", 0) or 0),
                          int(getattr(usage, "completion_tokens", 0) or 0))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "base_url": self.base_url,
                "api_key_env": self.api_key_env}


def _openai_module() -> Any:
    """The ``openai`` client package; a clear error naming the extra to install when it is missing."""
    try:
        import openai
    except ImportError:
        raise BackdoorLabError("the openai generator backend needs the openai client package: "
                               "pip install 'backdoorlab[openai]' (or pip install openai), or use generator=local") from None
    return openai


BACKENDS = ("local", "openai")


def get_backend(name: str, *, model: str | None = None, base_url: str | None = None,
                api_key_env: str = "OPENAI_API_KEY", device: str = "auto") -> ChatBackend:
    """Build backend ``name`` (``local`` or ``openai``)."""
    if name == "local":
        return LocalChat(model or "smollm2-135m-instruct", device=device)
    if name == "openai":
        return OpenAIChat(model or "", base_url or "https://api.openai.com/v1", api_key_env)
    raise unknown_name("generator backend", name, BACKENDS)
