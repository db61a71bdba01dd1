"""TPM verifier on quotes built here with our own AKs: every check, every scheme, no vectors.

``SynthQuote`` marshals a TPMS_ATTEST (TPM 2.0 Part 2 §10.12.12) and signs it like a TPM would
(RSASSA, RSAPSS or ECDSA over the attest bytes), so each field can be changed and re-signed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.ops.tpm_files import load_tpm_trust
from atls_proxy.verify.azure_hcl import (
    HCL_HEADER_SIZE,
    HCL_MAGIC,
    HW_REPORT_SIZE,
    MAX_VARIABLE_DATA_SIZE,
)
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.tpm import (
    MEDIA_TYPE,
    TpmEvidence,
    TpmPolicy,
    TpmTrust,
    TpmVerifier,
    TrustedAk,
    appraise_tpm,
    decode_evidence,
    encode_evidence,
    parse_ak_file,
    parse_hcl_report,
    parse_quote,
    parse_signature,
    parse_tpm_policy,
    qualifying_data,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RSA_AK = rsa.generate_private_key(65537, 2048)
EC_AK = ec.generate_private_key(ec.SECP256R1())
NONCE = bytes(range(32))
HASH_IDS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
_CRYPTO: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def pcr_values(bank: str = "sha256", count: int = 24) -> dict[int, bytes]:
    size = hashlib.new(bank).digest_size
    return {i: hashlib.new(bank, bytes([i])).digest()[:size] for i in range(count)}


def u(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


def tpm2b(data: bytes) -> bytes:
    return u(len(data), 2) + data


@dataclass
class SynthQuote:
    key: Any = RSA_AK
    scheme: str = "rsassa"  # rsassa | rsapss | ecdsa
    sig_hash: str = "sha256"
    bank: str = "sha256"
    selected: tuple[int, ...] = tuple(range(24))
    extra_banks: tuple[str, ...] = ()
    extra_data: bytes = NONCE
    magic: int = 0xFF544347
    st: int = 0x8018
    firmware: int = 0x2020031200120003
    pcrs: dict[int, bytes] = field(default_factory=pcr_values)
    digest_override: bytes | None = None
    with_ak: bool = True
    attest_trailing: bytes = b""

    def selection(self) -> bytes:
        def one(bank: str, indexes: tuple[int, ...]) -> bytes:
            bitmap = bytearray(3)
            for i in indexes:
                bitmap[i // 8] |= 1 << (i % 8)
            return u(HASH_IDS[bank], 2) + u(3, 1) + bytes(bitmap)

        banks = [one(self.bank, self.selected)] + [one(b, (0,)) for b in self.extra_banks]
        return u(len(banks), 4) + b"".join(banks)

    def attest(self) -> bytes:
        digest = hashlib.new(self.sig_hash, b"".join(self.pcrs[i] for i in self.selected)).digest()
        if self.digest_override is not None:
            digest = self.digest_override
        return (
            u(self.magic, 4)
            + u(self.st, 2)
            + tpm2b(b"\x00\x0b" + b"\x55" * 32)
            + tpm2b(self.extra_data)
            + u(123456, 8)
            + u(2, 4)
            + u(0, 4)
            + b"\x01"
            + u(self.firmware, 8)
            + self.selection()
            + tpm2b(digest)
        )

    def signature(self, attest: bytes) -> bytes:
        h = _CRYPTO[self.sig_hash]()
        hid = u(HASH_IDS[self.sig_hash], 2)
        if self.scheme == "ecdsa":
            r, s = decode_dss_signature(self.key.sign(attest, ec.ECDSA(h)))
            n = (self.key.curve.key_size + 7) // 8
            return u(0x0018, 2) + hid + tpm2b(u(r, n)) + tpm2b(u(s, n))
        if self.scheme == "rsapss":
            pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(h), h.digest_size)
            return u(0x0016, 2) + hid + tpm2b(self.key.sign(attest, pad, h))
        return u(0x0014, 2) + hid + tpm2b(self.key.sign(attest, padding.PKCS1v15(), h))

    def evidence(self) -> bytes:
        attest = self.attest()
        return encode_evidence(
            TpmEvidence(
                attest=attest + self.attest_trailing,
                signature=self.signature(attest),
                pcrs=self.pcrs,
                pcr_bank=self.bank,
                ak_spki=spki(self.key.public_key()) if self.with_ak else None,
            )
        )

    def trust(self) -> TpmTrust:
        return TpmTrust((TrustedAk(self.key.public_key(), "synthetic-ak"),))


def spki(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def appraise(synth: SynthQuote, policy: TpmPolicy | None = None, **kw: Any) -> Appraisal:
    return appraise_tpm(
        kw.pop("evidence", None) or synth.evidence(),
        policy=policy or TpmPolicy(),
        trust=kw.pop("trust", synth.trust()),
        now=NOW,
        expected_report_data=kw.pop("expected_report_data", NONCE),
    )


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


def test_a_synthetic_quote_passes_every_check() -> None:
    a = appraise(SynthQuote())
    assert a.passed, a.first_failure
    assert [c.name for c in a.checks] == [
        "tpm.evidence.format",
        "tpm.quote.format",
        "tpm.ak.trusted",
        "tpm.signature.algorithm",
        "tpm.signature.quote",
        "tpm.firmware",
        "tpm.pcr.bank",
        "tpm.pcr.digest",
        *[f"tpm.register.pcr{i}" for i in range(24)],
        "tpm.report-data",
    ]
    assert a.trust_vector == {"instance-identity": 2, "hardware": 32}


@pytest.mark.parametrize(
    ("key", "scheme", "sig_hash"),
    [
        (RSA_AK, "rsassa", "sha256"),
        (RSA_AK, "rsassa", "sha384"),
        (RSA_AK, "rsapss", "sha256"),
        (RSA_AK, "rsapss", "sha512"),
        (EC_AK, "ecdsa", "sha256"),
        (ec.generate_private_key(ec.SECP384R1()), "ecdsa", "sha384"),
    ],
)
def test_every_scheme(key: Any, scheme: str, sig_hash: str) -> None:
    for with_ak in (True, False):
        a = appraise(SynthQuote(key=key, scheme=scheme, sig_hash=sig_hash, with_ak=with_ak))
        assert a.passed, a.first_failure


def test_sha1_signatures_are_refused_by_default() -> None:
    synth = SynthQuote(sig_hash="sha1")
    assert failed(appraise(synth)) == "tpm.signature.algorithm"
    policy = TpmPolicy(accepted_signature_hashes=frozenset({"sha1", "sha256"}))
    assert appraise(synth, policy).passed


def test_scheme_that_does_not_fit_the_ak() -> None:
    # An ECDSA signature with only an RSA AK trusted: refused before any verification.
    synth = SynthQuote(key=EC_AK, scheme="ecdsa", with_ak=False)
    a = appraise(synth, trust=SynthQuote().trust())
    assert failed(a) == "tpm.signature.algorithm"


def test_untrusted_ak() -> None:
    other = TpmTrust((TrustedAk(rsa.generate_private_key(65537, 2048).public_key(), "other"),))
    a = appraise(SynthQuote(), trust=other)
    assert failed(a) == "tpm.ak.trusted"
    assert a.trust_vector["instance-identity"] == 96
    a = appraise(SynthQuote(with_ak=False), trust=other)
    assert failed(a) == "tpm.signature.quote"
    assert failed(appraise(SynthQuote(), trust=TpmTrust(()))) == "tpm.ak.trusted"


def test_tampered_attest_and_signature() -> None:
    synth = SynthQuote()
    ev = decode_evidence(synth.evidence())
    for pos in (20, 50, len(ev.attest) - 1):  # qualifiedSigner, extraData, pcrDigest
        attest = bytearray(ev.attest)
        attest[pos] ^= 0x01
        bad = encode_evidence(
            TpmEvidence(bytes(attest), ev.signature, ev.pcrs, ev.pcr_bank, ev.ak_spki)
        )
        assert failed(appraise(synth, evidence=bad)) == "tpm.signature.quote"
    sig = bytearray(ev.signature)
    sig[-1] ^= 0x01
    bad = encode_evidence(TpmEvidence(ev.attest, bytes(sig), ev.pcrs, ev.pcr_bank, ev.ak_spki))
    assert failed(appraise(synth, evidence=bad)) == "tpm.signature.quote"


def test_not_a_quote() -> None:
    assert failed(appraise(SynthQuote(magic=0xFF544348))) == "tpm.quote.format"
    a = appraise(SynthQuote(st=0x8017))  # TPM_ST_ATTEST_CERTIFY
    assert failed(a) == "tpm.quote.format"
    assert "TPM_ST_ATTEST_QUOTE" in a.checks[-1].detail


def test_pcr_values_not_matching_the_digest() -> None:
    synth = SynthQuote()
    ev = decode_evidence(synth.evidence())
    pcrs = dict(ev.pcrs)
    pcrs[7] = b"\x00" * 32
    bad = encode_evidence(TpmEvidence(ev.attest, ev.signature, pcrs, ev.pcr_bank, ev.ak_spki))
    a = appraise(synth, evidence=bad)
    assert failed(a) == "tpm.pcr.digest"
    assert a.checks[-1].name == "tpm.pcr.digest"  # no PCR lines after unauthenticated values


def test_missing_and_extra_pcr_values() -> None:
    synth = SynthQuote(selected=(0, 1, 7))
    ev = decode_evidence(synth.evidence())
    assert appraise(synth).passed
    digest = next(c for c in appraise(synth).checks if c.name == "tpm.pcr.digest")
    assert "not covered, ignored" in digest.detail
    registers = [c.name for c in appraise(synth).checks if c.name.startswith("tpm.register")]
    assert registers == ["tpm.register.pcr0", "tpm.register.pcr1", "tpm.register.pcr7"]
    pcrs = {0: ev.pcrs[0], 1: ev.pcrs[1]}
    bad = encode_evidence(TpmEvidence(ev.attest, ev.signature, pcrs, ev.pcr_bank, ev.ak_spki))
    a = appraise(synth, evidence=bad)
    assert failed(a) == "tpm.pcr.digest"
    assert "7" in a.checks[-1].detail


def test_pcr_policy() -> None:
    values = pcr_values()
    policy = parse_tpm_policy(
        {"pcrs": {"0": [values[0].hex()], "7": ["00" * 32, values[7].hex()]}}, "tpm", lambda _: b""
    )
    a = appraise(SynthQuote(), policy)
    assert a.passed and a.trust_vector["executables"] == 2
    policy = parse_tpm_policy({"pcrs": {"7": ["00" * 32]}}, "tpm", lambda _: b"")
    a = appraise(SynthQuote(), policy)
    assert failed(a) == "tpm.register.pcr7"
    assert a.trust_vector["executables"] == 96
    policy = parse_tpm_policy({"pcrs": {"9": [values[9].hex()]}}, "tpm", lambda _: b"")
    a = appraise(SynthQuote(selected=(0, 1)), policy)
    assert failed(a) == "tpm.register.pcr9"
    assert "not selected" in (a.first_failure.detail if a.first_failure else "")


def test_banks() -> None:
    assert failed(appraise(SynthQuote(bank="sha384", pcrs=pcr_values("sha384")))) == "tpm.pcr.bank"
    policy = TpmPolicy(pcr_bank="sha384")
    assert appraise(SynthQuote(bank="sha384", pcrs=pcr_values("sha384")), policy).passed
    a = appraise(SynthQuote(extra_banks=("sha1",)))
    assert failed(a) == "tpm.pcr.bank"
    assert "2 banks" in a.checks[-1].detail


def test_software_tpm_firmware() -> None:
    synth = SynthQuote(firmware=0x2019102300163636)
    a = appraise(synth)
    assert failed(a) == "tpm.firmware"
    assert "SOFTWARE TPM" in a.checks[5].detail
    assert a.checks[-1].name == "tpm.report-data"  # reported, not a stop
    assert a.trust_vector["hardware"] == 96
    assert appraise(synth, TpmPolicy(allow_software_tpm=True)).passed


def test_report_data() -> None:
    a = appraise(SynthQuote(), expected_report_data=b"\x00" * 32)
    assert failed(a) == "tpm.report-data"
    a = appraise(SynthQuote(), expected_report_data=None)
    assert a.passed
    assert a.checks[-1].detail == "not checked: no binding (offline appraisal)"
    assert a.checks[-1].observed == NONCE.hex()


def test_trailing_bytes_after_the_attest_are_reported() -> None:
    a = appraise(SynthQuote(attest_trailing=b"\x00" * 5))
    assert a.passed, a.first_failure
    check = next(c for c in a.checks if c.name == "tpm.quote.trailing-bytes")
    assert "5 bytes after TPMS_ATTEST" in check.detail


def test_verifier_class_uses_the_bindings_qualifying_data() -> None:
    binding = Binding("sha384", b"\x01" * 48, b"\x02" * 48)
    synth = SynthQuote(extra_data=qualifying_data(binding))
    verifier = TpmVerifier(TpmPolicy(), synth.trust(), clock=lambda: NOW)
    assert verifier.accepts(MEDIA_TYPE)
    assert not verifier.accepts("application/vnd.atls-proxy.cca-token")
    assert verifier.appraise(MEDIA_TYPE, synth.evidence(), binding, 0.0).passed
    other = Binding("sha384", b"\x03" * 48, b"\x02" * 48)
    assert failed(verifier.appraise(MEDIA_TYPE, synth.evidence(), other, 0.0)) == "tpm.report-data"
    # The AIK hash is covered too (the cached tier's quoted "binder" does not cover the TLS key).
    other_aik = Binding("sha384", b"\x01" * 48, b"\x04" * 48)
    assert (
        failed(verifier.appraise(MEDIA_TYPE, synth.evidence(), other_aik, 0.0)) == "tpm.report-data"
    )
    # The binder alone (the earlier rule) is refused.
    bare = SynthQuote(extra_data=binding.binder)
    assert failed(verifier.appraise(MEDIA_TYPE, bare.evidence(), binding, 0.0)) == "tpm.report-data"


def test_evidence_encoding_round_trip_and_errors() -> None:
    synth = SynthQuote()
    data = synth.evidence()
    ev = decode_evidence(data)
    assert encode_evidence(ev) == data
    quote = parse_quote(ev.attest)
    assert quote.extra_data == NONCE and quote.firmware_version == 0x2020031200120003
    assert [s.pcrs for s in quote.selections] == [tuple(range(24))]
    sig = parse_signature(ev.signature)
    assert sig.scheme == "RSASSA" and sig.hash_name == "sha256"
    doc = cbor2.loads(data)
    mutations: list[Callable[[dict[Any, Any]], object]] = [
        lambda d: d.pop(1),
        lambda d: d.update({6: b""}),
        lambda d: d.update({3: {"0": b"\x00" * 32}}),
        lambda d: d.update({3: {0: b"\x00" * 20}}),
        lambda d: d.update({4: "md5"}),
        lambda d: d.update({5: "not bytes"}),
        lambda d: d.update({3: {64: b"\x00" * 32}}),
    ]
    for mutate in mutations:
        bad = dict(doc)
        mutate(bad)
        with pytest.raises(DecodeError):
            decode_evidence(cbor2.dumps(bad))
        a = appraise(synth, evidence=cbor2.dumps(bad))
        assert [c.name for c in a.checks] == ["tpm.evidence.format"]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"bogus": 1}, "tpm.bogus"),
        ({"pcr_bank": "md5"}, "tpm.pcr_bank"),
        ({"accepted_signature_hashes": []}, "tpm.accepted_signature_hashes"),
        ({"accepted_signature_hashes": ["sha3"]}, "tpm.accepted_signature_hashes[0]"),
        ({"allow_software_tpm": "yes"}, "tpm.allow_software_tpm"),
        ({"pcrs": []}, "tpm.pcrs"),
        ({"pcrs": {"07": ["00" * 32]}}, "tpm.pcrs.07"),
        ({"pcrs": {"64": ["00" * 32]}}, "tpm.pcrs.64"),
        ({"pcrs": {"pcr0": ["00" * 32]}}, 'tpm.pcrs."pcr0"'),
        ({"pcrs": {"0": []}}, "tpm.pcrs.0"),
        ({"pcrs": {"0": ["00" * 20]}}, "tpm.pcrs.0[0]"),
        ({"pcrs": {"0": ["xyz"]}}, "tpm.pcrs.0[0]"),
    ],
)
def test_policy_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tpm_policy(table, "tpm", lambda _: b"")
    assert info.value.key == key


def test_policy_defaults() -> None:
    policy = parse_tpm_policy({}, "tpm", lambda _: b"")
    assert policy == TpmPolicy()
    assert policy.accepted_signature_hashes == frozenset({"sha256", "sha384", "sha512"})
    assert policy.pcr_bank == "sha256" and not policy.allow_software_tpm


# -- JSON nested deeper than the interpreter's recursion limit --------------------------------------


def deep_jwk_set(depth: int) -> bytes:
    return b'{"keys":' + b"[" * depth + b"]" * depth + b"}"


def synthetic_hcl_report(claims: bytes) -> bytes:
    """An HCL report shape around ``claims``: header, a zero hardware report, IGVM request data
    (data size, version, report type 2 = SNP, hash type 1 = SHA-256, variable data size)."""
    igvm = struct.pack("<5I", 20 + len(claims), 1, 2, 1, len(claims))
    size = HCL_HEADER_SIZE + HW_REPORT_SIZE + len(igvm) + len(claims)
    header = HCL_MAGIC + struct.pack("<4I", 1, size, 2, 0) + bytes(12)
    return header + bytes(HW_REPORT_SIZE) + igvm + claims


def test_deeply_nested_ak_file_json_is_a_decode_error(tmp_path: Path) -> None:
    deep = deep_jwk_set(100_000)
    with pytest.raises(DecodeError, match="not JSON"):
        parse_ak_file(deep, "ak.json")
    (tmp_path / "ak.json").write_bytes(deep)
    with pytest.raises(ConfigError, match="not an AK public key"):
        load_tpm_trust(None, tmp_path)


def test_deeply_nested_hcl_runtime_claims_are_a_decode_error(tmp_path: Path) -> None:
    depth = (MAX_VARIABLE_DATA_SIZE - 16) // 2  # deep, yet within the variable-data cap
    report = synthetic_hcl_report(deep_jwk_set(depth))
    with pytest.raises(DecodeError, match="not JSON"):
        parse_hcl_report(report)
    (tmp_path / "vm.hcl").write_bytes(report)
    with pytest.raises(ConfigError, match="not an Azure HCL report"):
        load_tpm_trust(None, tmp_path)
