"""Merkle trees over Expat binders, for the batched freshness tier (DESIGN.md §4) — sans-IO.

The tree is RFC 9162 §2.1.1's (Certificate Transparency v2) with the suite's hash H and its domain
separation, so a leaf can never be confused with an inner node:

    leaf(b)      = H(0x00 ‖ b)                      for each binder b, in arrival order
    node(l, r)   = H(0x01 ‖ l ‖ r)
    MTH(D[0:n])  = leaf(D[0]) if n == 1, else node(MTH(D[0:k]), MTH(D[k:n]))
                   with k the largest power of two smaller than n

The attester quotes ``MTH`` in place of one connection's binder; each connection receives the
quote plus its inclusion proof ``(index, size, path)`` (RFC 9162 §2.1.3.1), and the verifier
recomputes the root from its *own* binder (RFC 9162 §2.1.3.2), so every relying party still sees
its own binder under the hardware signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cbor2

from atls_proxy.errors import DecodeError
from atls_proxy.expat.binding import new_hash

# One quote covers at most this many connections: 2^16 leaves gives proofs of at most 16 hashes,
# and at ~25 quotes/s covers a million connections per second — far above any proxy's rate.
MAX_BATCH = 1 << 16
MAX_PROOF_HASHES = 16
MERKLE_PROOF_MEDIA_TYPE = "application/vnd.atls-proxy.merkle-proof+cbor"


def _h(hash_name: str, *parts: bytes) -> bytes:
    h = new_hash(hash_name)
    for p in parts:
        h.update(p)
    return h.digest()


def leaf_hash(hash_name: str, binder: bytes) -> bytes:
    return _h(hash_name, b"\x00", binder)


def _node(hash_name: str, left: bytes, right: bytes) -> bytes:
    return _h(hash_name, b"\x01", left, right)


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    index: int
    size: int
    path: tuple[bytes, ...]

    def encode(self) -> bytes:
        out: bytes = cbor2.dumps([self.index, self.size, list(self.path)])
        return out

    @classmethod
    def decode(cls, data: bytes) -> InclusionProof:
        if len(data) > 16 + MAX_PROOF_HASHES * 66:
            raise DecodeError("Merkle proof too large")
        try:
            obj = cbor2.loads(data)
        except Exception as exc:
            raise DecodeError(f"Merkle proof does not parse: {exc}") from None
        if (
            not isinstance(obj, list)
            or len(obj) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in obj[:2])
            or not isinstance(obj[2], list)
            or not all(isinstance(x, bytes) for x in obj[2])
        ):
            raise DecodeError("Merkle proof is [index, size, [hashes]]")
        index, size, path = obj
        if not 0 <= index < size <= MAX_BATCH or len(path) > MAX_PROOF_HASHES:
            raise DecodeError("Merkle proof index/size out of range")
        if cbor2.dumps(obj) != data:
            raise DecodeError("Merkle proof is not in preferred serialization")
        return cls(index, size, tuple(path))


def build(hash_name: str, binders: Sequence[bytes]) -> tuple[bytes, list[InclusionProof]]:
    """The root over ``binders`` and one inclusion proof per binder, in order.

    Every subtree hash MTH(D[lo:hi]) is computed once (the RFC's split makes O(n) distinct
    subtrees), and each PATH(m, D[n]) (RFC 9162 §2.1.3.1) is read from them top-down: O(n log n)
    hashing for the whole batch, instead of recomputing sibling subtrees for every proof.
    """
    if not 1 <= len(binders) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1..{MAX_BATCH} binders")
    leaves = [leaf_hash(hash_name, b) for b in binders]
    n = len(leaves)
    memo: dict[tuple[int, int], bytes] = {}

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        got = memo.get((lo, hi))
        if got is None:
            k = _split(hi - lo)
            got = memo[(lo, hi)] = _node(hash_name, mth(lo, lo + k), mth(lo + k, hi))
        return got

    def path(m: int) -> tuple[bytes, ...]:
        top_down = []
        lo, hi = 0, n
        while hi - lo > 1:
            k = _split(hi - lo)
            if m < lo + k:
                top_down.append(mth(lo + k, hi))
                hi = lo + k
            else:
                top_down.append(mth(lo, lo + k))
                lo += k
        return tuple(reversed(top_down))  # the RFC lists the deepest sibling first

    root = mth(0, n)
    return root, [InclusionProof(i, n, path(i)) for i in range(n)]


def root_from_proof(hash_name: str, binder: bytes, proof: InclusionProof) -> bytes:
    """RFC 9162 §2.1.3.2: recompute the root from a binder and its proof. Raises DecodeError
    when the path has the wrong length for (index, size)."""
    size = len(hashlib.new(hash_name).digest())
    if any(len(p) != size for p in proof.path):
        raise DecodeError("Merkle proof hash of the wrong length")
    fn, sn = proof.index, proof.size - 1
    r = leaf_hash(hash_name, binder)
    for p in proof.path:
        if sn == 0:
            raise DecodeError("Merkle proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _node(hash_name, p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(hash_name, r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise DecodeError("Merkle proof is shorter than the tree is deep")
    return r
