"""RATS CMW codec (RFC 9999): records, collections, tags, JSON, demux and the strictness rules."""

from __future__ import annotations

import json

import cbor2
import pytest

from atls_proxy.errors import DecodeError
from atls_proxy.expat import cmw as c


def test_record_golden() -> None:
    # RFC 9999 example: ["application/vnd.example.rats-conceptual-msg", h'2347da55', 4]
    rec = c.CMWRecord("application/vnd.example.rats-conceptual-msg", bytes.fromhex("2347da55"), 4)
    data = c.encode_cmw(rec)
    assert data == bytes.fromhex(
        "83782b"
    ) + b"application/vnd.example.rats-conceptual-msg" + bytes.fromhex("442347da5504")
    assert c.decode_cmw(data) == rec


def test_coap_record_and_tag() -> None:
    assert c.decode_cmw(cbor2.dumps([64999, b"\x23\x47\xda\x55"])) == c.CMWRecord(
        64999, b"\x23\x47\xda\x55"
    )
    # RFC 9999: CF 64999 -> tag 1668612070
    assert c.tag_for_content_format(64999) == 1668612070
    assert c.content_format_for_tag(1668612070) == 64999
    tagged = cbor2.dumps(cbor2.CBORTag(1668612070, b"\x23\x47\xda\x55"))
    assert tagged[0] == 0xDA
    assert c.decode_cmw(tagged) == c.CMWRecord(64999, b"\x23\x47\xda\x55")


def test_json_record() -> None:
    # RFC 9999 example: ["application/vnd.example.rats-conceptual-msg","I0faVQ"]
    data = b'["application/vnd.example.rats-conceptual-msg","I0faVQ"]'
    rec = c.decode_cmw(data)
    assert rec == c.CMWRecord(
        "application/vnd.example.rats-conceptual-msg", bytes.fromhex("2347da55")
    )
    assert c.json_record(rec) == data
    with pytest.raises(DecodeError):
        c.decode_cmw(b'["a/b","I0faVQ=="]')  # padding is not allowed


@pytest.mark.parametrize(
    "value",
    [
        "I0f!aVQ",  # a character outside the alphabet (the decoder would drop it)
        "I0fa\\nVQ",  # a line break inside
        "Q+/D",  # the standard alphabet's + and /
        "I0faVR",  # non-zero trailing bits: "I0faVQ" spelt another way
        "I0faV",  # a length no encoding has
    ],
)
def test_a_json_value_has_one_spelling(value: str) -> None:
    # RFC 4648 §5 without padding, canonical (§3.5): one CMW, one reading, also outside the
    # connection (logs, audits) where no signature pins the bytes.
    with pytest.raises(DecodeError):
        c.decode_cmw(json.dumps(["a/b", value]).encode())
    assert c.decode_cmw(b'["a/b","-_8"]') == c.CMWRecord("a/b", b"\xfb\xff")


@pytest.mark.parametrize(
    "doc",
    [
        b'{"evidence":["a/b","AQ"],"evidence":["a/b","Ag"]}',
        b'{"x":["a/b","AQ"],"y":{"z":["a/b","AQ"],"z":["a/b","Ag"]}}',  # nested
    ],
)
def test_a_json_collection_label_appears_once(doc: bytes) -> None:
    # json.loads would keep the last member and other parsers the first: two readings.
    with pytest.raises(DecodeError, match="repeats a label"):
        c.decode_cmw(doc)


def test_collection_roundtrip_and_flatten() -> None:
    col = c.CMWCollection(
        {
            "cpu": c.CMWRecord("application/a", b"1", 4),
            "gpu": c.CMWCollection({0: c.CMWRecord(60, b"2")}),
        },
        ctype="tag:example.com,2026:composite",
    )
    data = c.encode_cmw(col)
    assert c.decode_cmw(data) == col
    assert [p for p, _ in c.records(col)] == ["cpu", "gpu/0"]


