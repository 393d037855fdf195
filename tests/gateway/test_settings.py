"""Issue 6 item 7: the config reports an unknown key before a missing one, so a misspelt required key is
named as what it is (the one-line `key: reason` form of every config error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.settings import ConfigError, parse_settings

ISSUER = {"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/jwks"}


@pytest.mark.parametrize(("document", "message"), [
    ({"resources": [{"audiance": "https://mail.example.com", "scopes": ["mail.read"]}]},
     "resources[0].audiance: unknown key"),
    ({"subject_issuers": [{"isuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/j"}]},
     "subject_issuers[0].isuer: unknown key"),
    ({"trust_domains": [{"nmae": "example.org", "bundle_uri": "https://example.org/b"}]},
     "trust_domains[0].nmae: unknown key"),
    ({"subject_issuers": [ISSUER, {"jwks_uri": "https://x.example/j"}]}, "subject_issuers[1].issuer: required"),
])
def test_issue6_an_unknown_key_is_reported_before_a_missing_one(document: dict[str, Any], message: str,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, base=tmp_path)
    assert str(caught.value) == message
