"""Hostname -> provider classification and the rules files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.providers import ProvidersError, Rules, classify, default_rules, load_rules

CONTRACT_PROVIDERS = [
    "Anthropic", "OpenAi", "AzureOpenAi", "Gemini", "VertexAi", "Bedrock", "Mistral", "Cohere",
    "XAi", "DeepSeek", "Groq", "Together", "Perplexity", "Fireworks", "OpenRouter",
]  # fmt: skip


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("api.anthropic.com", "Anthropic"),
        ("claude.ai", "Anthropic"),
        ("api.openai.com", "OpenAi"),
        ("openai.com", "OpenAi"),
        ("myres.openai.azure.com", "AzureOpenAi"),
        ("generativelanguage.googleapis.com", "Gemini"),
        ("aiplatform.googleapis.com", "VertexAi"),
        ("us-central1-aiplatform.googleapis.com", "VertexAi"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "Bedrock"),
        ("bedrock.eu-west-3.amazonaws.com", "Bedrock"),
        ("api.mistral.ai", "Mistral"),
        ("api.cohere.ai", "Cohere"),
        ("api.cohere.com", "Cohere"),
        ("api.x.ai", "XAi"),
        ("api.deepseek.com", "DeepSeek"),
        ("api.groq.com", "Groq"),
        ("api.together.xyz", "Together"),
        ("api.together.ai", "Together"),
        ("api.perplexity.ai", "Perplexity"),
        ("api.fireworks.ai", "Fireworks"),
        ("openrouter.ai", "OpenRouter"),
        ("api.cerebras.ai", "Cerebras"),
        ("router.huggingface.co", "HuggingFace"),
    ],
)
def test_known_hosts(host: str, provider: str) -> None:
    assert classify(host) == provider


@pytest.mark.parametrize(
    "host",
    [
        "notopenai.com",
        "openai.com.evil.net",
        "storage.googleapis.com",
        "googleapis.com",
        "evilgenerativelanguage.googleapis.com",
        "s3.us-east-1.amazonaws.com",
        "bedrock-runtime.amazonaws.com",  # the pattern's * needs a label
        "bedrock-runtime.us-east-1.amazonaws.com.evil.net",
        "management.azure.com",
        "x.ai.example",
        "example.com",
        "com",
        "",
        ".",
        "api.openai.com..",
        "..api.openai.com",
        "api.openai.com:443",
        "api .openai.com",
        "аpi.openai.com",  # Cyrillic 'а'
        "xn--pi-7ed.openai.com.evil",
    ],
)
def test_not_a_provider(host: str) -> None:
    assert classify(host) is None


def test_case_and_trailing_dot() -> None:
    assert classify("API.OpenAI.COM") == "OpenAi"
    assert classify("api.anthropic.com.") == "Anthropic"


def test_none_and_non_ascii() -> None:
    assert classify(None) is None
    assert classify("ａpi.openai.com") is None  # fullwidth: no IDNA folding
    assert classify("api.openai.\u212aom") is None  # Kelvin sign lowercases to 'k'


def test_contract_providers_are_present() -> None:
    assert set(CONTRACT_PROVIDERS) <= set(default_rules().providers())


def test_hostnames_are_literal() -> None:
    rules = default_rules()
    assert rules.hostnames("Anthropic") == ["api.anthropic.com", "anthropic.com", "claude.ai"]
    assert rules.hostnames("Gemini")[0] == "generativelanguage.googleapis.com"
    assert rules.hostnames("Bedrock") == []  # patterns only
    assert rules.hostnames("NoSuchProvider") == []


def test_every_packaged_hostname_classifies_as_its_provider() -> None:
    rules = default_rules()
    for provider in rules.providers():
        for host in rules.hostnames(provider):
            assert rules.classify(host) == provider, host


def test_default_rules_cached() -> None:
    assert default_rules() is default_rules()


# -- user files -----------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return path


def test_user_rule_more_specific_wins(tmp_path: Path) -> None:
    rules = load_rules(
        write(tmp_path, '[[provider]]\nname = "Proxy"\nsuffixes = ["foo.openai.com"]\n')
    )
    assert rules.classify("foo.openai.com") == "Proxy"
    assert rules.classify("a.foo.openai.com") == "Proxy"
    assert rules.classify("api.openai.com") == "OpenAi"


def test_user_rule_beats_more_specific_packaged_rule(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, '[[provider]]\nname = "Corp"\nsuffixes = ["openai.com"]\n'))
    assert rules.classify("api.openai.com") == "Corp"
    assert "api.openai.com" not in rules.hostnames("OpenAi")
    assert rules.hostnames("Corp") == ["openai.com"]
    assert rules.classify("api.anthropic.com") == "Anthropic"


def test_user_rules_extend(tmp_path: Path) -> None:
    text = '[[provider]]\nname = "Local"\nsuffixes = ["LLM.Corp.Example."]\npatterns = ["gpu-*.corp"]\n'
    rules = load_rules(write(tmp_path, text))
    assert rules.classify("llm.corp.example") == "Local"
    assert rules.classify("gpu-7.corp") == "Local"
    assert rules.classify("gpu-7.x.corp") is None
    assert rules.hostnames("Local") == ["llm.corp.example"]
    assert rules.providers()[0] == "Local"
    assert "Anthropic" in rules.providers()


def test_replace_uses_only_the_user_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[provider]]\nname = "Only"\nsuffixes = ["only.example"]\n')
    rules = load_rules(path, replace=True)
    assert rules.providers() == ["Only"]
    assert rules.classify("api.anthropic.com") is None


def test_empty_user_file_is_allowed(tmp_path: Path) -> None:
    assert load_rules(write(tmp_path, ""), replace=True) == Rules(())


def test_longer_rule_wins_within_a_file(tmp_path: Path) -> None:
    text = (
        '[[provider]]\nname = "Broad"\nsuffixes = ["example.com"]\n'
        '[[provider]]\nname = "Narrow"\nsuffixes = ["api.example.com"]\n'
        '[[provider]]\nname = "Wild"\npatterns = ["*.example.com"]\n'
        '[[provider]]\nname = "Second"\nsuffixes = ["example.com"]\n'
    )
    rules = load_rules(write(tmp_path, text), replace=True)
    assert rules.classify("x.api.example.com") == "Narrow"
    assert rules.classify("api.example.com") == "Narrow"  # literal beats equal-length pattern
    assert rules.classify("web.example.com") == "Wild"
    assert rules.classify("example.com") == "Broad"  # earlier of two equal rules


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[[provider]\nname = 1", "invalid TOML"),
        ('provider = "x"', "array of tables"),
        ('[[providers]]\nname = "X"', "unknown key 'providers'"),
        ('[[provider]]\nsuffixes = ["a.com"]', "'name'"),
        ('[[provider]]\nname = ""\nsuffixes = ["a.com"]', "'name'"),
        ('[[provider]]\nname = "X"', "needs 'suffixes' or 'patterns'"),
        ('[[provider]]\nname = "X"\nsuffixes = "a.com"', "'suffixes' must be a list of strings"),
        ('[[provider]]\nname = "X"\nsuffixes = [1]', "'suffixes' must be a list of strings"),
        ('[[provider]]\nname = "X"\nsuffixes = ["*.a.com"]', "not a hostname suffix"),
        ('[[provider]]\nname = "X"\nsuffixes = ["bad host"]', "not a hostname suffix"),
        ('[[provider]]\nname = "X"\npatterns = ["a..b"]', "not a hostname pattern"),
        ('[[provider]]\nname = "X"\nsuffix = ["a.com"]', "unknown key 'suffix'"),
    ],
)
def test_malformed_user_file(tmp_path: Path, text: str, complaint: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProvidersError) as info:
        load_rules(path)
    message = str(info.value)
    assert str(path) in message
    assert complaint in message
    assert "\n" not in message


def test_missing_user_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ProvidersError, match="absent.toml: cannot read"):
        load_rules(path)


def test_non_utf8_user_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[provider]]\nname = "\xe9"\n')
    with pytest.raises(ProvidersError, match="latin1.toml: not UTF-8"):
        load_rules(path)


def test_providers_error_is_a_value_error() -> None:
    assert issubclass(ProvidersError, ValueError)


# -- property tests ------------------------------------------------------------


@given(st.text(max_size=300))
def test_random_strings_never_raise(host: str) -> None:
    result = classify(host)
    assert result is None or result in default_rules().providers()


@given(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
def test_prefixing_a_label_keeps_the_provider(label: str) -> None:
    assert classify(f"{label}.api.anthropic.com") == "Anthropic"
    assert classify(f"{label}api.anthropic.com.evil") is None


def test_cli_refuses_a_rules_file_others_can_write(tmp_path):
    import os

    import pytest

    from libobs.tool import options as cli
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    f = d / "providers.toml"
    f.write_text('[[provider]]\nname = "Corp"\nsuffixes = ["llm.corp.example"]\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(f, 0o644)
    if os.geteuid() == 0:
        assert cli.provider_rules(f).classify("llm.corp.example") == "Corp"
    os.chmod(f, 0o666)
    with pytest.raises(cli.UsageError, match="providers file .* writable by group or others"):
        cli.provider_rules(f, trusted_uid=os.geteuid())