@pytest.mark.parametrize(
    "data,why",
    [
        (b"", "empty"),
        (b"\x81\x01", "first byte"),
        (cbor2.dumps(["a/b"]), "first byte"),
        (cbor2.dumps(["a/b", b"x", 1, 2]), "first byte"),
        (bytes.fromhex("83") + cbor2.dumps("a/b") + bytes.fromhex("41780102"), "trailing"),
        (cbor2.dumps(["a/b", "text", 4]), "byte string"),
        (cbor2.dumps(["a/b", b"x", 0]), "non-zero"),
        (cbor2.dumps(["a/b", b"x", True]), "unsigned"),
        (cbor2.dumps([70000, b"x"]), "content-format"),
        (cbor2.dumps(["", b"x"]), "media type"),
        (b"\x9f\x63a/b\x41x\xff", "indefinite"),
        (b"\xa0", "indefinite-length or empty"),
        (cbor2.dumps(["a/b", b"x"]) + b"\x00", "trailing"),
        (bytes.fromhex("82 19 003c 41 78"), "non-shortest"),  # 60 in a 2-byte argument
        (bytes.fromhex("a2 61 61 82 01 41 00 61 61 82 01 41 01"), "duplicate"),
        (cbor2.dumps({"__cmwc_t": "x"}), "no members"),
        (cbor2.dumps(cbor2.CBORTag(5, b"x")), "not a CMW"),
    ],
)
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        c.decode_cmw(data)


def test_depth_and_size_caps() -> None:
    inner: object = ["a/b", b"x"]
    for _ in range(c.MAX_DEPTH + 1):
        inner = {"n": inner}
    with pytest.raises(DecodeError, match="deeper"):
        c.decode_cmw(cbor2.dumps(inner))
    with pytest.raises(DecodeError, match="exceeds"):
        c.decode_cmw(b"\x82" + b"\x00" * c.MAX_CMW_SIZE)
    with pytest.raises(ValueError):
        c.encode_cmw(c.CMWRecord("a/b", b"\x00" * c.MAX_CMW_SIZE))
    many = {str(i): ["a/b", b"x"] for i in range(c.MAX_MEMBERS + 2)}
    with pytest.raises(DecodeError, match="members"):
        c.decode_cmw(cbor2.dumps(many))


@pytest.mark.parametrize("json_form", [False, True])
@pytest.mark.parametrize("ctype", [None, "tag:example.com,2026:composite"])
@pytest.mark.parametrize("count", [c.MAX_MEMBERS, c.MAX_MEMBERS + 1])
def test_member_cap_does_not_count_the_collection_type(
    count: int, ctype: str | None, json_form: bool
) -> None:
    members: dict[int | str, c.CMW] = {f"m{i:02d}": c.CMWRecord("a/b", b"x") for i in range(count)}
    if json_form:
        # "eA" is b"x" in base64url.
        obj: dict[int | str, object] = {k: ["a/b", "eA"] for k in members}
        if ctype is not None:
            obj = {c.COLLECTION_TYPE_KEY: ctype, **obj}
        data = json.dumps(obj).encode()
    else:
        cbor_obj: dict[int | str, object] = {k: ["a/b", b"x"] for k in members}
        if ctype is not None:
            cbor_obj = {c.COLLECTION_TYPE_KEY: ctype, **cbor_obj}
        data = cbor2.dumps(cbor_obj)
    if count <= c.MAX_MEMBERS:
        assert c.decode_cmw(data) == c.CMWCollection(members, ctype)
    else:
        with pytest.raises(DecodeError, match=f"more than {c.MAX_MEMBERS} members"):
            c.decode_cmw(data)


def test_encoder_refuses_what_the_decoder_refuses() -> None:
    members: dict[int | str, c.CMW] = {
        f"m{i:02d}": c.CMWRecord("a/b", b"x") for i in range(c.MAX_MEMBERS)
    }
    ok = c.CMWCollection(members, "tag:example.com,2026:composite")
    assert c.decode_cmw(c.encode_cmw(ok)) == ok
    too_many = c.CMWCollection({**members, "one-more": c.CMWRecord("a/b", b"x")})
    with pytest.raises(ValueError, match="members"):
        c.encode_cmw(too_many)
    nested = c.CMWCollection({"inner": too_many})
    with pytest.raises(ValueError, match="members"):
        c.encode_cmw(nested)


def _cached_shape(evidence: bytes, binding: bytes) -> bytes:
    return c.encode_cmw(
        c.CMWCollection(
            {
                "evidence": c.CMWRecord("application/a", evidence, 4),
                "epoch": c.CMWRecord("application/e", b"epoch"),
                "binding": c.CMWRecord("application/b", binding),
            }
        )
    )


def _full_decode(data: bytes) -> c.CMW:
    """decode_cmw with no remembered prefix: the reference the prefix path must equal."""
    saved, c._last_prefix = c._last_prefix, None
    try:
        return c.decode_cmw(data)
    finally:
        c._last_prefix = saved


