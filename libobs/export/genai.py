"""An LLM request in GenAI terms: its token usage, provider and operation names, and which
event of a request carries the tokens to count, so that each request is counted once.

Pure functions over obs events (LlmCall from obs-llm, LlmApi from obs-ssl), shared by the
summary, the timeline and obs-otel.

Token semantics differ by provider: Anthropic's `input_tokens` (our `prompt_tokens`) excludes
cache reads and writes, OpenAI's and Gemini's prompt counts include cached tokens. `Usage.input`
is always the total input, as the GenAI semantic conventions and price catalogues count it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                "cache_creation_tokens")
ONCE_KEYS = 1 << 16

# obs provider names (libobs/providers.toml) → gen_ai.provider.name well-known values.
SEMCONV_PROVIDERS = {
    "Anthropic": "anthropic", "OpenAi": "openai", "AzureOpenAi": "azure.ai.openai",
    "Gemini": "gcp.gemini", "VertexAi": "gcp.vertex_ai", "Bedrock": "aws.bedrock",
    "Mistral": "mistral_ai", "Cohere": "cohere", "XAi": "x_ai", "DeepSeek": "deepseek",
    "Groq": "groq", "Perplexity": "perplexity",
}


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


@dataclass(frozen=True)
class Usage:
    """Token counts of one response; None where the response did not say."""

    prompt: int | None
    completion: int | None
    cache_read: int | None
    cache_creation: int | None
    cache_separate: bool  # prompt excludes cache tokens (Anthropic's usage)

    @property
    def input(self) -> int | None:
        """All input tokens, cached ones included."""
        if self.prompt is None:
            return None
        if not self.cache_separate:
            return self.prompt
        return self.prompt + (self.cache_read or 0) + (self.cache_creation or 0)

    def counts(self) -> dict[str, int]:
        """The known counts under the summary's names (prompt as reported)."""
        named = {"prompt": self.prompt, "completion": self.completion,
                 "cache_read": self.cache_read, "cache_creation": self.cache_creation}
        return {k: v for k, v in named.items() if v is not None}


def usage(provider: Any, fields: dict[str, Any]) -> Usage | None:
    """The tokens an LlmCall or LlmApi response carries, or None when it carries none."""
    values = [_count(fields.get(name)) for name in TOKEN_FIELDS]
    if all(v is None for v in values):
        return None
    model = fields.get("model")
    separate = provider == "Anthropic" or (isinstance(model, str) and "claude" in model)
    prompt, completion, cache_read, cache_creation = values
    return Usage(prompt, completion, cache_read, cache_creation, cache_separate=separate)


def provider_name(provider: Any) -> str:
    """gen_ai.provider.name for an obs provider; unclassified peers are `unknown`."""
    if not isinstance(provider, str) or not provider:
        return "unknown"
    return SEMCONV_PROVIDERS.get(provider, provider.lower())


def operation_name(fields: dict[str, Any]) -> str:
    """gen_ai.operation.name from the request path when known; LLM API calls are chats
    unless the path says otherwise."""
    path = fields.get("path")
    if isinstance(path, str):
        if "embed" in path:
            return "embeddings"
        if "generateContent" in path or "GenerateContent" in path:
            return "generate_content"
        if path.rstrip("/").endswith("/completions") and "chat" not in path:
            return "text_completion"
    return "chat"


def model_of(fields: dict[str, Any]) -> str | None:
    model = fields.get("model")
    return model if isinstance(model, str) and model else None


class Once:
    """Decides which event counts a request's tokens: each request once.

    A request can reach the merged stream twice: as an LlmCall carrying tokens (obs-llm --api,
    or copied by obs-merge's join) and as the LlmApi response obs-ssl saw. obs-merge marks a
    joined LlmCall with `api_ts`, the ts of the LlmApi response it was joined with; whichever
    of the two comes first counts, the other does not. Bounded: the newest `cap` keys.
    """

    def __init__(self, cap: int = ONCE_KEYS) -> None:
        self.cap = cap
        self.calls: OrderedDict[tuple[Any, Any], None] = OrderedDict()  # (pid, api_ts) counted
        self.responses: OrderedDict[tuple[Any, Any], None] = OrderedDict()  # (pid, ts) counted

    def counts(self, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> bool:
        if kind == "LlmCall":
            api_ts = fields.get("api_ts")
            if api_ts is None:
                return True
            key = (fields.get("pid"), api_ts)
            if key in self.responses:
                return False
            self._remember(self.calls, key)
            return True
        if kind == "LlmApi" and fields.get("is_request") is False:
            key = (fields.get("pid"), ev.get("ts"))
            if key in self.calls:
                return False
            self._remember(self.responses, key)
            return True
        return False

    def _remember(self, keys: OrderedDict[tuple[Any, Any], None], key: tuple[Any, Any]) -> None:
        keys[key] = None
        if len(keys) > self.cap:
            keys.popitem(last=False)
