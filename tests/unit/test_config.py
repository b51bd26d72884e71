"""Every setting is documented in .env.example and read somewhere in the code."""

from __future__ import annotations

import re

from app.core.config import Settings
from tests.helpers import PROJECT_ROOT


def documented() -> set[str]:
    text = (PROJECT_ROOT / ".env.example").read_text()
    return {m.group(1).lower() for m in re.finditer(r"^([A-Z0-9_]+)=", text, re.M)}


def code_text() -> str:
    files = [p for p in (PROJECT_ROOT / "app").rglob("*.py") if p.name != "config.py"]
    files += list((PROJECT_ROOT / "scripts").glob("*.py"))
    return "\n".join(p.read_text() for p in files) + (PROJECT_ROOT / "app/core/config.py").read_text().split("# --- derived")[1]


def test_every_setting_is_in_env_example():
    fields = set(Settings.model_fields)
    missing = fields - documented()
    assert not missing, f"not in .env.example: {sorted(missing)}"
    extra = documented() - fields - {"openai_api_key", "anthropic_api_key", "gemini_api_key"}
    assert not extra, f".env.example names unknown settings: {sorted(extra)}"


def test_every_setting_is_read_by_the_code():
    text = code_text()
    unused = [f for f in Settings.model_fields if not re.search(rf"\b{f}\b", text)]
    assert not unused, f"settings nothing reads: {unused}"


def test_defaults_in_env_example_match_the_code():
    text = (PROJECT_ROOT / ".env.example").read_text()
    s = Settings(_env_file=None)
    for m in re.finditer(r"^([A-Z0-9_]+)=(.*)$", text, re.M):
        name, value = m.group(1).lower(), m.group(2).strip()
        if name not in Settings.model_fields:
            continue
        expected = getattr(s, name)
        parsed = Settings(_env_file=None, **{name: value}) if value else None
        got = getattr(parsed, name) if parsed is not None else ""
        assert str(got) == str(expected) or (not value and expected is None), (name, value, expected)


def test_client_ip_walks_forwarded_for_from_the_right():
    from app.core.ratelimit import client_ip, parse_networks

    proxies = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert client_ip("127.0.0.1", ["1.2.3.4"], []) == "127.0.0.1"  # nobody trusted
    assert client_ip("203.0.113.5", ["1.2.3.4"], proxies) == "203.0.113.5"  # peer is no proxy
    assert client_ip("127.0.0.1", ["6.6.6.6, 1.2.3.4, 10.1.1.1"], proxies) == "1.2.3.4"
    assert client_ip("127.0.0.1", ["6.6.6.6", "1.2.3.4"], proxies) == "1.2.3.4"  # several headers
    assert client_ip("127.0.0.1", [], proxies) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["10.2.2.2"], proxies) == "10.2.2.2"  # only proxies: the left-most
    assert client_ip("198.51.100.1", ["1.2.3.4"], parse_networks("*")) == "1.2.3.4"


def test_loupe_prefix_wins_and_can_be_required(monkeypatch, tmp_path):
    """LOUPE_NAME beats NAME; with LOUPE_ENV_PREFIX_ONLY a generic NAME meant for another program is ignored,
    in the environment and in the .env file."""
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("BLUR_THRESHOLD", "55")
    assert Settings(_env_file=None).device == "cuda"
    monkeypatch.setenv("LOUPE_DEVICE", "cpu")
    s = Settings(_env_file=None)
    assert s.device == "cpu" and s.blur_threshold == 55
    env = tmp_path / ".env"
    env.write_text("MAX_BATCH_SIZE=7\nLOUPE_QUALITY_MIN=0.7\nLOUPE_BLUR_THRESHOLD=90\n")
    s = Settings(_env_file=env)
    assert s.max_batch_size == 7 and s.quality_min == 0.7 and s.blur_threshold == 55  # the environment wins
    monkeypatch.setenv("LOUPE_ENV_PREFIX_ONLY", "true")
    s = Settings(_env_file=env)
    assert s.device == "cpu" and s.blur_threshold == 90 and s.max_batch_size == 32 and s.quality_min == 0.7
    monkeypatch.delenv("LOUPE_DEVICE")
    assert Settings(_env_file=None).device == "auto"