def test_prefix_reuse_equals_a_full_decode() -> None:
    """The cached tier's CMWs differ in their last member only; decode_cmw decodes just that part
    once it has seen the rest, and the result is exactly what a full decode gives."""
    first = _cached_shape(b"quote", b"sig-1")
    assert c.decode_cmw(first) == _full_decode(first)
    assert c._last_prefix is not None and first.startswith(c._last_prefix.data)
    for sig in (b"sig-2", b"a longer signature " * 10, b"\x00"):
        data = _cached_shape(b"quote", sig)
        assert data.startswith(c._last_prefix.data)
        assert c.decode_cmw(data) == _full_decode(data)
    # Another epoch (different evidence): a full decode, and its prefix is remembered instead.
    other = _cached_shape(b"quote-2", b"sig-1")
    assert c.decode_cmw(other) == _full_decode(other)
    assert other.startswith(c._last_prefix.data)


@pytest.mark.parametrize(
    "tail,why",
    [
        (cbor2.dumps(["application/b", b"sig"]) + b"\x00", "trailing bytes"),  # trailing item
        (bytes.fromhex("9f") + cbor2.dumps("application/b")[0:] + b"\x43sig\xff", "indefinite"),
        (bytes.fromhex("82") + bytes.fromhex("7800") + b"\x43sig", "non-shortest"),  # long length
        (bytes.fromhex("8201"), "longer than the input"),  # truncated
        (cbor2.dumps({"x": ["a/b", b"1"]}), ""),  # a collection is a valid member value
        (cbor2.dumps(7), "not a CMW"),
    ],
)
def test_prefix_reuse_checks_the_new_bytes_like_a_full_decode(tail: bytes, why: str) -> None:
    """Whatever follows a remembered prefix is held to the same rules as a full decode."""
    c.decode_cmw(_cached_shape(b"quote", b"sig"))
    prefix = c._last_prefix
    assert prefix is not None
    data = prefix.data + tail
    try:
        expected: c.CMW | str = _full_decode(data)
    except DecodeError as exc:
        expected = str(exc)
    try:
        got: c.CMW | str = c.decode_cmw(data)
    except DecodeError as exc:
        got = str(exc)
    assert isinstance(got, str) == isinstance(expected, str), (got, expected)
    if isinstance(got, str):
        assert why in got
    else:
        assert got == expected


def _shared_graph(levels: int) -> bytes:
    """A CBOR CMW record whose value is a value-sharing graph (tags 28/29, RFC 8949 §9.2 /
    IANA): shareable i = [shared(i-1), shared(i-1)]. ~8 bytes a level; cbor2 decodes it in linear
    time, but re-encoding the result writes 2^levels leaves."""
    body = b"\xd8\x1c\x41A"  # shareable 0: h'41'
    for i in range(1, levels + 1):
        ref = b"\xd8\x1d" + cbor2.dumps(i - 1)
        body += b"\xd8\x1c\x82" + ref + ref
    return b"\x82" + bytes([0x98, levels + 1]) + body + b"\x40"  # [[shareables…], h""]


@pytest.mark.parametrize(
    "data,tag",
    [
        (_shared_graph(40), 28),  # would take years to re-encode
        (b"\x82\xd9\x01\x00\x82\x63a/b\xd8\x19\x00\x41x", 256),  # string references
        (b"\x82\x63a/b\xd8\x18\x41x", 24),  # any other tag, e.g. embedded CBOR
    ],
)
def test_tags_other_than_cmw_tags_are_refused_before_decoding(data: bytes, tag: int) -> None:
    # A malicious server signs its own authenticator: these bytes reach the client's decoder.
    with pytest.raises(DecodeError, match=f"unexpected CBOR tag {tag}"):
        c.decode_cmw(data)


def test_a_cmw_tag_is_still_accepted() -> None:
    rec = c.CMWRecord(30001, b"x")  # CoAP content-format: the tag form TN(cf)
    tagged = cbor2.dumps(cbor2.CBORTag(c.TAG_MIN + (30001 // 255) * 256 + 30001 % 255, b"x"))
    assert c.decode_cmw(cbor2.dumps({"a": cbor2.loads(tagged), "b": ["x/y", b"v"]})) == (
        c.CMWCollection({"a": rec, "b": c.CMWRecord("x/y", b"v")})
    )


def test_a_json_media_type_with_a_lone_surrogate_is_a_decode_error() -> None:
    # "\ud800" is valid JSON and decodes to a str no UTF-8 can carry (it crashed the appraisal
    # cache's key with UnicodeEncodeError).
    with pytest.raises(DecodeError, match="Unicode"):
        c.decode_cmw(b'["\\ud800x/y", "AAAA"]')
