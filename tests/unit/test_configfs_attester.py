"""The configfs-tsm attester against a fake kernel tree (atls_proxy/attest/configfs_fake.py).

Covers the ABI sequence (mkdir, generation, inblob, outblob, auxblob, rmdir), the evidence per
provider, the generation-race retry (a writer before our first generation read included), every
injected fault, time-outs, the one-quote-at-a-time guard, entry clean-up after every outcome, the
real TDX/SNP/CCA vectors in ../shared/vectors as provider output, and hypothesis over user-data
sizes and garbage reports.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atls_proxy.attest.base import Attester, Evidence
from atls_proxy.attest.configfs import (
    MAX_AUXBLOB_SIZE,
    MAX_OUTBLOB_SIZE,
    PROVIDER_MEDIA_TYPES,
    SNP_CERTS_MEDIA_TYPE,
    ConfigfsTsmAttester,
    OsTsmOps,
    TsmReport,
    build_evidence,
    embedded_report_data,
    privlevel_problem,
    probe,
)
from atls_proxy.attest.configfs_fake import FakeTsm, FakeTsmOps, fake_cert_table, fake_report
from atls_proxy.errors import AttestationUnavailable
from atls_proxy.expat.binding import Binding

pytestmark = pytest.mark.configfs

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
PROVIDERS = ["tdx_guest", "sev_guest", "arm_cca_guest"]

MakeTsm = Callable[..., FakeTsm]


def binding(hash_name: str = "sha256") -> Binding:
    n = 32 if hash_name == "sha256" else 48
    return Binding(hash_name, os.urandom(n), os.urandom(n))


def attester(fake: FakeTsm, **kwargs: object) -> ConfigfsTsmAttester:
    return ConfigfsTsmAttester(fake.root, ops=fake.ops, **kwargs)  # type: ignore[arg-type]


def snp_parts(data: bytes) -> tuple[bytes, bytes]:
    decoded = cbor2.loads(data)
    assert set(decoded) == {1, 2}
    return decoded[1], decoded[2]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def make_tsm(tmp_path: Path) -> Iterator[MakeTsm]:
    """Fake kernels under tmp_path; afterwards: hangs released, no entry left behind."""
    made: list[FakeTsm] = []

    def make(provider: str = "tdx_guest", **kwargs: object) -> FakeTsm:
        root = tmp_path / f"k{len(made)}" / "sys" / "kernel" / "config" / "tsm" / "report"
        fake = FakeTsm(root, provider, **kwargs)  # type: ignore[arg-type]
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.release()
        # A quote abandoned by its caller finishes in its thread, then removes its entry.
        clean = wait_until(lambda fake=fake: not fake.live_entries())  # type: ignore[misc]
        assert clean, fake.live_entries()


# -- the happy path, per provider ---------------------------------------------------------------


def test_is_an_attester() -> None:
    a: Attester = ConfigfsTsmAttester()
    assert a.name == "configfs-tsm"
    assert a.simulated is False


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
async def test_tdx_inblob_is_the_binding_report_data(make_tsm: MakeTsm, hash_name: str) -> None:
    fake = make_tsm("tdx_guest")
    b = binding(hash_name)
    ev = await attester(fake).attest(b)
    assert len(b.report_data()) == 64
    assert fake.quoted == [b.report_data()]
    assert (
        ev.media_type == PROVIDER_MEDIA_TYPES["tdx_guest"] == "application/vnd.atls-proxy.tdx-quote"
    )
    assert ev.data == fake_report("tdx_guest", b.report_data())
    assert embedded_report_data("tdx_guest", ev.data) == b.report_data()
    # The entry had the real layout on disk while it was quoted, and is gone now.
    assert fake.layouts == [["generation", "inblob", "outblob", "provider"]]
    assert fake.live_entries() == []


async def test_entry_files_mirror_the_kernel_state(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest")
    seen: dict[str, bytes] = {}
    real_read = fake.ops.read

    def spy(path: Path, limit: int) -> bytes:
        out = real_read(path, limit)
        if path.name == "outblob":
            entry = path.parent
            seen.update({p.name: p.read_bytes() for p in entry.iterdir()})
        return out

    fake.ops.read = spy  # type: ignore[method-assign]
    b = binding()
    await attester(fake).attest(b)
    assert seen["inblob"] == b.report_data()
    assert seen["generation"] == b"1\n"
    assert seen["provider"] == b"sev_guest\n"
    assert seen["privlevel_floor"] == b"0\n"
    assert seen["outblob"] == fake_report("sev_guest", b.report_data())
    assert entry_names_are_unique(fake)


def entry_names_are_unique(fake: FakeTsm) -> bool:
    return len(fake.layouts) == fake.mkdirs


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
async def test_snp_with_certificate_table(make_tsm: MakeTsm, hash_name: str) -> None:
    fake = make_tsm("sev_guest")
    b = binding(hash_name)
    ev = await attester(fake).attest(b)
    assert ev.media_type == SNP_CERTS_MEDIA_TYPE == "application/vnd.atls-proxy.snp-report+certs"
    report, certs = snp_parts(ev.data)
    assert report == fake_report("sev_guest", b.report_data())
    assert certs == fake_cert_table()
    assert report[0x50:0x90] == b.report_data()
    # Deterministic (canonical) CBOR: re-encoding gives the same bytes.
    assert cbor2.dumps(cbor2.loads(ev.data), canonical=True) == ev.data


async def test_snp_with_empty_auxblob_is_the_bare_report(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest", auxblob=b"")
    b = binding()
    ev = await attester(fake).attest(b)
    assert ev.media_type == "application/vnd.atls-proxy.snp-report"
    assert ev.data == fake_report("sev_guest", b.report_data())


async def test_snp_oversized_auxblob_is_refused(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest", auxblob=b"\x01" * (MAX_AUXBLOB_SIZE + 1))
    with pytest.raises(AttestationUnavailable, match="auxblob is larger"):
        await attester(fake).attest(binding())


async def test_cca_token_carries_the_challenge(make_tsm: MakeTsm) -> None:
    fake = make_tsm("arm_cca_guest")
    b = binding("sha384")
    ev = await attester(fake).attest(b)
    assert ev.media_type == "application/vnd.atls-proxy.cca-token"
    token = cbor2.loads(ev.data)
    assert token.tag == 399
    realm = cbor2.loads(token.value[44241])
    assert cbor2.loads(realm.value[2])[10] == b.report_data()


# -- privilege levels (SEV-SNP VMPL) --------------------------------------------------------------


async def test_explicit_privlevel_is_written(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest", auxblob=b"")
    a = attester(fake, privlevel=2)
    ev = await a.attest(binding())
    assert struct.unpack_from("<I", ev.data, 0x30)[0] == 2  # VMPL field of the report
    assert a.last_report is not None and a.last_report.privlevel == 2


async def test_guest_under_svsm_asks_for_its_floor(
    make_tsm: MakeTsm, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_tsm("sev_guest", auxblob=b"", privlevel_floor=1, svsm=True)
    a = attester(fake)
    with caplog.at_level(logging.INFO, logger="atls_proxy.attest.configfs"):
        ev = await a.attest(binding())
    assert struct.unpack_from("<I", ev.data, 0x30)[0] == 1
    assert a.last_report is not None
    assert {"service_provider", "manifestblob"} <= a.last_report.features
    assert "SVSM attributes present" in caplog.text


async def test_privlevel_below_floor_is_refused_before_quoting(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest", privlevel_floor=2)
    with pytest.raises(AttestationUnavailable, match="below privlevel_floor 2"):
        await attester(fake, privlevel=0).attest(binding())
    assert fake.quoted == []


async def test_privlevel_on_tdx_is_a_configuration_error(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    with pytest.raises(AttestationUnavailable, match="'tdx_guest' has no privilege levels"):
        await attester(fake, privlevel=1).attest(binding())
    assert fake.quoted == []


def test_privlevel_problem_is_decided_by_the_provider_then_the_attribute() -> None:
    """One check for the attester and the factory's probe (test_attester_factory.py)."""
    every = {"privlevel", "privlevel_floor"}
    assert privlevel_problem(None, "arm_cca_guest", every) is None  # nothing configured
    assert privlevel_problem(1, "sev_guest", every) is None
    cca = privlevel_problem(1, "arm_cca_guest", every)
    assert cca is not None and "'arm_cca_guest' has no privilege levels" in cca
    old_snp = privlevel_problem(1, "sev_guest", set())  # a kernel without the attribute
    assert old_snp is not None and "no privlevel attribute" in old_snp


