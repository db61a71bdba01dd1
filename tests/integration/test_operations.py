"""Operations through the real CLI: admin endpoints and metrics, drain, reload, workers.

Every test starts ``atls-proxy serve`` (and ``connect`` where needed) as subprocesses on
127.0.0.1 and drives it from outside: HTTP on the admin port, real attested connections, real
signals.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atls_proxy.ops import devinit
from tests.integration.conftest import (
    attester_variant,
    dev_init,
    start_backend,
    start_client,
    start_server,
)
from tests.support.procs import Proc, Procs, free_port, run_cli, wait_port

pytestmark = pytest.mark.integration


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent): the series named
    ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name:
            continue
        got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
        if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0


def wait_until(cond, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def curl_through(client_port: int, path: str = "/hello.txt") -> str:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{client_port}{path}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def served_cert_sha256(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


class SlowHandler(BaseHTTPRequestHandler):
    """GET /slow?s answers after s seconds; everything else at once."""

    in_flight = 0  # slow requests being served; each fixture uses its own subclass

    def do_GET(self) -> None:
        cls = type(self)
        if self.path.startswith("/slow"):
            cls.in_flight += 1
            try:
                time.sleep(float(self.path.partition("?")[2] or "1"))
            finally:
                cls.in_flight -= 1
        body = b"slow done\n" if self.path.startswith("/slow") else b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


SLOW: type[SlowHandler] = SlowHandler  # the current test's handler class (set by the fixture)


@pytest.fixture
def slow_backend() -> int:
    global SLOW
    SLOW = type("SlowHandlerForTest", (SlowHandler,), {"in_flight": 0})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), SLOW)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]  # type: ignore[misc]
    srv.shutdown()
    srv.server_close()


def variant(dev: Path, name: str, server: str = "", extra: str = "") -> Path:
    text = (dev / "serve.toml").read_text()
    text = text.replace("[server]\n", "[server]\n" + server.strip() + "\n", 1) + "\n" + extra
    out = dev / f"serve-{name}.toml"
    out.write_text(text)
    return out


def background_curl(client_port: int, path: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{client_port}{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def serve_with_admin(
    ps: Procs, dev: Path, config: Path, backend_port: int, *extra: str
) -> tuple[Proc, int, int, int]:
    """``serve --admin`` and a ``connect`` in front of it: (server, server port, admin port,
    client port), both listening."""
    admin = free_port()
    server, sport = start_server(ps, config, backend_port, "--admin", f"127.0.0.1:{admin}", *extra)
    wait_port(admin, server)
    _, cport = start_client(ps, dev / "connect.toml", sport)
    return server, sport, admin, cport


# --- admin endpoints and metrics ------------------------------------------------------------------


def test_admin_endpoints_and_counters_move(tmp_path: Path, ps: Procs) -> None:
    dev = dev_init(tmp_path / "dev")
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("hello through atls-proxy\n")
    _, bport = start_backend(ps, www)
    server, sport, admin, cport = serve_with_admin(
        ps, dev, dev / "serve.toml", bport, "--log-format", "json"
    )

    assert get(admin, "/healthz") == (200, "ok\n")
    wait_until(lambda: get(admin, "/readyz")[0] == 200, what="/readyz 200")
    before = get(admin, "/metrics")[1]
    for _ in range(3):
        assert curl_through(cport) == "hello through atls-proxy\n"
    wait_until(
        lambda: (
            metric(
                get(admin, "/metrics")[1], "atls_proxy_connections_closed_total", reason="completed"
            )
            >= 3
        ),
        what="3 completed connections in the metrics",
    )
    after = get(admin, "/metrics")[1]
    assert (
        metric(after, "atls_proxy_connections_accepted_total")
        >= metric(before, "atls_proxy_connections_accepted_total") + 3
    )
    assert metric(after, "atls_proxy_attestation_successes_total") >= 3
    assert metric(after, "atls_proxy_tls_handshakes_total", result="ok") >= 3
    assert metric(after, "atls_proxy_forwarded_bytes_total", direction="to_client") > 0
    assert (
        metric(
            after, "atls_proxy_evidence_duration_seconds_count", attester="software", tier="strict"
        )
        >= 3
    )
    assert metric(after, "atls_proxy_quote_duration_seconds_count", attester="software") >= 3

    # A plain TLS client (no Expat) is refused: a failure counted under its check.
    ctx = ssl.create_default_context(cafile=str(dev / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", sport), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            data = tls.recv(100)
        except (OSError, ssl.SSLError):
            data = b""
        assert data == b""
    wait_until(
        lambda: (
            metric(
                get(admin, "/metrics")[1],
                "atls_proxy_attestation_failures_total",
                check="expat.preamble",
            )
            >= 1
        ),
        what="the refused plain client in the failure counter",
    )

    code, body = get(admin, "/status")
    status = json.loads(body)
    assert code == 200 and status["role"] == "server" and status["tier"] == "strict"
    assert status["ready"] is True and len(status["config_revision"]) == 16
    assert status["last_reload"]["generation"] == 0

    # JSON logs: one event per connection outcome, with the peer and the failed check.
    events = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    outcomes = [e for e in events if e.get("event") == "connection"]
    assert any(e["result"] == "attested" and e["duration_ms"] >= 0 for e in outcomes)
    assert any(
        e.get("check") == "expat.preamble" and e["peer"].startswith("127.0.0.1:") for e in outcomes
    )


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("--listen", "--listen"),
        ("--admin", "--admin"),
        ("--admin --workers", "--admin"),  # the supervisor serves the admin endpoints
        ("server.listen", "server.listen"),
        ("admin.listen", "admin.listen"),
    ],
)
def test_an_address_in_use_is_a_configuration_error(tmp_path: Path, where: str, key: str) -> None:
    """exit 2 naming what set the address (the flag, or the file's key) and the address, not a
    traceback and exit 1 (which Restart=on-failure would restart in a loop)."""
    dev = dev_init(tmp_path / "dev")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv: list[str] = []
        config = dev / "serve.toml"
        if where.startswith("--"):
            flag, *more = where.split()
            addresses = {"--listen": f"127.0.0.1:{free_port()}", flag: f"127.0.0.1:{port}"}
            argv = [a for pair in addresses.items() for a in pair]
            if more:
                argv += [*more, "2"]
        else:
            table = where.split(".")[0]
            text = config.read_text()
            if table == "server":
                # (the first listen key of the file is [server]'s)
                text = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', text, count=1)
            else:
                argv = ["--listen", f"127.0.0.1:{free_port()}"]
                text = re.sub(r"(?m)^\[admin\]\n(listen = .*\n)?", "", text)
                text += f'\n[admin]\nlisten = "127.0.0.1:{port}"\n'
            config = dev / "serve-taken.toml"
            config.write_text(text)
        res = run_cli(
            "serve", "--config", str(config), "--backend", "127.0.0.1:9", *argv, timeout=30
        )
    assert res.returncode == 2, res.stderr
    assert f"configuration error: {key}" in res.stderr, res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "Traceback" not in res.stderr


# --- drain ---------------------------------------------------------------------------------------


def test_sigterm_drains_readiness_false_and_exit_0(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    dev = dev_init(tmp_path / "dev")
    server, sport, admin, cport = serve_with_admin(ps, dev, dev / "serve.toml", slow_backend)
    wait_until(lambda: get(admin, "/readyz")[0] == 200, what="ready")

    slow = background_curl(cport, "/slow?2")
    wait_until(lambda: SLOW.in_flight >= 1, what="the slow request at the backend")
    server.popen.send_signal(signal.SIGTERM)
    wait_until(
        lambda: get(admin, "/readyz")[0] == 503, timeout=5, what="/readyz 503 while draining"
    )
    assert "draining" in get(admin, "/readyz")[1]
    # No new connections while draining.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sport), timeout=2).close()
    out, err = slow.communicate(timeout=30)
    assert slow.returncode == 0 and out == "slow done\n", err  # the open connection finished
    assert server.popen.wait(20) == 0, server.output()
    assert "drained: every connection finished" in server.output()


def test_drain_timeout_closes_the_rest_exit_3(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    dev = dev_init(tmp_path / "dev")
    cfg = variant(dev, "drain", "drain_timeout = 1")
    server, sport = start_server(ps, cfg, slow_backend)
    _, cport = start_client(ps, dev / "connect.toml", sport)
    slow = background_curl(cport, "/slow?20")
    wait_until(lambda: SLOW.in_flight >= 1, what="the slow request at the backend")
    t0 = time.monotonic()
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(20) == 3, server.output()
    assert time.monotonic() - t0 < 10
    slow.communicate(timeout=30)
    assert slow.returncode != 0  # it was cut, and the client saw it
    assert "drain timeout: closed 1 connection(s)" in server.output()


def test_second_signal_forces_exit_4(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    dev = dev_init(tmp_path / "dev")
    server, sport = start_server(ps, dev / "serve.toml", slow_backend)
    _, cport = start_client(ps, dev / "connect.toml", sport)
    slow = background_curl(cport, "/slow?20")
    wait_until(lambda: SLOW.in_flight >= 1, what="the slow request at the backend")
    server.popen.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.alive()  # draining, waiting for the slow connection
    server.popen.send_signal(signal.SIGINT)
    assert server.popen.wait(20) == 4, server.output()
    slow.communicate(timeout=30)


def test_sigterm_during_attestation_lets_it_finish(tmp_path: Path, ps: Procs) -> None:
    """A connection in the middle of a slow quote is not dropped by the drain: it completes."""
    dev = dev_init(tmp_path / "dev")
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("hello\n")
    _, bport = start_backend(ps, www)
    cfg = attester_variant(dev, "slowquote", quote_ms=1500)
    server, sport = start_server(ps, cfg, bport)
    _, cport = start_client(ps, dev / "connect.toml", sport)
    req = background_curl(cport, "/hello.txt")
    time.sleep(0.7)  # handshake done, the quote is in progress
    server.popen.send_signal(signal.SIGTERM)
    out, err = req.communicate(timeout=30)
    assert req.returncode == 0 and out == "hello\n", err
    assert server.popen.wait(20) == 0, server.output()


# --- reload -------------------------------------------------------------------------------------


def _new_leaf(dev: Path, out_dir: Path) -> tuple[Path, Path, str]:
    ca = x509.load_pem_x509_certificate((dev / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((dev / "ca-key.pem").read_bytes(), None)
    leaf, key = devinit._leaf(ca, ca_key, datetime.datetime.now(datetime.UTC).replace(tzinfo=None))  # type: ignore[arg-type]
    cert_p, key_p = out_dir / "new-server.pem", out_dir / "new-server-key.pem"
    cert_p.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    return cert_p, key_p, hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("tier", ["strict", "cached"])
def test_sighup_swaps_certificate_open_connection_undisturbed(
    tmp_path: Path, ps: Procs, slow_backend: int, tier: str
) -> None:
    dev = dev_init(tmp_path / "dev")
    cfg = attester_variant(dev, "reload", tier=tier)
    server, sport, admin, cport = serve_with_admin(ps, dev, cfg, slow_backend)
    old_fp = served_cert_sha256(sport, dev / "ca.pem")

    slow = background_curl(cport, "/slow?3")  # open across the reload
    wait_until(lambda: SLOW.in_flight >= 1, what="the slow request at the backend")
    new_cert, new_key, new_fp = _new_leaf(dev, tmp_path)
    (dev / "server.pem").write_bytes(new_cert.read_bytes())
    (dev / "server-key.pem").write_bytes(new_key.read_bytes())
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["last_reload"]["ok"] is True,
        what="a successful reload",
    )
    assert served_cert_sha256(sport, dev / "ca.pem") == new_fp != old_fp
    assert curl_through(cport, "/hello") == "hello\n"  # attested on the new certificate
    out, err = slow.communicate(timeout=30)
    assert slow.returncode == 0 and out == "slow done\n", err  # the old connection carried on
    assert metric(get(admin, "/metrics")[1], "atls_proxy_reloads_total", result="success") >= 2


def test_broken_reload_keeps_old_state_and_reports_it(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    dev = dev_init(tmp_path / "dev")
    server, sport, admin, cport = serve_with_admin(ps, dev, dev / "serve.toml", slow_backend)
    old_fp = served_cert_sha256(sport, dev / "ca.pem")

    # 1. a key that does not match the certificate
    _, other_key, _ = _new_leaf(dev, tmp_path)
    good_key = (dev / "server-key.pem").read_bytes()
    (dev / "server-key.pem").write_bytes(other_key.read_bytes())
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["last_reload"]["ok"] is False,
        what="the failed reload in /status",
    )
    status = json.loads(get(admin, "/status")[1])
    assert "does not match the certificate" in status["last_reload"]["error"]
    assert served_cert_sha256(sport, dev / "ca.pem") == old_fp
    assert curl_through(cport, "/hello") == "hello\n"  # still serving, still attesting
    text = get(admin, "/metrics")[1]
    assert metric(text, "atls_proxy_reloads_total", result="failure") == 1
    assert metric(text, "atls_proxy_config_last_reload_successful") == 0
    assert get(admin, "/readyz")[0] == 200  # the old state is fine: still ready

    # 2. a missing file, 3. an unparsable config
    (dev / "server-key.pem").write_bytes(good_key)
    (dev / "server.pem").rename(dev / "server.pem.moved")
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: (
            metric(get(admin, "/metrics")[1], "atls_proxy_reloads_total", result="failure") == 2
        ),
        what="the second failed reload",
    )
    (dev / "server.pem.moved").rename(dev / "server.pem")
    original = (dev / "serve.toml").read_text()
    (dev / "serve.toml").write_text(original + "\n[server\n")
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: (
            metric(get(admin, "/metrics")[1], "atls_proxy_reloads_total", result="failure") == 3
        ),
        what="the third failed reload",
    )
    assert "not valid TOML" in json.loads(get(admin, "/status")[1])["last_reload"]["error"]
    assert curl_through(cport, "/hello") == "hello\n"
    # Fixed files: the next reload succeeds.
    (dev / "serve.toml").write_text(original)
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["last_reload"]["ok"] is True,
        what="recovery",
    )
    assert metric(get(admin, "/metrics")[1], "atls_proxy_config_last_reload_successful") == 1
    assert server.output().count("reload failed") == 3


def test_reload_interval_picks_up_a_changed_file(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    dev = dev_init(tmp_path / "dev")
    cfg = variant(dev, "timer", "reload_interval = 1")
    server, sport = start_server(ps, cfg, slow_backend)
    new_cert, new_key, new_fp = _new_leaf(dev, tmp_path)
    time.sleep(1.2)
    (dev / "server-key.pem").write_bytes(new_key.read_bytes())
    (dev / "server.pem").write_bytes(new_cert.read_bytes())
    wait_until(
        lambda: served_cert_sha256(sport, dev / "ca.pem") == new_fp,
        timeout=10,
        what="the timer reload",
    )
    assert "reloaded (file change)" in server.output()


def test_a_file_changed_during_a_slow_start_is_reloaded_once_up(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    """The cached tier's first quote takes 2 s before the listener opens; the certificate is
    renewed meanwhile. The watcher starts from the files as the service read them, so it loads
    the renewal once up — it used to take the renewed files for the loaded ones and serve the old
    certificate until the next change."""
    dev = dev_init(tmp_path / "dev")
    cfg = attester_variant(dev, "slow-timer", tier="cached", quote_ms=2000)
    cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nreload_interval = 1\n", 1))
    new_cert, new_key, new_fp = _new_leaf(dev, tmp_path)
    port = free_port()
    server = ps.cli(
        "serve-slow-timer",
        "serve",
        "--config",
        str(cfg),
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        f"127.0.0.1:{slow_backend}",
    )
    wait_until(lambda: "SIMULATED software attester" in server.output(), what="the attester")
    (dev / "server-key.pem").write_bytes(new_key.read_bytes())  # while the first quote runs
    (dev / "server.pem").write_bytes(new_cert.read_bytes())
    wait_port(port, server, timeout=30)
    wait_until(
        lambda: served_cert_sha256(port, dev / "ca.pem") == new_fp,
        timeout=15,
        what="the renewal made during start-up to be loaded",
    )
    assert "reloaded (file change)" in server.output()


def test_client_side_reload_swaps_policy(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    """connect: a policy that no longer accepts the server takes effect for new connections."""
    dev = dev_init(tmp_path / "dev")
    _, sport = start_server(ps, dev / "serve.toml", slow_backend)
    client, cport = start_client(ps, dev / "connect.toml", sport)
    assert curl_through(cport, "/hello") == "hello\n"
    policy = dev / "policy.toml"
    text = policy.read_text()
    assert "allow_simulated = true" in text
    policy.write_text(text.replace("allow_simulated = true", "allow_simulated = false"))
    client.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded (SIGHUP)" in client.output(), what="the client reload")
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{cport}/hello"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout == ""  # refused: the new policy does not accept simulated evidence
    assert "attestation failed" in client.output()
    assert "check=evidence.simulated-allowed" in client.output()


# --- workers ------------------------------------------------------------------------------------


def _start_workers(ps: Procs, dev: Path, sport: int, backend_port: int, *extra: str) -> Proc:
    """``serve --workers 2`` on ``sport`` in front of ``backend_port``, not waited for."""
    return ps.cli(
        "serve-workers",
        "serve",
        "--config",
        str(dev / "serve.toml"),
        "--listen",
        f"127.0.0.1:{sport}",
        "--backend",
        f"127.0.0.1:{backend_port}",
        *extra,
        "--workers",
        "2",
    )


def _serve_workers(tmp_path: Path, ps: Procs, backend_port: int) -> tuple[Path, Proc, int, int]:
    """``serve --workers 2 --admin``: (dev folder, server, server port, admin port), both workers
    ready."""
    dev = dev_init(tmp_path / "dev")
    admin = free_port()
    sport = free_port()
    server = _start_workers(ps, dev, sport, backend_port, "--admin", f"127.0.0.1:{admin}")
    wait_port(admin, server)
    wait_until(lambda: get(admin, "/readyz")[0] == 200, timeout=30, what="2 workers ready")
    return dev, server, sport, admin


def test_workers_share_the_port_and_restart(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    dev, server, sport, admin = _serve_workers(tmp_path, ps, slow_backend)
    status = json.loads(get(admin, "/status")[1])
    pids = [w["pid"] for w in status["workers"]]
    assert len(set(pids)) == 2
    _, cport = start_client(ps, dev / "connect.toml", sport)
    for _ in range(6):
        assert curl_through(cport, "/hello") == "hello\n"
    text = get(admin, "/metrics")[1]
    assert metric(text, "atls_proxy_attestation_successes_total") >= 6  # summed over workers

    # A dead worker is restarted; readiness returns.
    import os

    os.kill(pids[0], signal.SIGKILL)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["workers"][0]["restarts"] == 1,
        timeout=20,
        what="the restart",
    )
    wait_until(lambda: get(admin, "/readyz")[0] == 200, timeout=30, what="ready again")
    assert curl_through(cport, "/hello") == "hello\n"
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(30) == 0, server.output()


@pytest.fixture
def short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMPDIR for the CLI (tests.support.procs.env copies os.environ), short enough for
    the supervisor's AF_UNIX notify socket in it (tmp_path is too long for sun_path)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="atls-t-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _workers(admin: int) -> list[dict[str, object]]:
    return list(json.loads(get(admin, "/status")[1])["workers"])


def test_workers_sigterm_while_every_worker_is_dead_exits(
    tmp_path: Path, ps: Procs, slow_backend: int, short_tmpdir: Path
) -> None:
    """SIGTERM while both workers are dead, waiting out their restart back-off: the supervisor
    exits promptly (it used to wait forever for a worker exit) and removes its folder."""
    import os

    from tests.support.procs import log_messages

    _, server, _, admin = _serve_workers(tmp_path, ps, slow_backend)
    assert len(list(short_tmpdir.iterdir())) == 1  # atls-proxy-workers-*
    # Kill both twice, so the second back-off (2 s) leaves ample time to send SIGTERM within it.
    for restarts in (1, 2):
        pids = [int(str(w["pid"])) for w in _workers(admin)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if restarts == 1:
            wait_until(
                lambda: (
                    [w["restarts"] for w in _workers(admin)] == [1, 1]
                    and get(admin, "/readyz")[0] == 200
                ),
                timeout=30,
                what="both workers restarted and ready",
            )
    wait_until(
        lambda: (
            all(w["last_exit"] == -signal.SIGKILL for w in _workers(admin))
            and {w["pid"] for w in _workers(admin)} == set(pids)
        ),
        timeout=10,
        what="both deaths seen",
    )
    t0 = time.monotonic()
    server.popen.send_signal(signal.SIGTERM)
    try:
        code = server.popen.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the supervisor did not exit:\n" + server.output()) from None
    assert time.monotonic() - t0 < 5
    started = [m for m in log_messages(server.output()) if " started pid=" in m]
    assert len(started) == 4, started  # the SIGTERM came within the back-off: no third start
    assert code == 1, server.output()  # the workers had died (docs/OPERATIONS.md, Workers)
    assert list(short_tmpdir.iterdir()) == []  # its temporary folder is gone


def test_workers_stop_with_exit_2_when_the_port_cannot_be_bound(
    tmp_path: Path, ps: Procs, slow_backend: int, short_tmpdir: Path
) -> None:
    """A worker's configuration error (here: the port is taken by a socket without
    SO_REUSEPORT) is not restarted forever: the supervisor stops and exits 2, as a single
    process does — what systemd's RestartPreventExitStatus=2 relies on."""
    from tests.support.procs import log_messages

    dev = dev_init(tmp_path / "dev")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _start_workers(ps, dev, port, slow_backend)
        try:
            code = server.popen.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor kept restarting:\n" + server.output()) from None
    assert code == 2, server.output()
    messages = log_messages(server.output())
    assert any("bad configuration" in m and "stopping" in m for m in messages), messages
    assert not any("restarting in" in m for m in messages), messages
    assert list(short_tmpdir.iterdir()) == []  # its temporary folder is gone


