"""Deployment files: systemd units, Kubernetes manifests, the Containerfile.

* systemd: ``systemd-analyze verify`` on every unit (with and without the opt-in drop-ins) must
  print nothing about them; the user of the units is what ``systemd-sysusers`` creates from
  ``atls-proxy.sysusers``; the hardening claims the units make are checked (no device access or
  capability in the base unit, TimeoutStopSec > drain timeout), and the W^X claims are checked
  against the real program under the kernel's own W^X switch (``PR_SET_MDWE``, Linux 6.3+): the
  serve unit's life cycle (socket activation with named descriptors, READY=1, RELOADING=1 +
  MONOTONIC_USEC, STOPPING=1, exit 0) runs under it, and the client's verify callback is shown
  to need write+execute memory.
* Kubernetes: every manifest, and the TEE overlay's result, validates against the 1.30 schema
  in strict mode (unknown fields fail) with ``kubernetes-validate``; the configuration in each
  ConfigMap loads with ``atls_proxy.ops.config`` when the pod's volumes are laid out as the
  Deployment mounts them (so mount paths and config paths must agree).
* Containerfile: basic syntax, stages, a non-root USER, the ``atls-proxy`` entry point.

A missing tool (systemd-analyze, kubernetes-validate) skips its tests, except when
``ATLS_PROXY_REQUIRE_TOOLS=1`` (CI), where it fails them.
"""

from __future__ import annotations

import configparser
import contextlib
import copy
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fds import MOVE_FDS_TO_3

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
K8S_BASE = K8S / "base"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
INSTALLED_BINARY = "/opt/atls-proxy/bin/atls-proxy"  # ExecStart= of the shipped units
K8S_VERSION = "1.30"  # native sidecars (1.29) and the preStop sleep action (beta, on, 1.30)
DEFAULT_DRAIN_TIMEOUT = 30.0  # [server]/[client] drain_timeout default (config/serve.toml)


def require_tools() -> bool:
    return os.environ.get("ATLS_PROXY_REQUIRE_TOOLS") == "1"


