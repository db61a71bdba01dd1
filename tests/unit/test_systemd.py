"""sd_notify(3) and sd_listen_fds(3) helpers: real datagram sockets, real inherited descriptors.

Socket activation is exercised the way systemd does it: a child process is started with the
descriptors at 3.. (``pass_fds``) and ``LISTEN_FDS``/``LISTEN_FDNAMES`` in its environment; the
child sets ``LISTEN_PID`` to its own pid (only it knows it) and calls ``listen_fds()``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atls_proxy.errors import ConfigError
from atls_proxy.ops import systemd
from tests.support.fds import MOVE_FDS_TO_3

# -- notify ------------------------------------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        yield Path(d)


def _receiver(addr: str | bytes) -> socket.socket:
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(addr)
    r.settimeout(5)
    return r


def test_notify_path_socket(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(short_tmp / "notify.sock")
    with _receiver(path) as r:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1", "STATUS=listening on 127.0.0.1:8443") is True
        assert r.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:8443"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"atls-proxy-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as r:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1") is True
        assert r.recv(4096) == b"STOPPING=1"


def test_notify_reloading_sends_monotonic_usec(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(short_tmp / "notify.sock")
    with _receiver(path) as r:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert systemd.notify_reloading() is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = r.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notify_without_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_missing_socket_does_not_raise(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # systemd 253+ form, unsupported here
    assert systemd.notify("READY=1") is False


def test_notify_payload_keeps_one_assignment_per_field() -> None:
    # A newline in a value (an exception message) must not inject a second assignment.
    assert systemd.notify_payload("STATUS=reload failed: a\nREADY=1") == (
        b"STATUS=reload failed: a READY=1"
    )
    with pytest.raises(ValueError):
        systemd.notify_payload("READY")
    with pytest.raises(ValueError):
        systemd.notify_payload("=1")


def test_notify_address_forms() -> None:
    assert systemd.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.notify_address("@sd") == b"\0sd"
    assert systemd.notify_address("") is None
    assert systemd.notify_address(None) is None
    assert systemd.notify_address("@") is None
    assert systemd.notify_address("relative/path") is None


# -- parse_listen_env (pure) -------------------------------------------------------------------


def test_parse_listen_env_names_and_defaults() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "attested:admin"}
    assert systemd.parse_listen_env(env, 42) == [(3, "attested"), (4, "admin")]
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2"}
    assert systemd.parse_listen_env(env, 42) == [(3, "unknown"), (4, "unknown")]


def test_parse_listen_env_other_pid_or_unset() -> None:
    assert systemd.parse_listen_env({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42) == []
    assert systemd.parse_listen_env({"LISTEN_FDS": "1"}, 42) == []
    assert systemd.parse_listen_env({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42) == []


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "one"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "attested"}, "LISTEN_FDNAMES"),
    ],
)
def test_parse_listen_env_malformed(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        systemd.parse_listen_env(env, 42)
    assert info.value.key == key


# -- listen_fds in a child that really inherits the descriptors -------------------------------

# The child plays the service: it claims the environment for its own pid, as systemd would have
# set it, then reports what listen_fds() found (or the error) as JSON.
CHILD = (
    MOVE_FDS_TO_3
    + r"""
import json, socket
os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[1] == "self" else sys.argv[1]
from atls_proxy.errors import ConfigError
from atls_proxy.ops import systemd
try:
    found = systemd.listen_fds()
except ConfigError as exc:
    print(json.dumps({"error": exc.key, "message": exc.message}))
    sys.exit(0)
out = {}
for name, socks in found.items():
    out[name] = []
    for s in socks:
        flags = fcntl.fcntl(s.fileno(), fcntl.F_GETFD)
        conn, _ = s.accept()  # the parent connected before starting us
        out[name].append({
            "fd": s.fileno(),
            "cloexec": bool(flags & fcntl.FD_CLOEXEC),
            "port": s.getsockname()[1],
            "got": conn.recv(16).decode(),
        })
        conn.close()
left = sorted(k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ)
print(json.dumps({"sockets": out, "env_left": left}))
"""
)


def _run_child(fds: list[int], env_extra: dict[str, str], pid: str = "self") -> dict[str, object]:
    """Start the child with ``fds`` inherited; it moves them to 3, 4, ... itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, pid, ",".join(map(str, fds))],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_listen_fds_in_child_with_names() -> None:
    with _listener() as attested, _listener() as admin:
        with (
            socket.create_connection(attested.getsockname()) as c1,
            socket.create_connection(admin.getsockname()) as c2,
        ):
            c1.sendall(b"to-attested")
            c2.sendall(b"to-admin")
            result = _run_child(
                [attested.fileno(), admin.fileno()],
                {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "attested:admin"},
            )
        assert result["env_left"] == []
        socks = result["sockets"]
        assert isinstance(socks, dict)
        assert socks == {
            "attested": [
                {
                    "fd": 3,
                    "cloexec": True,
                    "port": attested.getsockname()[1],
                    "got": "to-attested",
                }
            ],
            "admin": [
                {"fd": 4, "cloexec": True, "port": admin.getsockname()[1], "got": "to-admin"}
            ],
        }


def test_listen_fds_without_names_is_unknown() -> None:
    with _listener() as s, socket.create_connection(s.getsockname()) as c:
        c.sendall(b"hi")
        result = _run_child([s.fileno()], {"LISTEN_FDS": "1"})
    socks = result["sockets"]
    assert isinstance(socks, dict)
    assert list(socks) == ["unknown"]


def test_listen_fds_wrong_pid_is_ignored_and_unset() -> None:
    with _listener() as s:
        result = _run_child([s.fileno()], {"LISTEN_FDS": "1"}, pid="1")
    assert result == {"sockets": {}, "env_left": []}


def test_listen_fds_non_socket_is_an_error() -> None:
    r, w = os.pipe()
    try:
        result = _run_child([r], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "attested"})
    finally:
        os.close(r)
        os.close(w)
    assert result["error"] == "LISTEN_FDS"
    assert "not a socket" in str(result["message"])
    assert "'attested'" in str(result["message"])


def test_listen_fds_unlistened_or_datagram_socket_is_an_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never listen()ed
        result = _run_child([s.fileno()], {"LISTEN_FDS": "1"})
    assert result["error"] == "LISTEN_FDS"
    assert "not listening" in str(result["message"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d:
        result = _run_child([d.fileno()], {"LISTEN_FDS": "1"})
    assert "not a stream socket" in str(result["message"])


def test_listen_fds_not_for_us_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "attested")
    assert systemd.listen_fds(unset_env=False) == {}
    assert os.environ["LISTEN_FDS"] == "1"
    assert systemd.listen_fds() == {}
    assert "LISTEN_FDS" not in os.environ
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDNAMES" not in os.environ


def test_only_socket_refuses_two_of_one_name() -> None:
    a, b = socket.socket(), socket.socket()
    try:
        assert systemd.only_socket(None, "admin") is None
        assert systemd.only_socket([], "admin") is None
        assert systemd.only_socket([a], "admin") is a
        with pytest.raises(ConfigError, match="2 inherited sockets named 'admin'"):
            systemd.only_socket([a, b], "admin")
    finally:
        a.close()
        b.close()