def test_a_worker_that_restarts_into_a_broken_file_is_retried_not_fatal(
    tmp_path: Path, ps: Procs, slow_backend: int, short_tmpdir: Path
) -> None:
    """Exit 2 stops the pool only at start: a worker that dies later and rereads a file being
    edited is retried with back-off while the other keeps serving, and comes back once the file
    is fixed (the pool used to be drained, and systemd's RestartPreventExitStatus=2 kept it
    down)."""
    import os

    from tests.support.procs import log_messages

    dev, server, _sport, admin = _serve_workers(tmp_path, ps, slow_backend)
    cfg = dev / "serve.toml"
    good = cfg.read_text()
    cfg.write_text("[server\n")  # mid-edit
    victim = int(str(_workers(admin)[0]["pid"]))
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: any(" exited with 2 " in m for m in log_messages(server.output())),
        timeout=20,
        what="the restarted worker refusing the broken file",
    )
    assert server.popen.poll() is None, server.output()  # the supervisor still runs
    assert _workers(admin)[1]["ready"] is True  # the other worker still serves
    cfg.write_text(good)
    wait_until(lambda: get(admin, "/readyz")[0] == 200, timeout=40, what="both ready again")
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(30) == 0, server.output()  # both workers ended cleanly at last


def test_workers_sighup_spares_a_starting_worker(
    tmp_path: Path, ps: Procs, slow_backend: int, short_tmpdir: Path
) -> None:
    """SIGHUP while a worker restarts: it is not killed by it (it used to die of SIGHUP and its
    back-off doubled), it reloads once ready; the dead worker's metric files are merged away."""
    import os

    from tests.support.procs import log_messages

    _, server, _, admin = _serve_workers(tmp_path, ps, slow_backend)
    (mdir,) = short_tmpdir.glob("atls-proxy-workers-*/metrics")
    dead = int(str(_workers(admin)[0]["pid"]))
    assert (mdir / f"counter_{dead}.db").exists()
    os.kill(dead, signal.SIGKILL)

    def restarting() -> bool:
        w = _workers(admin)[0]
        return w["pid"] != dead and not w["ready"]

    wait_until(restarting, timeout=10, what="worker 0 being started again")
    server.popen.send_signal(signal.SIGHUP)  # worker 0 is not ready yet
    wait_until(lambda: get(admin, "/readyz")[0] == 200, timeout=30, what="ready again")
    w0 = _workers(admin)[0]
    assert (w0["restarts"], w0["last_exit"]) == (1, -signal.SIGKILL), server.output()

    def reloads() -> int:
        return sum(m.startswith("reloaded (SIGHUP)") for m in log_messages(server.output()))

    # worker 1 at once, worker 0 once it reported ready
    wait_until(lambda: reloads() == 2, timeout=10, what="both workers reloaded")

    # the dead worker's counters and histograms live on in the archive files only
    assert not list(mdir.glob(f"*_{dead}.db"))
    assert (mdir / "counter_archive.db").exists() and (mdir / "histogram_archive.db").exists()
    status, text = get(admin, "/metrics")
    assert status == 200 and metric(text, "atls_proxy_reloads_total", result="success") >= 2

    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(30) == 0, server.output()
    assert list(short_tmpdir.iterdir()) == []


