"""The production web server: a real gunicorn with deploy/gunicorn.conf.py serves the admin,
static files (WhiteNoise, after collectstatic), the analytics endpoint; its access log never
carries a query string; X-Forwarded-Proto is believed only from the trusted proxy."""

import json
import urllib.error
import urllib.request

import pytest

from bench.http_server import Gunicorn, collectstatic

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url, data=None, headers=None):
    """(status, headers, body) without following redirects."""
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture(scope="module")
def static_root(tmp_path_factory, cluster_env):
    root = tmp_path_factory.mktemp("static")
    collectstatic(root, cluster_env)
    return root


@pytest.fixture
def gunicorn(cluster_env, static_root, tmp_path):
    started = []

    def start(**env):
        server = Gunicorn({**cluster_env, "STATIC_ROOT": str(static_root), **env}, workers=2, log_dir=tmp_path)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


def test_gunicorn_serves_admin_static_and_ingest_and_logs_no_query_string(gunicorn):
    server = gunicorn()
    status, _, body = fetch(server.url + "/admin/login/")
    assert status == 200 and b"csrfmiddlewaretoken" in body

    status, headers, body = fetch(server.url + "/static/admin/css/base.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and len(body) > 1000

    secret = "signature=0123456789abcdef&timestamp=1700000000&nonce=s3cr3tn0nce"
    from news.factories import NewsFactory

    event = json.dumps({"news_id": NewsFactory().pk, "event_type": "view"}).encode()  # unknown ids are dropped
    status, _, body = fetch(f"{server.url}/api/analytics/events?{secret}", data=event,
                            headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"})
    assert (status, json.loads(body)) == (202, {"accepted": 1, "dropped_unknown_news": 0})

    server.stop()  # flushes the access log
    log = server.access_log.read_text()
    assert '"POST /api/analytics/events HTTP/1.1" 202' in log
    assert "203.0.113.9" in log  # the client behind the proxy
    assert "/static/admin/css/base.css" in log
    for leak in ("0123456789abcdef", "s3cr3tn0nce", "signature", "?"):
        assert leak not in log, f"{leak!r} in the access log:\n{log}"


def test_forwarded_proto_is_trusted_only_from_the_proxy(gunicorn):
    # DJANGO_SECURE_SSL_REDIRECT=1: plain http is redirected to https, except the probes.
    trusted = gunicorn(DJANGO_SECURE_SSL_REDIRECT="1", DJANGO_SECURE_COOKIES="1")
    status, headers, _ = fetch(trusted.url + "/admin/login/")
    assert status == 301 and headers["Location"].startswith("https://")
    status, _, _ = fetch(trusted.url + "/admin/login/", headers={"X-Forwarded-Proto": "https"})
    assert status == 200  # the proxy (127.0.0.1 here) said https
    assert fetch(trusted.url + "/healthz")[0] == 200
    trusted.stop()

    # The same header from an address that is not the proxy's is ignored.
    untrusted = gunicorn(DJANGO_SECURE_SSL_REDIRECT="1", DJANGO_SECURE_COOKIES="1", GUNICORN_FORWARDED_ALLOW_IPS="192.0.2.1")
    status, headers, _ = fetch(untrusted.url + "/admin/login/", headers={"X-Forwarded-Proto": "https"})
    assert status == 301 and headers["Location"].startswith("https://")


def test_gunicorn_tells_systemd_it_is_ready(gunicorn, tmp_path):
    """nextevent-web.service is Type=notify: systemd waits for READY=1 on $NOTIFY_SOCKET."""
    import socket

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(60)
        gunicorn(NOTIFY_SOCKET=path)
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
    assert any(m.startswith("READY=1") for m in messages), messages