# Kernels >= 6.10 show every attribute of a provider without report_attr_visible callbacks
# (arm_cca_guest): the default fake CCA layout, and the same spelled out with the old knobs.
CCA_ALL_ATTRIBUTES = [{}, {"auxblob": b"", "privlevel_floor": 0, "svsm": True}]


@pytest.mark.parametrize("kwargs", CCA_ALL_ATTRIBUTES)
async def test_privlevel_on_cca_is_refused_although_the_attribute_is_there(
    make_tsm: MakeTsm, kwargs: dict[str, object]
) -> None:
    fake = make_tsm("arm_cca_guest", **kwargs)
    entry = fake.root / "look"
    fake.ops.mkdir(entry)
    try:
        assert (entry / "privlevel").exists() and (entry / "service_provider").exists()
    finally:
        fake.ops.rmdir(entry)
    with pytest.raises(AttestationUnavailable, match="'arm_cca_guest' has no privilege levels"):
        await attester(fake, privlevel=2).attest(binding())
    assert fake.quoted == []


@pytest.mark.parametrize("kwargs", CCA_ALL_ATTRIBUTES)
async def test_cca_with_every_attribute_visible_writes_no_privlevel_and_claims_no_svsm(
    make_tsm: MakeTsm, kwargs: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_tsm("arm_cca_guest", **kwargs)
    a = attester(fake)
    b = binding()
    with caplog.at_level(logging.INFO, logger="atls_proxy.attest.configfs"):
        ev = await a.attest(b)
    assert ev.media_type == PROVIDER_MEDIA_TYPES["arm_cca_guest"]
    assert a.last_report is not None and a.last_report.privlevel is None
    assert {"privlevel", "privlevel_floor", "auxblob", "manifestblob"} <= a.last_report.features
    assert fake.layouts and "privlevel" in fake.layouts[0]
    assert fake.quoted == [b.report_data()]
    assert "SVSM" not in caplog.text
    assert "arm_cca_guest" in caplog.text and "no privilege levels" in caplog.text


# -- generation races -------------------------------------------------------------------------------


async def test_racing_writer_is_detected_and_retried(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.race_count = 1
    a = attester(fake)
    b = binding()
    ev = await a.attest(b)
    assert embedded_report_data("tdx_guest", ev.data) == b.report_data()
    # The first report was generated over the racer's inblob and thrown away.
    assert fake.quoted == [b"\xee" * 64, b.report_data()]
    assert a.stats.generation_races == 1
    assert a.last_report is not None and a.last_report.attempts == 2
    assert fake.mkdirs == 2  # a fresh entry per attempt


async def test_writer_racing_every_time_exhausts_the_retries(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.race_count = 1000
    a = attester(fake, retries=2)
    with pytest.raises(AttestationUnavailable, match=r"after 3 attempt\(s\).*concurrent writer"):
        await a.attest(binding())
    assert fake.mkdirs == 3
    assert a.stats.generation_races == 3
    assert a.stats.failures == 1


class _PreWritingOps(FakeTsmOps):
    """A stray writer that sets privlevel and inblob on our entry right after its mkdir, before
    the attester's first generation read, on the first ``times`` entries."""

    def __init__(self, tsm: FakeTsm, times: int) -> None:
        super().__init__(tsm)
        self.times = times

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        if self.times > 0:
            self.times -= 1
            self.tsm.write(path / "privlevel", b"2\n")
            self.tsm.write(path / "inblob", b"\xee" * 64)


async def test_writer_before_the_first_generation_read_is_detected(make_tsm: MakeTsm) -> None:
    """A new entry has generation 0: a higher first reading is another writer (here at VMPL 2,
    which our unset privlevel would not overwrite), retried on a new entry and counted."""
    fake = make_tsm("sev_guest")
    a = ConfigfsTsmAttester(fake.root, ops=_PreWritingOps(fake, times=1))
    b = binding()
    ev = await a.attest(b)
    report = snp_parts(ev.data)[0] if ev.media_type == SNP_CERTS_MEDIA_TYPE else ev.data
    assert embedded_report_data("sev_guest", report) == b.report_data()
    assert struct.unpack_from("<I", report, 0x30)[0] == 0  # VMPL: the default, not the writer's
    assert fake.quoted == [b.report_data()]  # the pre-written entry was never quoted
    assert a.stats.generation_races == 1
    assert a.last_report is not None and a.last_report.attempts == 2
    assert a.last_report.privlevel is None
    assert fake.mkdirs == 2

    always = ConfigfsTsmAttester(fake.root, ops=_PreWritingOps(fake, times=1000), retries=1)
    with pytest.raises(
        AttestationUnavailable, match=r"concurrent writer.*generation 2, expected 0"
    ):
        await always.attest(binding())
    assert always.stats.generation_races == 2


async def test_no_retries_means_one_attempt(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.race_count = 1
    with pytest.raises(AttestationUnavailable, match="concurrent writer"):
        await attester(fake, retries=0).attest(binding())
    assert fake.mkdirs == 1


async def test_write_the_kernel_dropped_is_detected(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.drop_inblob_writes = True
    with pytest.raises(AttestationUnavailable, match="did not record our write"):
        await attester(fake).attest(binding())
    assert fake.quoted == []


# -- provider errors --------------------------------------------------------------------------------


async def test_eio_fails_at_once(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.outblob_errors = [errno.EIO]
    with pytest.raises(AttestationUnavailable, match=r"reading .*outblob: EIO .*quoting service"):
        await attester(fake).attest(binding())
    assert fake.mkdirs == 1


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EINTR, errno.EAGAIN])
async def test_transient_errors_are_retried(make_tsm: MakeTsm, code: int) -> None:
    fake = make_tsm("sev_guest")
    fake.outblob_errors = [code, code]
    a = attester(fake)
    b = binding()
    ev = await a.attest(b)
    assert snp_parts(ev.data)[0][0x50:0x90] == b.report_data()
    assert a.stats.transient_errors == 2
    assert a.last_report is not None and a.last_report.attempts == 3


async def test_busy_forever_gives_up(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.outblob_errors = [errno.EBUSY] * 100
    with pytest.raises(AttestationUnavailable, match=r"after 4 attempt\(s\).*EBUSY"):
        await attester(fake, retries=3).attest(binding())
    assert fake.mkdirs == 4


async def test_snp_vmpck_wiped(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest")
    fake.outblob_errors = [errno.ENOTTY]
    with pytest.raises(AttestationUnavailable, match="VMPCK"):
        await attester(fake).attest(binding())


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "not permitted"),
        (errno.ENXIO, "no TSM provider is registered"),
    ],
)
async def test_mkdir_errors(make_tsm: MakeTsm, code: int, hint: str) -> None:
    fake = make_tsm("tdx_guest")
    fake.mkdir_errno = code
    with pytest.raises(AttestationUnavailable, match=f"creating report entry .*{hint}"):
        await attester(fake).attest(binding())
    assert probe(fake.root, ops=fake.ops) is None


async def test_missing_tree(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest", create=False)
    with pytest.raises(AttestationUnavailable, match="not found: not a confidential VM"):
        await attester(fake).attest(binding())
    assert fake.mkdirs == 0


async def test_missing_tree_with_the_real_syscalls(tmp_path: Path) -> None:
    a = ConfigfsTsmAttester(tmp_path / "no" / "tsm" / "report")
    with pytest.raises(AttestationUnavailable, match="not found"):
        await a.attest(binding())
    assert probe(tmp_path / "no" / "tsm" / "report") is None


async def test_a_plain_directory_is_not_configfs(tmp_path: Path) -> None:
    # Real syscalls on an ordinary directory: mkdir works, the provider attribute is missing.
    root = tmp_path / "report"
    root.mkdir()
    with pytest.raises(AttestationUnavailable, match=r"reading .*provider: ENOENT"):
        await ConfigfsTsmAttester(root).attest(binding())
    assert list(root.iterdir()) == []  # the entry was removed again
    assert probe(root) is None
    assert list(root.iterdir()) == []


async def test_unknown_provider_quotes_nothing(make_tsm: MakeTsm) -> None:
    fake = make_tsm("foo_guest")
    with pytest.raises(
        AttestationUnavailable, match=r"unknown TSM provider 'foo_guest'.*tdx_guest"
    ):
        await attester(fake).attest(binding())
    assert fake.quoted == []
    assert fake.mkdirs == 1
    assert probe(fake.root, ops=fake.ops) == "foo_guest"


async def test_cleanup_failure_still_returns_the_evidence(
    make_tsm: MakeTsm, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_tsm("tdx_guest")
    fake.rmdir_errno = errno.EBUSY
    a = attester(fake)
    with caplog.at_level(logging.WARNING, logger="atls_proxy.attest.configfs"):
        ev = await a.attest(binding())
    assert ev.data
    assert a.stats.cleanup_failures == 1
    assert "left behind" in caplog.text
    (leaked,) = fake.live_entries()
    assert leaked.startswith(f"atls-proxy-{os.getpid()}-")
    fake.rmdir_errno = None
    fake.rmdir(fake.root / leaked)


# -- garbage reports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "outblob", "message"),
    [
        ("tdx_guest", b"", "empty report"),
        ("sev_guest", b"", "empty report"),
        ("tdx_guest", b"\x00" * (MAX_OUTBLOB_SIZE + 1), "larger than"),
        ("tdx_guest", b"garbage", "malformed report"),
        ("tdx_guest", b"\x03\x00\x02\x00\x81\x00\x00\x00" + bytes(700), "version 3 is not 4 or 5"),
        ("tdx_guest", b"\x04\x00\x02\x00\x00\x01\x00\x00" + bytes(700), "not TDX"),
        (
            "tdx_guest",
            b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(600),
            "ends before its REPORTDATA",
        ),
        ("sev_guest", bytes(1183), "1184 bytes"),
        ("sev_guest", bytes(1184), "version 0"),
        ("arm_cca_guest", b"\x59\xff\xff", "not CBOR"),
        ("arm_cca_guest", cbor2.dumps({1: 2}), "tag 399"),
        ("arm_cca_guest", cbor2.dumps(cbor2.CBORTag(399, {44234: b""})), "no realm token"),
    ],
)
async def test_malformed_reports_are_refused(
    make_tsm: MakeTsm, provider: str, outblob: bytes, message: str
) -> None:
    fake = make_tsm(provider, auxblob=b"" if provider == "sev_guest" else None)
    fake.outblob_override = outblob
    with pytest.raises(AttestationUnavailable, match=message):
        await attester(fake).attest(binding())


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_report_over_other_data_is_refused(make_tsm: MakeTsm, provider: str) -> None:
    fake = make_tsm(provider)
    fake.outblob_override = fake_report(provider, b"\x42" * 64)
    with pytest.raises(AttestationUnavailable, match="does not carry the requested report data"):
        await attester(fake).attest(binding())


def test_build_evidence_size_limit() -> None:
    # A well-formed report plus an auxblob too large for one CMW is refused, not truncated.
    report = fake_report("sev_guest", b"\x01" * 64)
    ok = TsmReport("sev_guest", report, b"\x02" * MAX_AUXBLOB_SIZE, None, 1, frozenset())
    assert build_evidence(ok, b"\x01" * 64).media_type == SNP_CERTS_MEDIA_TYPE
    big = TsmReport("tdx_guest", b"\x00" * 70_000, None, None, 1, frozenset())
    with pytest.raises(AttestationUnavailable, match="larger than"):
        build_evidence(big, b"\x01" * 64)


# -- time-outs, cancellation, serialisation ---------------------------------------------------------


async def test_hang_times_out_and_guards_the_next_quote(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.hang_seconds = 30
    a = attester(fake, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(AttestationUnavailable, match=r"no report within 0.2 s \(quoting\)"):
        await a.attest(binding())
    assert time.monotonic() - started < 2
    assert a.stats.timeouts == 1
    # The abandoned quote is still in the kernel: the next caller must not start a second one.
    with pytest.raises(AttestationUnavailable, match="abandoned quote that is still in the kernel"):
        await a.attest(binding())
    assert fake.mkdirs == 1
    fake.release()
    b = binding()
    ev = await a.attest(b)
    assert embedded_report_data("tdx_guest", ev.data) == b.report_data()
    assert fake.max_concurrent == 1
    assert fake.mkdirs == 2


async def test_cancelled_caller_stops_retries_but_not_the_guard(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.hang_seconds = 30
    fake.outblob_errors = [errno.EBUSY]  # transient: would normally be retried
    a = attester(fake)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(a.attest(binding()), 0.1)  # how the evidence engine gives up
    fake.release()
    b = binding()
    ev = await a.attest(b)  # waits for the abandoned quote, then quotes
    assert embedded_report_data("tdx_guest", ev.data) == b.report_data()
    # The abandoned attempt ended with EBUSY and was not retried after its caller left.
    assert fake.mkdirs == 2
    assert fake.quoted == [b.report_data()]


async def test_concurrent_attests_never_overlap(make_tsm: MakeTsm) -> None:
    fake = make_tsm("sev_guest")
    fake.generate_delay = 0.01
    a = attester(fake)
    bindings = [binding("sha256" if i % 2 else "sha384") for i in range(8)]
    evidence = await asyncio.gather(*(a.attest(b) for b in bindings))
    for b, ev in zip(bindings, evidence, strict=True):
        assert snp_parts(ev.data)[0][0x50:0x90] == b.report_data()
    assert fake.max_concurrent == 1
    assert fake.max_live_entries == 1
    assert a.stats.quotes == 8


async def test_overlap_detector_works(make_tsm: MakeTsm) -> None:
    # Control for the test above: two attesters (two guards) on one kernel do overlap.
    fake = make_tsm("tdx_guest")
    fake.generate_delay = 0.3
    await asyncio.gather(attester(fake).attest(binding()), attester(fake).attest(binding()))
    assert fake.max_concurrent == 2


async def test_timeout_covers_waiting_for_the_lock(make_tsm: MakeTsm) -> None:
    fake = make_tsm("tdx_guest")
    fake.generate_delay = 0.6  # the first quote ends at ~0.6 s, the second would at ~1.2 s
    a = attester(fake, timeout=1.0)
    results = await asyncio.gather(a.attest(binding()), a.attest(binding()), return_exceptions=True)
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], AttestationUnavailable)
    assert "no report within 1 s (quoting)" in str(results[1])


async def test_each_time_out_names_its_own_callers_step(make_tsm: MakeTsm) -> None:
    # A is in the kernel when B queues behind it: A's message says it was quoting (B's arrival
    # used to overwrite a shared phase, so A reported "waiting for the quote lock"), B's that it
    # waited for an abandoned quote.
    fake = make_tsm("tdx_guest")
    fake.hang_seconds = 30
    a = attester(fake, timeout=1.0)

    async def later() -> Evidence:
        await asyncio.sleep(0.3)
        return await a.attest(binding())

    first, second = await asyncio.gather(a.attest(binding()), later(), return_exceptions=True)
    fake.release()
    assert isinstance(first, AttestationUnavailable) and "(quoting)" in str(first), first
    assert isinstance(second, AttestationUnavailable), second
    assert "abandoned quote that is still in the kernel" in str(second), second


# -- probe, construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_probe(make_tsm: MakeTsm, provider: str) -> None:
    fake = make_tsm(provider)
    assert probe(fake.root, ops=fake.ops) == provider
    assert fake.quoted == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"privlevel": 4},
        {"privlevel": -1},
        {"privlevel": True},
        {"timeout": 0},
        {"timeout": 301},
        {"retries": -1},
        {"retries": 11},
        {"entry_prefix": ""},
        {"entry_prefix": "a/b"},
        {"entry_prefix": ".."},
        {"entry_prefix": "x" * 65},
    ],
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConfigfsTsmAttester(**kwargs)  # type: ignore[arg-type]


def test_os_ops_read_limit_and_write(tmp_path: Path) -> None:
    ops = OsTsmOps()
    f = tmp_path / "blob"
    with pytest.raises(FileNotFoundError):  # attributes exist already; never created
        ops.write(f, b"x")
    f.write_bytes(b"")
    ops.write(f, b"x" * 100_000)
    assert ops.read(f, 10) == b"x" * 11  # limit + 1: the caller can tell "too long"
    assert ops.read(f, 200_000) == b"x" * 100_000
    entry = tmp_path / "entry"
    ops.mkdir(entry)
    assert ops.isdir(entry) and ops.exists(entry)
    ops.rmdir(entry)
    assert not ops.exists(entry)


# -- the real hardware vectors as provider output -----------------------------------------------------


def _summary() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = json.loads(
        (VECTORS / "PARSED_SUMMARY.json").read_text()
    )["results"]
    return results


def _expected_report_data(name: str, provider: str) -> bytes:
    entry = _summary()[name]
    if provider == "tdx_guest":
        value = entry["body"]["report_data"]  # type: ignore[index]
    elif provider == "sev_guest":
        value = entry["fields"]["report_data"]  # type: ignore[index]
    else:
        value = entry["realm_claims"]["10"]  # type: ignore[index]
    return bytes.fromhex(str(value))


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("tdx/trustee/tdx_quote_4.dat", "tdx_guest"),
        ("tdx/trustee/tdx_quote_5.dat", "tdx_guest"),
        ("tdx/go-tdx-guest/quote_v5_sample.dat", "tdx_guest"),
        ("tdx/go-tdx-guest/ccel/cos-113-tdx-quote.dat", "tdx_guest"),
        ("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat", "tdx_guest"),
        ("snp/go-sev-guest/attestation.bin", "sev_guest"),
        ("snp/trustee/test-vlek-report.bin", "sev_guest"),
        ("cca/ccatoken/cca_token.cbor", "arm_cca_guest"),
        ("cca/trustee/cca-example-token.cbor", "arm_cca_guest"),
    ],
)
async def test_real_vectors_as_provider_output(make_tsm: MakeTsm, name: str, provider: str) -> None:
    raw = (VECTORS / name).read_bytes()
    expected = _expected_report_data(name, provider)  # from the independent parser
    fake = make_tsm(provider, auxblob=b"" if provider == "sev_guest" else None)
    fake.outblob_override = raw
    # A SHA-256 binding's report data is binder ‖ aik_hash: any 64 bytes can be made.
    ev = await attester(fake).attest(Binding("sha256", expected[:32], expected[32:]))
    assert ev.data == raw
    assert ev.media_type == PROVIDER_MEDIA_TYPES[provider]
    with pytest.raises(AttestationUnavailable, match="does not carry"):
        await attester(fake).attest(binding())


# -- hypothesis ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=0, max_value=256).filter(lambda n: n != 64))
def test_quote_wants_exactly_64_bytes(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeTsm(Path(tmp) / "report")
        with pytest.raises(ValueError, match="exactly 64"):
            asyncio.run(attester(fake).quote(b"\x00" * size))
        assert fake.mkdirs == 0


@settings(max_examples=80, deadline=None)
@given(provider=st.sampled_from(PROVIDERS), inblob=st.binary(min_size=0, max_size=100))
def test_fake_kernel_inblob_rules(provider: str, inblob: bytes) -> None:
    """The fake follows the kernel: EFBIG over 64 bytes; the providers' own length rules."""
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeTsm(Path(tmp) / "report", provider)
        entry = fake.root / "e"
        fake.ops.mkdir(entry)
        try:
            if len(inblob) > 64:
                with pytest.raises(OSError) as info:
                    fake.ops.write(entry / "inblob", inblob)
                assert info.value.errno == errno.EFBIG
                return
            fake.ops.write(entry / "inblob", inblob)
            assert (entry / "generation").read_bytes() == b"1\n"
            ok = len(inblob) == 64 or (provider == "arm_cca_guest" and len(inblob) >= 32)
            if not ok:
                with pytest.raises(OSError) as info:
                    fake.ops.read(entry / "outblob", MAX_OUTBLOB_SIZE)
                assert info.value.errno == errno.EINVAL
                return
            out = fake.ops.read(entry / "outblob", MAX_OUTBLOB_SIZE)
            assert embedded_report_data(provider, out) == inblob.ljust(64, b"\0")
            assert (entry / "outblob").read_bytes() == out
        finally:
            fake.ops.rmdir(entry)
        assert fake.live_entries() == []


@settings(max_examples=60, deadline=None)
@given(hash_name=st.sampled_from(["sha256", "sha384"]), seed=st.binary(min_size=96, max_size=96))
def test_any_binding_round_trips(hash_name: str, seed: bytes) -> None:
    n = 32 if hash_name == "sha256" else 48
    b = Binding(hash_name, seed[:n], seed[n : 2 * n])
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeTsm(Path(tmp) / "report", "tdx_guest")
        ev = asyncio.run(attester(fake).attest(b))
        assert fake.quoted == [b.report_data()]
        assert embedded_report_data("tdx_guest", ev.data) == b.report_data()
        assert fake.live_entries() == []


def _mutations(provider: str) -> st.SearchStrategy[bytes]:
    """Garbage: random bytes, or a valid report truncated / with random bytes overwritten."""
    report_data = b"\x5a" * 64
    valid = fake_report(provider, report_data)

    def mutate(cut: int, patches: list[tuple[int, int]]) -> bytes:
        out = bytearray(valid[: max(0, len(valid) - cut)])
        for pos, value in patches:
            if out:
                out[pos % len(out)] = value
        return bytes(out)

    return st.one_of(
        st.binary(max_size=2048),
        st.builds(
            mutate,
            st.integers(min_value=0, max_value=len(valid)),
            st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
        ),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), provider=st.sampled_from(PROVIDERS))
def test_garbage_reports_never_escape(data: st.DataObject, provider: str) -> None:
    garbage = data.draw(_mutations(provider))
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeTsm(
            Path(tmp) / "report", provider, auxblob=b"" if provider == "sev_guest" else None
        )
        fake.outblob_override = garbage
        try:
            ev = asyncio.run(attester(fake).quote(b"\x5a" * 64))
        except AttestationUnavailable:
            pass
        else:
            # Accepted only when it still carries our report data, and then byte for byte.
            assert ev.data == garbage
            assert embedded_report_data(provider, garbage) == b"\x5a" * 64
        assert fake.live_entries() == []