class DelayRelay:
    """A TCP relay on 127.0.0.1 that holds the first client→server bytes (the ClientHello) until
    ``release`` is set: a connection that is mid-handshake when the test wants it to be."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = self.sock.accept()
                s = socket.create_connection(("127.0.0.1", self.target))
                threading.Thread(target=self._up, args=(c, s), daemon=True).start()
                threading.Thread(target=self._copy, args=(s, c), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        first = src.recv(65536)
        self.arrived.set()
        self.release.wait(30)
        with contextlib.suppress(OSError):
            dst.sendall(first)
        self._copy(src, dst)

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def test_sigterm_during_handshake_lets_it_finish(tmp_path: Path, ps: Procs) -> None:
    """A TCP connection accepted before SIGTERM whose ClientHello arrives after it is still served."""
    dev = dev_init(tmp_path / "dev")
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("hello\n")
    _, bport = start_backend(ps, www)
    server, sport = start_server(ps, dev / "serve.toml", bport)
    relay = DelayRelay(sport)
    try:
        _, cport = start_client(ps, dev / "connect.toml", relay.port)
        relay.release.set()  # let start_client's readiness probe through
        time.sleep(0.5)
        relay.release.clear()
        relay.arrived.clear()
        req = background_curl(cport, "/hello.txt")
        assert relay.arrived.wait(10)  # the ClientHello is held: the server waits mid-handshake
        server.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        relay.release.set()
        out, err = req.communicate(timeout=30)
        assert req.returncode == 0 and out == "hello\n", err
        assert server.popen.wait(20) == 0, server.output()
    finally:
        relay.close()


# --- systemd: socket activation and sd_notify ---------------------------------------------------

_ACTIVATE = """
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
for target, fd in enumerate(fds, start=3):  # sd_listen_fds(3): descriptors from 3 on
    os.dup2(fd, target)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = os.environ.pop("TEST_FDNAMES", "attested:admin")
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
os.execv(sys.executable, [sys.executable, "-m", "atls_proxy.cli", *sys.argv[2:]])
"""


def _start_activated(
    ps: Procs, tmp_path: Path, name: str, socks: list[socket.socket], *args: str, **env_extra: str
) -> Proc:
    """``atls-proxy *args`` started as systemd would with ``socks`` inherited from fd 3 on (their
    names: ``TEST_FDNAMES`` in ``env_extra``, default attested:admin); ``socks`` are closed here."""
    import sys

    from tests.support.procs import env

    e = env()
    e.update(env_extra)
    log = tmp_path / f"{name}.log"
    fds = [s.fileno() for s in socks]
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds)), *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=e,
            pass_fds=fds,
        )
    proc = Proc(name, popen, log)
    ps.procs.append(proc)
    for s in socks:
        s.close()
    return proc


def test_socket_activation_and_notify(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    """As systemd would run it: inherited listeners named attested/admin, NOTIFY_SOCKET."""
    import os

    dev = dev_init(tmp_path / "dev")
    attested = socket.create_server(("127.0.0.1", 0))
    admin = socket.create_server(("127.0.0.1", 0))
    sport, aport = attested.getsockname()[1], admin.getsockname()[1]
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    proc = _start_activated(
        ps,
        tmp_path,
        "activated",
        [attested, admin],
        "serve",
        "--config",
        str(dev / "serve.toml"),
        "--backend",
        f"127.0.0.1:{slow_backend}",
        NOTIFY_SOCKET=notify_path,
    )
    popen = proc.popen

    def messages_until(field: str) -> list[str]:
        seen = []
        while True:
            msg = notify.recv(4096).decode()
            seen.append(msg)
            if field in msg.split("\n"):
                return seen

    assert any("STATUS=listening on" in m for m in messages_until("READY=1"))
    assert get(aport, "/healthz") == (200, "ok\n")  # the inherited admin socket
    _, cport = start_client(ps, dev / "connect.toml", sport)  # the inherited attested socket
    assert curl_through(cport, "/hello") == "hello\n"

    popen.send_signal(signal.SIGHUP)
    reload_msgs = messages_until("RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for m in reload_msgs for line in m.split("\n"))
    messages_until("READY=1")
    popen.send_signal(signal.SIGTERM)
    messages_until("STOPPING=1")
    assert popen.wait(20) == 0, proc.output()
    notify.close()
    os.unlink(notify_path)


def test_client_broken_policy_reload_keeps_old_policy(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    """connect --admin: an unparsable policy on SIGHUP is reported; the old policy keeps working."""
    dev = dev_init(tmp_path / "dev")
    _, sport = start_server(ps, dev / "serve.toml", slow_backend)
    admin = free_port()
    cport = free_port()
    client = ps.cli(
        "connect",
        "connect",
        "--config",
        str(dev / "connect.toml"),
        "--listen",
        f"127.0.0.1:{cport}",
        "--server",
        f"127.0.0.1:{sport}",
        "--admin",
        f"127.0.0.1:{admin}",
    )
    wait_port(admin, client)
    wait_port(cport, client)
    assert curl_through(cport, "/hello") == "hello\n"
    policy = dev / "policy.toml"
    good = policy.read_text()
    policy.write_text(good + "\n[software\nallow_simulated = \n")
    client.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["last_reload"]["ok"] is False,
        what="the failed reload in /status",
    )
    status = json.loads(get(admin, "/status")[1])
    assert status["role"] == "client" and "not valid TOML" in status["last_reload"]["error"]
    assert curl_through(cport, "/hello") == "hello\n"  # the old policy still appraises
    text = get(admin, "/metrics")[1]
    assert metric(text, "atls_proxy_reloads_total", result="failure") == 1
    assert metric(text, "atls_proxy_appraisal_duration_seconds_count") >= 2
    assert metric(text, "atls_proxy_attestation_successes_total") >= 2


def test_workers_under_socket_activation(tmp_path: Path, ps: Procs, slow_backend: int) -> None:
    """--workers with inherited sockets, the admin socket first (fd 3): the supervisor keeps the
    admin socket, the workers share the attested one."""

    dev = dev_init(tmp_path / "dev")
    admin = socket.create_server(("127.0.0.1", 0))
    attested = socket.create_server(("127.0.0.1", 0))
    aport, sport = admin.getsockname()[1], attested.getsockname()[1]
    proc = _start_activated(
        ps,
        tmp_path,
        "workers-activated",
        [admin, attested],
        "serve",
        "--config",
        str(dev / "serve.toml"),
        "--backend",
        f"127.0.0.1:{slow_backend}",
        "--workers",
        "2",
        TEST_FDNAMES="admin:attested",
    )
    popen = proc.popen
    wait_until(lambda: get(aport, "/readyz")[0] == 200, timeout=40, what="2 workers ready")
    assert len({w["pid"] for w in json.loads(get(aport, "/status")[1])["workers"]}) == 2
    _, cport = start_client(ps, dev / "connect.toml", sport)
    for _ in range(4):
        assert curl_through(cport, "/hello") == "hello\n"
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(30) == 0, proc.output()


# --- runtime: start-up signals, socket names, bind errors, reload of ops settings --------------


def test_sighup_during_startup_is_honoured_once_listening(tmp_path: Path, ps: Procs) -> None:
    """SIGHUP while the cached tier waits for its first quote (no handler yet, it used to kill the
    process): the process lives on, starts, and reloads once."""
    dev = dev_init(tmp_path / "dev")
    cfg = attester_variant(dev, "slowstart", tier="cached", quote_ms=2000)
    port = free_port()
    server = ps.cli(
        "serve-slowstart",
        "serve",
        "--config",
        str(cfg),
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        "127.0.0.1:9",
    )
    # The attester is built (and warns) just before the runtime starts; its first quote then
    # takes 2 s before the listener opens.
    wait_until(lambda: "SIMULATED software attester" in server.output(), what="the attester")
    time.sleep(0.5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # still starting
    server.popen.send_signal(signal.SIGHUP)
    wait_port(port, server, timeout=30)
    wait_until(lambda: "reloaded (SIGHUP)" in server.output(), what="the deferred reload")
    assert "SIGHUP during start-up" in server.output()
    assert server.output().count("reloaded (") == 1
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(20) == 0, server.output()


def test_socket_activation_uses_the_only_socket_whatever_its_name(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    """One inherited socket named as systemd names it by default (the socket unit's name): it is
    the attested listener (the configured address is the same port: binding it would fail)."""

    dev = dev_init(tmp_path / "dev")
    attested = socket.create_server(("127.0.0.1", 0))
    sport = attested.getsockname()[1]
    proc = _start_activated(
        ps,
        tmp_path,
        "activated-default-name",
        [attested],
        "serve",
        "--config",
        str(dev / "serve.toml"),
        "--listen",
        f"127.0.0.1:{sport}",
        "--backend",
        f"127.0.0.1:{slow_backend}",
        TEST_FDNAMES="atls-proxy.socket",
    )
    popen = proc.popen
    wait_until(
        lambda: (
            "the attested listener is the inherited socket" in proc.output() or not proc.alive()
        ),
        what="the inherited socket taken",
    )
    assert proc.alive(), proc.output()
    _, cport = start_client(ps, dev / "connect.toml", sport)
    assert curl_through(cport, "/hello") == "hello\n"
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(20) == 0, proc.output()


def test_reload_applies_drain_timeout_and_reports_reload_interval(
    tmp_path: Path, ps: Procs, slow_backend: int
) -> None:
    dev = dev_init(tmp_path / "dev")
    cfg = variant(dev, "opsreload", "drain_timeout = 30")
    server, _, admin, cport = serve_with_admin(ps, dev, cfg, slow_backend)
    variant(dev, "opsreload", "drain_timeout = 1\nreload_interval = 5")  # the same file
    server.popen.send_signal(signal.SIGHUP)
    wait_until(
        lambda: json.loads(get(admin, "/status")[1])["last_reload"]["ok"] is True,
        what="the reload",
    )
    pending = json.loads(get(admin, "/status")[1])["last_reload"]["pending_restart"]
    assert pending == ["server.reload_interval"]
    assert "needs a restart to change: server.reload_interval" in server.output()

    slow = background_curl(cport, "/slow?20")
    wait_until(lambda: SLOW.in_flight >= 1, what="the slow request at the backend")
    t0 = time.monotonic()
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(20) == 3, server.output()  # the reloaded 1 s, not 30 s
    assert time.monotonic() - t0 < 10
    slow.communicate(timeout=30)
    assert "waiting up to 1 s" in server.output()
