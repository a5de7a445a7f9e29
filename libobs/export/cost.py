"""USD cost of an LLM request from the genai-prices catalogue (pinned in pyproject.toml).

Cache reads and cache writes are priced at their own rates (on Anthropic ~0.1x and ~1.25x
input); the price in force at the request's time is used. A model the catalogue does not know
has no cost (None), never 0: callers count it as unpriced.
"""

from __future__ import annotations

import datetime
import functools
import warnings
from decimal import Decimal
from typing import Any

import genai_prices

from libobs.export.genai import Usage

CATALOGUE = f"genai-prices {genai_prices.__version__}"

# obs provider names → genai-prices provider ids; others are found by model name alone.
PROVIDER_IDS = {
    "Anthropic": "anthropic", "OpenAi": "openai", "AzureOpenAi": "azure", "Gemini": "google",
    "VertexAi": "google", "Bedrock": "aws", "Mistral": "mistral", "Cohere": "cohere",
    "XAi": "x-ai", "DeepSeek": "deepseek", "Groq": "groq", "Together": "together",
    "Perplexity": "perplexity", "Fireworks": "fireworks", "OpenRouter": "openrouter",
}


def cost_usd(provider: Any, model: str | None, usage: Usage, ts_ns: int | None = None
             ) -> Decimal | None:
    """The request's price in USD, or None when the model or the token counts are unknown."""
    if not model or usage.input is None and usage.completion is None:
        return None
    pid = PROVIDER_IDS.get(provider) if isinstance(provider, str) else None
    if (pid, model) in _UNKNOWN and (None, model) in _UNKNOWN:
        return None
    counts = {"input_tokens": usage.input, "output_tokens": usage.completion,
              "cache_read_tokens": usage.cache_read, "cache_write_tokens": usage.cache_creation}
    known = tuple((k, v) for k, v in counts.items() if v)
    when = (None if ts_ns is None else
            datetime.datetime.fromtimestamp(ts_ns / 1e9, datetime.UTC).replace(microsecond=0))
    return _price(pid, model, known, when)


_UNKNOWN: set[tuple[str | None, str]] = set()  # (provider id, model) the catalogue lacks


@functools.lru_cache(maxsize=4096)
def _price(provider_id: str | None, model: str, counts: tuple[tuple[str, int], ...],
           when: datetime.datetime | None) -> Decimal | None:
    # Vertex and Bedrock serve other vendors' models: retry by model name alone.
    # A model the catalogue lacks is remembered: looking for it again (for every request of
    # an unpriced model, each at its own time and counts) cost a catalogue search each time.
    for pid in dict.fromkeys((provider_id, None)):
        if (pid, model) in _UNKNOWN:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                calc = genai_prices.calc_price(genai_prices.Usage(**dict(counts)), model,
                                               provider_id=pid, genai_request_timestamp=when)
        except LookupError:  # raised only for a model (or provider) it does not know
            if len(_UNKNOWN) < 4096:
                _UNKNOWN.add((pid, model))
            continue
        except ValueError:
            continue
        return calc.total_price
    return None
