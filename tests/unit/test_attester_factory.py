"""atls_proxy.attest.factory: every attester kind built from configuration, the start-up checks of
the configfs-tsm tree (against the fake kernel, atls_proxy/attest/configfs_fake.py), the engine's
three tiers over a configfs attester appraised through ``appraise_cmw``, and a real in-process
server (``build_server``) with a configfs attester serving one attested connection.

The TPM kind against a real software TPM is in tests/integration/test_tpm_attester.py.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.attest import factory, tpm
from atls_proxy.attest.configfs import (
    PROVIDER_MEDIA_TYPES,
    ConfigfsTsmAttester,
    embedded_report_data,
)
from atls_proxy.attest.configfs_fake import FakeTsm
from atls_proxy.attest.engine import EvidenceEngine, Tier
from atls_proxy.attest.factory import build_attester
from atls_proxy.attest.software import SoftwareAttester
from atls_proxy.attest.tpm import TpmAttester
from atls_proxy.errors import ConfigError
from atls_proxy.expat.binding import Binding
from atls_proxy.ops.config import (
    AttesterConfig,
    ConfigfsTsmAttesterConfig,
    TpmAttesterConfig,
    load_server_config,
)
from atls_proxy.ops.devinit import dev_init
from atls_proxy.verify.appraise import appraise_cmw
from atls_proxy.verify.result import Appraisal, Check
from tests.support.freshness import ALL_TIERS

AIK = ec.generate_private_key(ec.SECP256R1())
AIK_HASH = hashlib.sha256(
    AIK.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).digest()


def configfs_cfg(root: Path, **kwargs: object) -> AttesterConfig:
    return AttesterConfig(
        kind="configfs-tsm",
        configfs_tsm=ConfigfsTsmAttesterConfig(root=root, **kwargs),  # type: ignore[arg-type]
    )


class ReportDataVerifier:
    """Stands in for the TDX/SNP/CCA verifiers (the fake's HMAC 'signatures' verify nowhere): it
    compares the report data the evidence carries with the 64-byte filling of the binding it is
    given, exactly the comparison the real verifiers make."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def accepts(self, media_type: str) -> bool:
        return media_type == PROVIDER_MEDIA_TYPES[self.provider]

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        observed = embedded_report_data(self.provider, evidence)
        ok = observed == expected.report_data()
        return Appraisal("fake-" + self.provider, [Check("fake.report-data", ok)])


# --- software ------------------------------------------------------------------------------------


def test_software_attester_from_the_dev_config(tmp_path: Path) -> None:
    dev_init(tmp_path / "dev")
    cfg = load_server_config(tmp_path / "dev" / "serve.toml")
    attester = build_attester(cfg.attester)
    assert isinstance(attester, SoftwareAttester) and attester.simulated


def test_missing_tables_and_unknown_kind() -> None:
    with pytest.raises(ConfigError) as e:
        build_attester(AttesterConfig(kind="configfs-tsm"))
    assert e.value.key == "attester.configfs_tsm"
    with pytest.raises(ConfigError) as e:
        build_attester(AttesterConfig(kind="tpm"))
    assert e.value.key == "attester.tpm"
    with pytest.raises(ConfigError) as e:
        build_attester(AttesterConfig(kind="sgx"))  # type: ignore[arg-type]
    assert e.value.key == "attester.kind"


def test_tpm_attester_arguments_are_checked_without_a_tpm() -> None:
    TpmAttester("device:/dev/tpmrm0")  # construction touches no TPM
    for kwargs, match in [
        ({"ak_handle": 0x80000001}, "owner persistent handle"),
        ({"create_ak": True}, "set ak_handle"),
        ({"pcrs": []}, "at least one PCR"),
        ({"pcrs": [1, 1]}, "distinct"),
        ({"pcrs": [24]}, "0..23"),
        ({"pcr_bank": "md5"}, "pcr_bank"),
        ({"ak_algorithm": "ed25519"}, "ak_algorithm"),
        ({"hierarchy": "platform"}, "hierarchy"),
        ({"timeout": 0}, "timeout"),
        ({"open_timeout": 0}, "open_timeout"),
        ({"open_timeout": 301}, "open_timeout"),
    ]:
        with pytest.raises(ValueError, match=match):
            TpmAttester("device:/dev/tpmrm0", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TCTI"):
        TpmAttester("")
    # Opening may create an RSA primary key (tens of seconds on some TPMs): at least 60 s.
    assert TpmAttester("device:/dev/tpmrm0", timeout=0.5)._open_timeout == tpm.OPEN_TIMEOUT_FLOOR
    assert TpmAttester("device:/dev/tpmrm0", timeout=120)._open_timeout == 120
    assert TpmAttester("device:/dev/tpmrm0", open_timeout=2)._open_timeout == 2
    cfg = AttesterConfig(kind="tpm", tpm=TpmAttesterConfig(tcti="device:/dev/tpmrm0", pcrs=(99,)))
    with pytest.raises(ConfigError) as e:
        build_attester(cfg)
    assert e.value.key == "attester.tpm" and "0..23" in e.value.message


def test_tpm_ak_scheme_check_names_what_verifiers_refuse() -> None:
    """A persistent AK's scheme/hash (TPM_ALG_IDs); the swtpm case is in test_tpm_attester.py."""
    sha1, sha256, sha512, sm3 = 0x0004, 0x000B, 0x000D, 0x0012
    rsassa, ecdsa, ecschnorr = 0x0014, 0x0018, 0x001C
    assert tpm._scheme_problem(ecdsa, sha256) is None
    assert tpm._scheme_problem(rsassa, sha512) is None
    assert tpm._scheme_problem(ecdsa, sha1) == (
        "signs with ECDSA/sha1; verifiers accept sha256, sha384, sha512 signature hashes only "
        "(create an AK with a SHA-256 scheme)"
    )
    assert "RSASSA/hash 0x0012" in (tpm._scheme_problem(rsassa, sm3) or "")
    assert "scheme 0x001c/sha256; verifiers accept RSASSA, RSAPSS, ECDSA signatures only" in (
        tpm._scheme_problem(ecschnorr, sha256) or ""
    )


# --- configfs-tsm: start-up checks -------------------------------------------------------------


@pytest.mark.configfs
@pytest.mark.parametrize("provider", sorted(PROVIDER_MEDIA_TYPES))
def test_configfs_attester_built_over_the_fake_tree(tmp_path: Path, provider: str) -> None:
    fake = FakeTsm(tmp_path / "report", provider)
    attester = build_attester(
        configfs_cfg(fake.root, provider=provider, timeout=3.0, retries=1, entry_prefix="t1"),
        tsm_ops=fake.ops,
    )
    assert isinstance(attester, ConfigfsTsmAttester) and not attester.simulated
    assert attester.root == fake.root
    assert fake.mkdirs == 1 and fake.quoted == []  # probed, nothing quoted
    assert fake.live_entries() == []


@pytest.mark.configfs
def test_configfs_missing_tree_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(tmp_path / "absent"))
    assert e.value.key == "attester.configfs_tsm.root"
    assert "not found: not a confidential VM" in e.value.message
    # The real file operations (no fake) see the same missing folder.
    assert str(tmp_path / "absent") in e.value.message


@pytest.mark.configfs
@pytest.mark.parametrize(
    "code,text",
    [
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "not permitted"),
        (errno.ENXIO, "no TSM provider is registered"),
    ],
)
def test_configfs_entry_creation_failure(tmp_path: Path, code: int, text: str) -> None:
    fake = FakeTsm(tmp_path / "report")
    fake.mkdir_errno = code
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(fake.root), tsm_ops=fake.ops)
    assert e.value.key == "attester.configfs_tsm.root" and text in e.value.message


