import ipaddress
import socket

import pytest

from libobs.guard.denyfile import parse_egress
from libobs.guard.policy import DenyListPolicy, ProviderPolicy, Verdict
from tests.support.providers import small_rules

ip = ipaddress.ip_address


RULES = small_rules({"Anthropic": ["anthropic.com"], "OpenAi": ["openai.com", "api.openai.com"],
                     "Mistral": ["mistral.ai"]})


def provider_policy(allow=("Anthropic",), deny_unclassified=False, **kw):
    return ProviderPolicy(set(allow), deny_unclassified, RULES, **kw)


def test_both_policies_answer_egress_with_a_verdict():
    policies = [provider_policy(), DenyListPolicy()]
    assert all(isinstance(p.egress(ip("1.1.1.1"), 443, None), Verdict) for p in policies)


def test_allowed_provider_passes():
    v = provider_policy().egress(ip("1.1.1.1"), 443, "API.Anthropic.com.")
    assert v == Verdict(True, "provider:Anthropic allowed", "obs-enforce")


def test_known_provider_not_allowed_is_denied_with_its_name():
    v = provider_policy(guard="g").egress(ip("1.1.1.1"), 443, "api.openai.com")
    assert v == Verdict(False, "provider:OpenAi not allowed", "g")


def test_suffix_lookalike_is_unclassified_not_openai():
    assert provider_policy().egress(ip("1.1.1.1"), 443, "notopenai.com").allow


@pytest.mark.parametrize("deny", [False, True])
def test_unclassified_follows_deny_unclassified(deny):
    policy = provider_policy(deny_unclassified=deny)
    for host in ("example.org", None, "not a host!"):
        v = policy.egress(ip("93.184.216.34"), 443, host)
        assert v.allow is not deny
        assert v.rule == ("policy:deny-unclassified" if deny else None)


def test_learned_dns_answer_attributes_a_bare_address():
    policy = provider_policy(deny_unclassified=True)
    policy.learn("api.openai.com", ["104.18.6.192", "2606:4700::6812:6c0", "cname.example."])
    policy.learn("claude.anthropic.com", [ip("160.79.104.10")])
    assert policy.egress(ip("104.18.6.192"), 443, None).rule == "provider:OpenAi not allowed"
    assert not policy.egress(ip("2606:4700::6812:6c0"), 443, None).allow
    assert policy.egress(ip("160.79.104.10"), 443, None).allow
    # A host named by the connection itself (SNI) beats what DNS taught us.
    assert policy.egress(ip("104.18.6.192"), 443, "api.anthropic.com").allow


def test_learned_mapping_is_a_bounded_lru():
    policy = provider_policy(deny_unclassified=True, max_learned=2)
    policy.learn("api.openai.com", ["10.0.0.1"])
    policy.learn("api.openai.com", ["10.0.0.2"])
    assert policy.host_for(ip("10.0.0.1")) == "api.openai.com"  # now most recently used
    policy.learn("api.openai.com", ["10.0.0.3"])
    assert policy.host_for(ip("10.0.0.2")) is None
    assert policy.host_for(ip("10.0.0.1")) == "api.openai.com"
    assert policy.host_for(ip("10.0.0.3")) == "api.openai.com"


def test_allow_names_are_case_insensitive_and_typos_rejected():
    assert provider_policy(allow={"openai", "ANTHROPIC"}).allowed == {"OpenAi", "Anthropic"}
    with pytest.raises(ValueError, match=r"unknown provider\(s\) Antrhopic; known: .*Anthropic"):
        provider_policy(allow={"Antrhopic"})


def test_unapproved_hostnames_are_every_disallowed_providers_names():
    assert provider_policy(allow={"OpenAi"}).unapproved_hostnames() == [
        "anthropic.com",
        "mistral.ai",
    ]
    assert provider_policy(allow=RULES.providers()).unapproved_hostnames() == []


def test_real_rules_fit_the_interface():
    providers = pytest.importorskip("libobs.providers")
    rules = providers.load_rules()
    policy = ProviderPolicy({"Anthropic"}, True, rules)
    assert policy.egress(ip("1.1.1.1"), 443, "api.anthropic.com").allow
    assert policy.egress(ip("1.1.1.1"), 443, "api.openai.com").rule == "provider:OpenAi not allowed"
    assert "api.openai.com" in policy.unapproved_hostnames()


# --- DenyListPolicy ----------------------------------------------------------------------


def fake_resolver(answers):
    def resolve(host):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip(a) for a in answers[host]]

    return resolve


def deny_list(egress="", answers=None):
    return DenyListPolicy(
        parse_egress(egress)[0],
        resolver=fake_resolver(answers or {}),
        guard="obs-fileguard",
    )


def test_literal_and_resolved_addresses_are_denied_with_their_line():
    policy = deny_list(
        "198.51.100.7  # bad box\nevil.example\n2001:db8::9\n",
        answers={"evil.example": ["203.0.113.5", "2001:db8::5", "198.51.100.7"]},
    )
    assert policy.ip_rules() == {
        (ip("198.51.100.7"), "198.51.100.7  # bad box"),  # literal line wins the shared address
        (ip("2001:db8::9"), "2001:db8::9"),
        (ip("203.0.113.5"), "evil.example"),
        (ip("2001:db8::5"), "evil.example"),
    }
    assert policy.egress(ip("203.0.113.5"), 80, None) == Verdict(
        False, "evil.example", "obs-fileguard"
    )
    assert policy.egress(ip("192.0.2.1"), 443, None) == Verdict(True, None, "obs-fileguard")


def test_unresolvable_host_is_reported_and_still_matched_by_name():
    policy = deny_list("\ngone.example\n")
    assert [(e.lineno, e.line) for e in policy.resolve_errors] == [(2, "gone.example")]
    assert "cannot resolve" in policy.resolve_errors[0].reason
    assert policy.ip_rules() == set()
    assert not policy.egress(ip("192.0.2.1"), 443, "Gone.Example.").allow
    assert policy.egress(ip("192.0.2.1"), 443, "sub.gone.example").allow  # hosts, not domains


def test_default_resolver_returns_addresses_of_localhost():
    from libobs.guard.policy import resolve

    assert ip("127.0.0.1") in resolve("localhost")
