"""libobs.export.genai and .cost: token semantics per provider, names, prices, and totality on
garbage fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import genai_prices
from hypothesis import given
from hypothesis import strategies as st

from libobs.export.cost import cost_usd
from libobs.export.genai import operation_name, provider_name, usage


def test_input_tokens_include_the_cache_only_where_prompt_excludes_it() -> None:
    anthropic = usage("Anthropic", {"prompt_tokens": 10, "cache_read_tokens": 100,
                                    "cache_creation_tokens": 5})
    openai = usage("OpenAi", {"prompt_tokens": 110, "cache_read_tokens": 100})
    assert anthropic is not None and anthropic.input == 115
    assert openai is not None and openai.input == 110
    # A Claude model reached through another provider reports usage the Anthropic way.
    bedrock = usage("Bedrock", {"model": "claude-3-haiku", "prompt_tokens": 1,
                                "cache_read_tokens": 2})
    assert bedrock is not None and bedrock.input == 3


def test_no_tokens_is_none_not_zero() -> None:
    assert usage("Anthropic", {"prompt_tokens": None, "completion_tokens": None}) is None
    only_output = usage("OpenAi", {"completion_tokens": 4})
    assert only_output is not None and only_output.input is None
    assert only_output.counts() == {"completion": 4}


def test_semconv_names() -> None:
    assert [provider_name(p) for p in ("Anthropic", "OpenAi", "Gemini", "Bedrock", None,
                                       "Fireworks")] == [
        "anthropic", "openai", "gcp.gemini", "aws.bedrock", "unknown", "fireworks"]
    assert operation_name({"path": "/v1/messages"}) == "chat"
    assert operation_name({"path": "/v1/embeddings"}) == "embeddings"
    assert operation_name({"path": "/v1beta/models/x:streamGenerateContent"}) == "generate_content"
    assert operation_name({"path": "/v1/completions"}) == "text_completion"
    assert operation_name({}) == "chat"


def test_openai_cached_tokens_are_priced_apart() -> None:
    u = usage("OpenAi", {"prompt_tokens": 1000, "completion_tokens": 10,
                         "cache_read_tokens": 800})
    assert u is not None
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=10, cache_read_tokens=800),
        "gpt-4o", provider_id="openai").total_price
    assert cost_usd("OpenAi", "gpt-4o", u) == expected
    uncached = usage("OpenAi", {"prompt_tokens": 1000, "completion_tokens": 10})
    assert uncached is not None
    assert (cost_usd("OpenAi", "gpt-4o", uncached) or Decimal(0)) > expected


def test_unknown_model_or_no_model_has_no_price() -> None:
    u = usage("Anthropic", {"prompt_tokens": 1, "completion_tokens": 1})
    assert u is not None
    assert cost_usd("Anthropic", "no-such-model-xyz", u) is None
    assert cost_usd("Anthropic", None, u) is None


_junk = st.one_of(st.none(), st.integers(-5, 10**12), st.text(max_size=5), st.floats(),
                  st.booleans(), st.lists(st.integers(), max_size=2))


@given(st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens",
                                        "cache_read_tokens", "cache_creation_tokens", "model",
                                        "path"]), _junk),
       st.one_of(st.none(), st.sampled_from(["Anthropic", "OpenAi", "Nope"]), st.integers()))
def test_total_on_garbage(fields: dict[str, Any], provider: Any) -> None:
    u = usage(provider, fields)
    operation_name(fields)
    provider_name(provider)
    if u is not None:
        assert all(type(v) is int and v >= 0 for v in u.counts().values())
        model = fields.get("model")
        cost_usd(provider, model if isinstance(model, str) else None, u)