@pytest.mark.configfs
def test_configfs_provider_checks(tmp_path: Path) -> None:
    tdx = FakeTsm(tmp_path / "tdx", "tdx_guest")
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(tdx.root, provider="sev_guest"), tsm_ops=tdx.ops)
    assert e.value.key == "attester.configfs_tsm.provider"
    assert "'tdx_guest'" in e.value.message and "'sev_guest'" in e.value.message
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(tdx.root, privlevel=1), tsm_ops=tdx.ops)
    assert e.value.key == "attester.configfs_tsm.privlevel"
    other = FakeTsm(tmp_path / "other", "pkvm_guest")
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(other.root), tsm_ops=other.ops)
    assert "unknown TSM provider 'pkvm_guest'" in e.value.message
    snp = FakeTsm(tmp_path / "snp", "sev_guest")
    assert build_attester(configfs_cfg(snp.root, privlevel=2), tsm_ops=snp.ops)
    for fake in (tdx, other, snp):
        assert fake.live_entries() == []


@pytest.mark.configfs
@pytest.mark.parametrize("kwargs", [{}, {"auxblob": b"", "privlevel_floor": 0, "svsm": True}])
def test_configfs_privlevel_on_cca_is_refused_although_the_attribute_is_there(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    # arm_cca_guest registers no report_attr_visible callback: on kernels >= 6.10 its entries
    # show privlevel too, and the provider ignores it. Only sev_guest has privilege levels.
    cca = FakeTsm(tmp_path / "cca", "arm_cca_guest", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        build_attester(configfs_cfg(cca.root, privlevel=1), tsm_ops=cca.ops)
    assert e.value.key == "attester.configfs_tsm.privlevel"
    assert "'arm_cca_guest' has no privilege levels" in e.value.message
    assert build_attester(configfs_cfg(cca.root), tsm_ops=cca.ops)
    assert cca.live_entries() == []


# --- configfs-tsm through the engine and the relying party's appraisal -----------------------


@pytest.mark.configfs
@pytest.mark.parametrize("provider", sorted(PROVIDER_MEDIA_TYPES))
@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_engine_round_trip_over_the_fake_tree(
    tmp_path: Path, provider: str, tier: Tier
) -> None:
    fake = FakeTsm(tmp_path / "report", provider, auxblob=b"")  # SNP: the bare report type
    attester = build_attester(configfs_cfg(fake.root), tsm_ops=fake.ops)
    engine = EvidenceEngine(attester, tier, aik_key=AIK)
    try:
        await engine.start()
        bindings = [Binding("sha256", os.urandom(32), AIK_HASH) for _ in range(4)]
        cmws = await asyncio.gather(*(engine.evidence_for(b) for b in bindings))
    finally:
        await engine.close()
    v = ReportDataVerifier(provider)
    for b, cmw in zip(bindings, cmws, strict=True):
        (a,) = appraise_cmw(
            cmw, b, [v], time.time(), freshness=ALL_TIERS, aik_public_key=AIK.public_key()
        )
        assert a.passed, a.first_failure
    other = Binding("sha256", os.urandom(32), AIK_HASH)
    (a,) = appraise_cmw(
        cmws[0], other, [v], time.time(), freshness=ALL_TIERS, aik_public_key=AIK.public_key()
    )
    assert not a.passed
    assert fake.live_entries() == []


# --- a real server, in process ----------------------------------------------------------------


@pytest.mark.configfs
async def test_build_server_with_a_configfs_attester_serves_an_attested_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atls_proxy.app import build_client_settings, build_server
    from atls_proxy.ops.config import Address, load_client_config
    from atls_proxy.proxy.client import open_attested

    dev = tmp_path / "dev"
    dev_init(dev)
    fake = FakeTsm(tmp_path / "report", "tdx_guest")
    text = (dev / "serve.toml").read_text()
    (dev / "serve-configfs.toml").write_text(
        text[: text.index("[attester]")]
        + f'[attester]\nkind = "configfs-tsm"\n\n[attester.configfs_tsm]\nroot = "{fake.root}"\n'
        'provider = "tdx_guest"\n'
    )

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    backend_server = await asyncio.start_server(backend, "127.0.0.1", 0)
    bport = backend_server.sockets[0].getsockname()[1]
    scfg = load_server_config(dev / "serve-configfs.toml", backend=f"127.0.0.1:{bport}")
    scfg = replace(scfg, listen=Address("tcp", "127.0.0.1", 0))
    # The real file operations would touch the fake's mirror files, which cannot compute reports.
    monkeypatch.setattr(factory, "OsTsmOps", lambda: fake.ops)
    server = build_server(scfg)
    assert isinstance(server.engine.attester, ConfigfsTsmAttester)
    (_, port), *_ = await server.start()
    task = asyncio.ensure_future(server.serve_forever())
    try:
        settings = build_client_settings(
            load_client_config(dev / "connect.toml", server=f"127.0.0.1:{port}")
        )
        settings = replace(settings, verifiers=[ReportDataVerifier("tdx_guest")])
        conn = await open_attested(settings, keep_open=False)
        assert conn.report.passed
        assert len(fake.quoted) == 1  # the connection's report data went through the fake kernel
    finally:
        task.cancel()
        await server.close()
        backend_server.close()
    assert fake.live_entries() == []
