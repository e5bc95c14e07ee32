"""contract/settings.py: defaults, validation naming the variable, the docs table, masked secrets."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from contract.errors import (
    ConfigError,
)
from contract.settings import LOCAL_BASE_URL, LOCAL_MODEL, SECTIONS, Secret, Settings, redact_url

ROOT = Path(__file__).resolve().parent.parent


def test_settings_default_to_the_offline_server_without_a_key() -> None:
    s = Settings.from_env({})
    assert s.openai_base_url == LOCAL_BASE_URL and s.model == LOCAL_MODEL
    s = Settings.from_env({"OPENAI_API_KEY": "sk-x"})
    assert s.openai_base_url == "https://api.openai.com/v1" and s.model == "gpt-4o-mini"
    s = Settings.from_env({"OPENAI_BASE_URL": "http://vllm:8000/v1/", "SUMMARIZE_MODEL": "llama"})
    assert s.openai_base_url == "http://vllm:8000/v1" and s.model == "llama"


def test_settings_reject_bad_values_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="SUMMARIZE_RPM='lots' is not a int"):
        Settings.from_env({"SUMMARIZE_RPM": "lots"})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": "http://nope"})
    with pytest.raises(ConfigError, match="SUMMARIZE_ALLOW_EVICTION"):
        Settings.from_env({"SUMMARIZE_ALLOW_EVICTION": "maybe"})
    with pytest.raises(ConfigError, match="SUMMARIZE_LEASE_SECONDS=0"):
        Settings.from_env({"SUMMARIZE_LEASE_SECONDS": "0"})
    # Every way a Settings is made is validated, not only from_env.
    with pytest.raises(ConfigError, match="SUMMARIZE_MAX_WORDS"):
        Settings.from_dsn("redis://h:1/0", max_words=0)
    with pytest.raises(ConfigError, match="SUMMARIZE_KEY_PREFIX"):
        Settings(key_prefix="a:b")


def test_every_setting_is_in_the_docs_configuration_table() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z_]+)`", readme, re.MULTILINE))
    documented |= {
        v
        for row in re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)+) \|", readme, re.MULTILINE)
        for v in re.findall(r"`([A-Z_]+)`", row)
    }
    missing = set(Settings.variables()) - documented
    assert not missing, f"settings missing from docs/configuration.md's table: {sorted(missing)}"


def test_secrets_are_masked_everywhere_settings_are_shown() -> None:
    s = Settings.from_env({"OPENAI_API_KEY": "sk-secret-1", "REDIS_URL": "redis://u:pw-secret@h:1/0"})
    shown = repr(s) + str(s.public())
    assert "sk-secret-1" not in shown and "pw-secret" not in shown
    assert repr(Secret("x")) == "Secret('***')"
    assert redact_url("rediss://u:p@h:6380/0") == "rediss://u:***@h:6380/0"


def test_every_setting_is_in_exactly_one_section() -> None:
    owners: dict[str, list[str]] = {}
    for name, kind in SECTIONS.items():
        for f in fields(kind):
            owners.setdefault(f.name, []).append(name)
    assert {f.name for f in fields(Settings)} == set(owners), "a setting in no section, or a section's stray field"
    assert all(len(v) == 1 for v in owners.values()), {k: v for k, v in owners.items() if len(v) > 1}


def test_a_section_reads_the_settings_it_was_built_from() -> None:
    s = Settings(defer_base=3.0, rpm=7, batch_linger=2.0)
    assert (s.retry.defer_base, s.limits.rpm, s.batch_mode.batch_linger) == (3.0, 7, 2.0)