def missing(what: str) -> None:
    """Skip, or fail in CI, because ``what`` is not installed."""
    message = f"{what} is not installed"
    if require_tools():
        pytest.fail(f"{message} (ATLS_PROXY_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name)
    assert path is not None
    return path


def atls_proxy_binary() -> str:
    """The installed console script: ExecStart= must name an existing executable."""
    candidate = Path(sys.executable).parent / "atls-proxy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("atls-proxy")
    if found is None:
        pytest.fail("the atls-proxy console script is not installed (pip install -e .)")
    return found


# -- systemd -------------------------------------------------------------------------------------


def unit(path: Path) -> configparser.ConfigParser:
    """A unit file as sections of (possibly repeated, so last-wins here) settings."""
    p = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(path.read_text())
    return p


def all_values(path: Path, key: str) -> list[str]:
    """Every value of ``key`` in a unit file, in order (systemd settings may repeat)."""
    out = []
    for line in path.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == key and not line.lstrip().startswith(("#", ";")):
            out.append(v.strip())
    return out


def staged_units(dest: Path, drop_ins: tuple[str, ...] = ()) -> Path:
    """Copy the units to ``dest`` with ExecStart= pointing at the installed program."""
    real = atls_proxy_binary()
    for src in SYSTEMD.iterdir():
        if src.suffix in (".service", ".socket"):
            text = src.read_text()
            assert text.count(INSTALLED_BINARY) == len(all_values(src, "ExecStart")), src
            (dest / src.name).write_text(text.replace(INSTALLED_BINARY, real))
    if drop_ins:
        d = dest / "atls-proxy.service.d"
        d.mkdir()
        for name in drop_ins:
            shutil.copy(SYSTEMD / "atls-proxy.service.d" / name, d / name)
    return dest


def verify(units_dir: Path, *names: str) -> list[str]:
    """``systemd-analyze verify``: the output lines (every one is a finding) and the exit code."""
    analyze = tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(units_dir / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0:
        lines.append(f"exit code {proc.returncode}")
    return lines


def about_units(lines: list[str], units_dir: Path) -> list[str]:
    """Findings about our units. Other lines (a host without a running systemd may log about
    itself) are not findings about the files under test, so they are not counted."""
    return [
        ln
        for ln in lines
        if str(units_dir) in ln or "atls-proxy" in ln or ln.startswith("exit code")
    ]


@pytest.fixture
def units_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="atls-units-") as d:
        yield Path(d)


@pytest.mark.parametrize(
    "names",
    [
        ("atls-proxy.service",),
        ("atls-proxy.socket", "atls-proxy-admin.socket", "atls-proxy.service"),
        ("atls-proxy-connect.service",),
    ],
    ids=["serve", "serve+sockets", "connect"],
)
def test_systemd_analyze_verify(units_dir: Path, names: tuple[str, ...]) -> None:
    staged_units(units_dir)
    lines = verify(units_dir, *names)
    assert about_units(lines, units_dir) == [], "\n".join(lines)


@pytest.mark.parametrize("drop_in", ["configfs-tsm.conf", "tpm.conf"])
def test_systemd_analyze_verify_with_drop_in(units_dir: Path, drop_in: str) -> None:
    staged_units(units_dir, (drop_in,))
    lines = verify(units_dir, "atls-proxy.service")
    assert about_units(lines, units_dir) == [], "\n".join(lines)


@pytest.mark.parametrize("name", ["atls-proxy.service", "atls-proxy-connect.service"])
def test_hardening_exposure_is_ok(units_dir: Path, name: str) -> None:
    """docs/OPERATIONS.md says both units rate "OK" (exposure below 2.0) in
    ``systemd-analyze security``; this keeps that true."""
    staged_units(units_dir)
    proc = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", str(units_dir / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    assert float(found.group(1)) < 2.0, found.group(0)


def test_systemd_analyze_verify_reports_mistakes(units_dir: Path) -> None:
    # The check above can fail: an unknown key in a unit or a drop-in is reported.
    staged_units(units_dir, ("tpm.conf",))
    with (units_dir / "atls-proxy.service.d" / "tpm.conf").open("a") as fh:
        fh.write("DeviceAlow=/dev/tpm0 rw\n")
    lines = verify(units_dir, "atls-proxy.service")
    assert any("DeviceAlow" in ln for ln in about_units(lines, units_dir)), lines


def test_sysusers_creates_the_units_user() -> None:
    sysusers = tool("systemd-sysusers")
    with tempfile.TemporaryDirectory(prefix="atls-sysroot-") as d:
        (Path(d) / "etc").mkdir()
        proc = subprocess.run(
            [sysusers, f"--root={d}", str(SYSTEMD / "atls-proxy.sysusers")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        users = {ln.split(":")[0] for ln in (Path(d) / "etc/passwd").read_text().splitlines()}
        groups = {ln.split(":")[0] for ln in (Path(d) / "etc/group").read_text().splitlines()}
    for name in ("atls-proxy.service", "atls-proxy-connect.service"):
        svc = unit(SYSTEMD / name)["Service"]
        assert svc["User"] in users
        assert svc["Group"] in groups


@pytest.mark.parametrize("name", ["atls-proxy.service", "atls-proxy-connect.service"])
def test_unit_life_cycle_settings(name: str) -> None:
    svc = unit(SYSTEMD / name)["Service"]
    assert svc["Type"] == "notify"  # systemd 252 (Debian 12) has no notify-reload
    assert svc["NotifyAccess"] == "main"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM"
    # systemd's SIGKILL must not cut the drain short.
    assert float(svc["TimeoutStopSec"]) > DEFAULT_DRAIN_TIMEOUT
    assert svc["Restart"] == "on-failure"
    assert "2" in svc["RestartPreventExitStatus"].split()  # configuration error
    assert svc["ExecStart"].startswith(INSTALLED_BINARY + " ")
    assert "--config /etc/atls-proxy/" in svc["ExecStart"]


@pytest.mark.parametrize("name", ["atls-proxy.service", "atls-proxy-connect.service"])
def test_base_units_grant_no_device_and_no_capability(name: str) -> None:
    path = SYSTEMD / name
    svc = unit(path)["Service"]
    assert all_values(path, "CapabilityBoundingSet") == [""]
    assert all_values(path, "AmbientCapabilities") == [""]
    for key in ("DeviceAllow", "ReadWritePaths", "SupplementaryGroups"):
        assert all_values(path, key) == [], key
    expected = {
        "PrivateDevices": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes",
        "ConfigurationDirectory": "atls-proxy",
    }
    for key, value in expected.items():
        assert svc[key] == value, key
    assert svc["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert all_values(path, "SystemCallFilter")[0] == "@system-service"


def test_drop_ins_grant_only_their_device() -> None:
    tsm = unit(SYSTEMD / "atls-proxy.service.d" / "configfs-tsm.conf")["Service"]
    assert tsm["ReadWritePaths"] == "/sys/kernel/config/tsm/report"
    assert tsm["AmbientCapabilities"] == tsm["CapabilityBoundingSet"] == "CAP_DAC_OVERRIDE"
    assert "DeviceAllow" not in tsm
    tpm = unit(SYSTEMD / "atls-proxy.service.d" / "tpm.conf")["Service"]
    assert tpm["DeviceAllow"] == "/dev/tpmrm0 rw"
    assert tpm["DevicePolicy"] == "closed"
    assert tpm["PrivateDevices"] == "no"
    assert tpm["SupplementaryGroups"] == "tss"
    assert "AmbientCapabilities" not in tpm


def test_sockets_name_their_descriptors() -> None:
    attested = unit(SYSTEMD / "atls-proxy.socket")["Socket"]
    admin = unit(SYSTEMD / "atls-proxy-admin.socket")["Socket"]
    assert attested["FileDescriptorName"] == "attested"
    assert admin["FileDescriptorName"] == "admin"
    assert attested["Service"] == admin["Service"] == "atls-proxy.service"
    assert admin["ListenStream"].startswith("127.0.0.1:")  # the admin port stays local


# -- W^X: the MemoryDenyWriteExecute= choices, checked against the real program ---------------

PR_SET_MDWE = 65  # include/uapi/linux/prctl.h (Linux 6.3+)
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


# Runs in the child: W^X on (the same refusal systemd's MemoryDenyWriteExecute=yes enforces),
# then either a snippet or exec() of the program.
MDWE_PRELUDE = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "mdwe" and libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()))
"""


@pytest.fixture(scope="module")
def dev_material() -> Iterator[Path]:
    from atls_proxy.ops.devinit import dev_init

    with tempfile.TemporaryDirectory(prefix="atls-deploy-dev-") as d:
        dev_init(Path(d) / "dev", force=False)
        yield Path(d) / "dev"


def test_connect_unit_denies_wx_and_the_client_runs_under_it(dev_material: Path) -> None:
    """The client verifies the server's chain with OpenSSL's own verification (no pyOpenSSL
    Python callback, whose cffi trampoline needed writable+executable memory), so the connect
    unit can deny W+X like the serve unit. The full client path under W^X is exercised by
    ``atls-proxy attest`` in the life-cycle test below."""
    path = SYSTEMD / "atls-proxy-connect.service"
    assert unit(path)["Service"]["MemoryDenyWriteExecute"] == "yes"
    if not mdwe_supported():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    snippet = MDWE_PRELUDE + (
        "from pathlib import Path\n"
        "from atls_proxy.tls.context import client_context\n"
        "client_context(Path(sys.argv[2]), True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", snippet, "mdwe", str(dev_material / "ca.pem")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


UNDER_MDWE = MDWE_PRELUDE + "os.execv(sys.argv[2], sys.argv[2:])\n"


def _listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def _notifications(sock: socket.socket, until: str, deadline: float) -> list[str]:
    """Datagrams received until one contains the assignment ``until``."""
    got: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append(data)
        if until in data.split("\n"):
            return got
    raise AssertionError(f"no {until} within the deadline; received {got}")


# The child becomes the service exactly as systemd would start it: the descriptors at 3 and 4,
# LISTEN_PID = its own pid (kept by exec), LISTEN_FDNAMES from atls-proxy(-admin).socket.
SOCKET_ACTIVATED = (
    MDWE_PRELUDE
    + MOVE_FDS_TO_3
    + """
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""
)


def test_serve_unit_life_cycle_under_wx_and_socket_activation(dev_material: Path) -> None:
    """What atls-proxy.service + both sockets promise, with the real program."""
    path = SYSTEMD / "atls-proxy.service"
    assert unit(path)["Service"]["MemoryDenyWriteExecute"] == "yes"
    mode = "mdwe" if mdwe_supported() else "plain"
    names = [
        unit(SYSTEMD / "atls-proxy.socket")["Socket"]["FileDescriptorName"],
        unit(SYSTEMD / "atls-proxy-admin.socket")["Socket"]["FileDescriptorName"],
    ]
    with (
        tempfile.TemporaryDirectory(prefix="atls-n-") as tmp,
        _listener() as attested,
        _listener() as admin,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_sock,
    ):
        notify_sock.bind(str(Path(tmp) / "notify"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env.update(
            NOTIFY_SOCKET=str(Path(tmp) / "notify"),
            LISTEN_FDS="2",
            LISTEN_FDNAMES=":".join(names),
        )
        argv = [atls_proxy_binary(), "serve", "--config", str(dev_material / "serve.toml")]
        fds = [attested.fileno(), admin.fileno()]
        proc = subprocess.Popen(
            [sys.executable, "-c", SOCKET_ACTIVATED, mode, ",".join(map(str, fds)), *argv],
            pass_fds=fds,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            _notifications(notify_sock, "READY=1", deadline)
            admin_url = f"http://127.0.0.1:{admin.getsockname()[1]}"
            with urllib.request.urlopen(admin_url + "/readyz", timeout=10) as r:
                assert r.status == 200
            # A full attested handshake against the inherited socket, the client under W^X too.
            port = attested.getsockname()[1]
            check = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    UNDER_MDWE,
                    mode,
                    atls_proxy_binary(),
                    "attest",
                    f"127.0.0.1:{port}",
                    "--config",
                    str(dev_material / "connect.toml"),
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            proc.send_signal(signal.SIGHUP)
            got = _notifications(notify_sock, "READY=1", time.monotonic() + 30)
            reload_msg = next(m for m in got if "RELOADING=1" in m.split("\n"))
            assert re.search(r"^MONOTONIC_USEC=\d+$", reload_msg, re.M), reload_msg
            proc.send_signal(signal.SIGTERM)
            _notifications(notify_sock, "STOPPING=1", time.monotonic() + 30)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "write+execute" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# -- Kubernetes ----------------------------------------------------------------------------------


def yaml_module() -> Any:
    try:
        import yaml
    except ImportError:
        missing("PyYAML (installed with kubernetes-validate)")
    return yaml


def k8s_validate(doc: dict[str, Any]) -> None:
    try:
        from kubernetes_validate import utils
    except ImportError:
        missing("kubernetes-validate")
    utils.validate(doc, K8S_VERSION, strict=True)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml_module().safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no object"
    return docs


def base_objects() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in load_docs(p)]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind}/{name}")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    for doc in load_docs(path):
        k8s_validate(doc)


def test_strict_validation_rejects_unknown_fields() -> None:
    # The check above can fail: a misspelt field is an error in strict mode.
    doc = copy.deepcopy(find(base_objects(), "Deployment", "web"))
    doc["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        k8s_validate(doc)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml_module().safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    assert yaml_module().safe_load((K8S / "kustomization.yaml").read_text())["resources"] == [
        "base"
    ]
    assert [p.name for p in K8S.glob("*.yaml")] == ["kustomization.yaml"]  # the rest: base/
    overlay_dir = K8S / "overlays/tee-configfs-tsm"
    overlay = yaml_module().safe_load((overlay_dir / "kustomization.yaml").read_text())
    (base,) = overlay["resources"]
    # kustomize refuses an overlay inside the folder it builds on (a cycle): it was ../.. once.
    resolved = (overlay_dir / base).resolve()
    assert resolved == K8S_BASE.resolve() and not overlay_dir.resolve().is_relative_to(resolved)


def test_kustomize_builds_the_base_and_the_overlay() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the structural test above still runs)")
    for target in (K8S, K8S / "overlays/tee-configfs-tsm"):
        res = subprocess.run(
            [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, (target, res.stderr)
        kinds = [d["kind"] for d in yaml_module().safe_load_all(res.stdout) if d]
        assert kinds.count("Deployment") == 2, (target, kinds)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` and ``replace`` (what the overlay uses); anything else fails."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "add" and isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert (int(last) if isinstance(target, list) else last) in (
                    range(len(target)) if isinstance(target, list) else target
                ), op["path"]
            target[int(last) if isinstance(target, list) else last] = op["value"]
        else:
            raise AssertionError(f"unsupported op {op['op']}")
    return doc


def test_tee_overlay_result_validates() -> None:
    overlay = yaml_module().safe_load(
        (K8S / "overlays/tee-configfs-tsm/kustomization.yaml").read_text()
    )
    # Namespace, the web Deployment and the server's serve.toml: all three are patched.
    assert {p["target"]["kind"] for p in overlay["patches"]} == {
        "Namespace",
        "Deployment",
        "ConfigMap",
    }
    objs = base_objects()
    for patch in overlay["patches"]:
        t = patch["target"]
        obj = find(objs, t["kind"], t["name"])
        patched = json_patch(obj, yaml_module().safe_load(patch["patch"]))
        k8s_validate(patched)
        if t["kind"] == "ConfigMap":
            # The hardware attester instead of the SIMULATED one, everything else as the base's.
            tee = tomllib.loads(patched["data"]["serve.toml"])
            base = tomllib.loads(obj["data"]["serve.toml"])
            assert tee["attester"] == {
                "kind": "configfs-tsm",
                "tier": base["attester"]["tier"],
                "configfs_tsm": {"root": "/run/tsm/report"},
            }
            assert {k: v for k, v in tee.items() if k != "attester"} == {
                k: v for k, v in base.items() if k != "attester"
            }
        if t["kind"] == "Deployment":
            spec = patched["spec"]["template"]["spec"]
            sidecar, app = spec["initContainers"][0], spec["containers"][0]
            assert sidecar["name"] == "atls-proxy"
            # Not under the container's /sys (a read-only sysfs: no mount point can be made there).
            assert {"name": "tsm-report", "mountPath": "/run/tsm/report"} in sidecar["volumeMounts"]
            volume = next(v for v in spec["volumes"] if v["name"] == "tsm-report")
            assert volume["hostPath"]["path"] == "/sys/kernel/config/tsm/report"
            assert "privileged" not in sidecar["securityContext"]
            assert all(m["name"] != "tsm-report" for m in app.get("volumeMounts", []))


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in base_objects()
        if o["kind"] == "Deployment"
    }


def sidecar(spec: dict[str, Any]) -> dict[str, Any]:
    (proxy,) = [c for c in spec["initContainers"] if c["name"] == "atls-proxy"]
    return proxy


@pytest.mark.parametrize("name", ["web", "web-client"])
def test_native_sidecar_and_probes(name: str) -> None:
    spec = pod_specs()[name]
    proxy = sidecar(spec)
    assert proxy["restartPolicy"] == "Always"
    assert all(c["name"] != "atls-proxy" for c in spec["containers"])
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    cfg = configmap_config(name)
    admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    assert cfg["admin"]["listen"].startswith("0.0.0.0:")  # the kubelet probes the pod IP
    assert ports["admin"] == admin_port
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    section = cfg["server"] if name == "web" else cfg["client"]
    drain = float(section.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))
    pre_stop = max(
        (c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
        for c in spec["containers"]
    )
    # The workload's preStop runs first, then the sidecar drains: both inside the grace period.
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain


@pytest.mark.parametrize("name", ["web", "web-client"])
def test_pods_are_unprivileged(name: str) -> None:
    spec = pod_specs()[name]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    assert all("hostPath" not in v for v in spec.get("volumes", []))
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert not sc.get("privileged"), c["name"]
        assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, c["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)


def test_the_example_workload_listens_on_loopback_only() -> None:
    # Only the sidecar may reach the plaintext port: a workload bound to the pod IP would be
    # reachable unattested wherever the NetworkPolicy is not enforced (some CNIs do not).
    (web,) = pod_specs()["web"]["containers"]
    argv = web.get("command", []) + web.get("args", [])
    assert "--bind" in argv and argv[argv.index("--bind") + 1] == "127.0.0.1", argv
    assert "netexec" not in argv  # agnhost netexec binds every address and serves /shell
    backend = configmap_config("web")["server"]["backend"]
    assert backend == "127.0.0.1:8080", backend


def test_service_exposes_only_the_attested_port() -> None:
    objs = base_objects()
    svc = find(objs, "Service", "web")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8443, 8443)]
    cfg = configmap_config("web")
    assert cfg["server"]["listen"] == "0.0.0.0:8443"
    policy = find(objs, "NetworkPolicy", "web-attested-only")
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [8443]
    assert all(o["kind"] != "Service" or o["metadata"]["name"] == "web" for o in objs)
    # The client pod takes no ingress from other pods (its admin port is for the kubelet).
    client = find(objs, "NetworkPolicy", "web-client-no-ingress")
    assert client["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "web-client"}
    assert client["spec"]["policyTypes"] == ["Ingress"] and client["spec"]["ingress"] == []


def test_tls_secret_type() -> None:
    secret = find(base_objects(), "Secret", "atls-server-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["stringData"]) == {"tls.crt", "tls.key"}
    volumes = {v["name"]: v for v in pod_specs()["web"]["volumes"]}
    mounts = {m["name"]: m for m in sidecar(pod_specs()["web"])["volumeMounts"]}
    assert volumes["tls"]["secret"]["secretName"] == "atls-server-tls"
    assert mounts["tls"]["readOnly"] is True


# The ConfigMap configurations, loaded as the pod would see them.
CONFIG_FILE = {
    "web": ("atls-server-config", "serve.toml"),
    "web-client": ("atls-client-config", "connect.toml"),
}
# Placeholders in the manifests, replaced by dev-init's material of the same role.
DEV_FILES = {
    "tls.crt": "server.pem",
    "tls.key": "server-key.pem",
    "platform-key.pem": "platform-key.pem",
    "ca.pem": "ca.pem",
    "platform.pem": "platform.pem",
}


def configmap_config(name: str) -> dict[str, Any]:
    cm_name, key = CONFIG_FILE[name]
    data: dict[str, Any] = tomllib.loads(find(base_objects(), "ConfigMap", cm_name)["data"][key])
    return data


def materialise_pod(name: str, root: Path, dev: Path) -> Path:
    """Write the sidecar's volumes under ``root`` as the kubelet would mount them; returns the
    path of the --config file."""
    objs = base_objects()
    spec = pod_specs()[name]
    proxy = sidecar(spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in proxy["volumeMounts"]:
        v = volumes[m["name"]]
        target = root / m["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in v:
            files = find(objs, "ConfigMap", v["configMap"]["name"])["data"]
        elif "secret" in v:
            s = find(objs, "Secret", v["secret"]["secretName"])
            files = s.get("stringData", {})
        else:
            continue
        for key, text in files.items():
            if key in DEV_FILES:
                text = (dev / DEV_FILES[key]).read_text()
            # Absolute paths inside the pod are absolute paths under root here.
            (target / key).write_text(text.replace('"/etc/atls-proxy/', f'"{root}/etc/atls-proxy/'))
    config = proxy["args"][proxy["args"].index("--config") + 1]
    return root / config.lstrip("/")


def test_server_configmap_loads(dev_material: Path) -> None:
    from atls_proxy.app import build_server
    from atls_proxy.ops.config import load_server_config

    with tempfile.TemporaryDirectory(prefix="atls-pod-") as d:
        path = materialise_pod("web", Path(d), dev_material)
        cfg = load_server_config(path)
        build_server(cfg)  # certificate, key and attester material parse
    assert cfg.ops.admin is not None and cfg.ops.admin.port == 9901
    assert cfg.backend.is_loopback()
    assert cfg.ops.reload_interval > 0  # nobody sends SIGHUP in a pod


def test_client_configmap_loads(dev_material: Path) -> None:
    from atls_proxy.app import build_client_settings
    from atls_proxy.ops.config import load_client_config

    with tempfile.TemporaryDirectory(prefix="atls-pod-") as d:
        path = materialise_pod("web-client", Path(d), dev_material)
        cfg = load_client_config(path)
        build_client_settings(cfg)  # CA and policy load
    assert cfg.listen.is_loopback()  # only this pod's containers reach the forwarder
    svc = find(base_objects(), "Service", "web")
    ns = find(base_objects(), "Namespace", "atls-example")["metadata"]["name"]
    assert cfg.server.host == f"{svc['metadata']['name']}.{ns}.svc.cluster.local"
    assert cfg.server.port == svc["spec"]["ports"][0]["port"]


# -- Containerfile ------------------------------------------------------------------------------

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are removed
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "the last instruction ends with a line continuation"
    return out


def test_containerfile_syntax() -> None:
    instructions = containerfile_instructions()
    unknown = [w for w, _ in instructions if w not in INSTRUCTIONS]
    assert unknown == []
    words = [w for w, _ in instructions]
    # Only ARG may come before the first FROM.
    assert set(words[: words.index("FROM")]) <= {"ARG"}
    stages = [args.split() for w, args in instructions if w == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    names = [s[2] for s in stages if len(s) == 3 and s[1].upper() == "AS"]
    for w, args in instructions:
        for ref in re.findall(r"(?:--from=|from=)([\w.-]+)", args):
            assert ref in names, f"{w} refers to an unknown stage {ref}"
    final = words[len(words) - 1 - words[::-1].index("FROM") :]
    final_args = instructions[len(instructions) - len(final) :]
    users = [a for w, a in final_args if w == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    entry = [a for w, a in final_args if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["atls-proxy"]
    # The wheel comes from the project, not from an index.
    assert any(w == "COPY" and "atls_proxy" in a for w, a in instructions)


def test_container_user_matches_kubernetes() -> None:
    user = [a for w, a in containerfile_instructions() if w == "USER"][-1]
    uid = int(user.split(":")[0])
    for spec in pod_specs().values():
        assert spec["securityContext"]["runAsUser"] == uid


def test_the_image_does_not_expose_connects_plaintext_port() -> None:
    # connect's local port is for the application beside it on 127.0.0.1 (docs/OPERATIONS.md):
    # publishing it hands the attested channel to anyone who reaches it.
    exposed = {p for w, a in containerfile_instructions() if w == "EXPOSE" for p in a.split()}
    assert exposed == {"8443", "9901"}, exposed
    listen = configmap_config("web-client")["client"]["listen"]
    assert listen.startswith("127.0.0.1:"), listen


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs unshare and root (a PID namespace)",
)
@pytest.mark.parametrize("deployment", ["web", "web-client"])
def test_the_example_workload_stops_on_sigterm_as_pid_1(deployment: str, tmp_path: Path) -> None:
    # In its container the workload is PID 1, and the kernel delivers no SIGTERM to a PID 1
    # without a handler: the pod would wait for the grace period's SIGKILL, and the sidecar's
    # drain would be cut short (docs/OPERATIONS.md, termination order). Run it as PID 1 of a new
    # PID namespace and send SIGTERM.
    (c,) = pod_specs()[deployment]["containers"]
    argv = [str(a) for a in c.get("command", []) + c.get("args", [])]
    port = 0
    if deployment == "web":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable if a == "python3" else str(port) if a == "8080" else a for a in argv]
        argv = [str(tmp_path) if a == "/srv/www" else a for a in argv]
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.02)
        (pid1,) = map(int, children.read_text().split())
        if port:  # serving: its handler is installed
            while time.monotonic() < deadline:
                with socket.socket() as s, contextlib.suppress(OSError):
                    s.connect(("127.0.0.1", port))
                    break
                time.sleep(0.05)
        else:
            time.sleep(0.5)  # the shell has read its trap
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
