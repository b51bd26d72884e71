"""URL ingest against a real local HTTP server, and the SSRF guard."""

from __future__ import annotations

import ipaddress

import pytest

import app.imaging.fetch as fetch_mod
from tests.helpers import encode, photo


def analyze_url(client, url, **flags):
    return client.post("/v1/analyze", json={"image": {"url": url, "image_id": "u"}, **flags})


@pytest.fixture
def open_client(client_factory):
    """ALLOW_PRIVATE_URLS=true: the local image server on 127.0.0.1 may be fetched."""
    return client_factory(allow_private_urls=True, max_image_mb=1, fetch_timeout_s=1.5, fetch_max_redirects=2)


def test_url_image_is_fetched_and_analysed(open_client, image_server):
    url = image_server.bytes("/astronaut.jpg", encode(photo("astronaut")))
    r = analyze_url(open_client, url)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["source_url"] == url and res["width_px"] == 512 and res["blur"]["status"] == "ok"
    assert "fetch_ms" in res["timings_ms"]


def test_format_is_sniffed_not_taken_from_content_type(open_client, image_server):
    url = image_server.bytes("/pic", encode(photo("coffee"), "PNG"), content_type="text/plain")
    r = analyze_url(open_client, url)
    assert r.status_code == 200 and r.json()["result"]["format"] == "PNG"
    url = image_server.bytes("/fake.jpg", b"<html>not an image</html>", content_type="image/jpeg")
    r = analyze_url(open_client, url)
    assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"


def test_redirects_are_followed_within_the_limit(open_client, image_server):
    target = image_server.bytes("/final.jpg", encode(photo("chelsea")))
    hop2 = image_server.redirect("/hop2", target)
    hop1 = image_server.redirect("/hop1", hop2, status=301)
    r = analyze_url(open_client, hop1)
    assert r.status_code == 200 and r.json()["result"]["source_url"] == target
    hop3 = image_server.redirect("/hop3", hop1)  # 3 redirects > FETCH_MAX_REDIRECTS=2
    r = analyze_url(open_client, hop3)
    assert r.status_code == 502 and r.json()["error"]["type"] == "unreachable_url"
    assert "redirect" in r.json()["error"]["message"].lower()


def test_upstream_errors_map_to_502(open_client, image_server):
    r = analyze_url(open_client, image_server.status("/gone", 404))
    assert r.status_code == 502 and r.json()["error"]["type"] == "unreachable_url"
    assert r.json()["error"]["detail"]["status_code"] == 404
    closed = image_server.url("/x").replace(str(image_server.port), "1")  # nothing listens on port 1
    r = analyze_url(open_client, closed)
    assert r.status_code == 502 and r.json()["error"]["type"] == "unreachable_url"


def test_declared_size_over_limit_is_refused_before_reading(open_client, image_server):
    r = analyze_url(open_client, image_server.lying_length("/huge", 50 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["type"] == "image_too_large"
    assert r.json()["error"]["detail"]["declared_bytes"] == 50 * 1024 * 1024


def test_streamed_size_over_limit_stops_reading(open_client, image_server):
    big = encode(photo("astronaut"), "PNG") * 3  # > 1 MiB, sent chunked with no Content-Length
    assert len(big) > 1024 * 1024
    r = analyze_url(open_client, image_server.bytes("/chunked", big, declare_length=False))
    assert r.status_code == 413 and r.json()["error"]["type"] == "image_too_large"


def test_slow_server_times_out(open_client, image_server):
    r = analyze_url(open_client, image_server.slow("/slow", encode(photo("coffee")), delay_s=4))
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"


def test_non_http_schemes_are_refused(client):
    for url in ("file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "data:image/png;base64,AAAA"):
        r = analyze_url(client, url)
        assert r.status_code == 400 and r.json()["error"]["type"] == "url_not_allowed", url


@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "[::1]", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "224.0.0.1", "240.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]",
    "[fe80::1]", "[fc00::1]", "[64:ff9b::7f00:1]", "2130706433", "0x7f000001", "0177.0.0.1", "127.1",
])
def test_guard_refuses_non_public_addresses_by_default(client, image_server, host):
    """Refused before any connection is made (no traffic leaves for these addresses)."""
    port = image_server.port
    r = analyze_url(client, f"http://{host}:{port}/astronaut.jpg")
    assert r.status_code == 400, (host, r.text)
    assert r.json()["error"]["type"] == "url_not_allowed"
    assert image_server.hits == []


def test_guard_rechecks_every_redirect_hop(client_factory, image_server, monkeypatch):
    """A public-looking first hop that redirects to a private or metadata address is refused."""
    real = fetch_mod.address_refusal

    def policy(addr):  # treat 127.0.0.1 (our test server) as if it were a public host
        return None if addr == ipaddress.ip_address("127.0.0.1") else real(addr)

    monkeypatch.setattr(fetch_mod, "address_refusal", policy)
    c = client_factory()
    ok = image_server.bytes("/ok.jpg", encode(photo("coffee")))
    assert analyze_url(c, ok).status_code == 200
    for i, target in enumerate([f"http://127.0.0.2:{image_server.port}/ok.jpg",
                                "http://169.254.169.254/latest/meta-data/",
                                f"http://[::1]:{image_server.port}/ok.jpg",
                                f"http://2130706434:{image_server.port}/ok.jpg"]):
        hop = image_server.redirect(f"/evil{i}", target)
        r = analyze_url(c, hop)
        assert r.status_code == 400 and r.json()["error"]["type"] == "url_not_allowed", (target, r.text)


def test_address_policy_unit():
    bad = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:10.0.0.1", "2002:7f00:1::", "fd00::1",
           "0.0.0.0", "::", "255.255.255.255", "198.18.0.1"]
    good = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    for a in bad:
        assert fetch_mod.address_refusal(ipaddress.ip_address(a)) is not None, a
    for a in good:
        assert fetch_mod.address_refusal(ipaddress.ip_address(a)) is None, a
    assert str(fetch_mod.parse_ip_literal("2130706433")) == "127.0.0.1"
    assert str(fetch_mod.parse_ip_literal("0x7f.1")) == "127.0.0.1"
    assert fetch_mod.parse_ip_literal("example.com") is None
