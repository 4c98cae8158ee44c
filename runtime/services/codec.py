"""Codecs and crypto for Lua (``moonlet.codec``, ``moonlet.crypto``): Python's own ``base64``, ``binascii``,
``hashlib``, ``hmac`` and ``secrets`` behind five calls, so no app hand-rolls a hash or a base64 and none of
it is Lua code written here.

They run on the loop thread as calls (they never suspend): each is one C function over the bytes, about a
microsecond for the short strings a token, a signature or a header is; a hash of a large body takes what
the C library takes (~2 ms a MiB for SHA-256 here), counted against the task's CPU budget as any long C
call is (runtime/services/tasks.py). The Lua side checks the arguments; a request that passes it with
another codec or algorithm name is refused here all the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import ClassVar
from urllib.parse import quote_from_bytes, unquote_to_bytes

from runtime.kernel.core import BadRequestError, Kernel
from runtime.kernel.ops import Op
from runtime.services import Quiet

MAX_RANDOM = 1 << 20  # bytes one RANDOM may ask for

ALGORITHMS = {b"sha1": hashlib.sha1, b"sha256": hashlib.sha256, b"sha512": hashlib.sha512}

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_URI_SAFE = b"-._~"  # RFC 3986's unreserved bytes besides letters and digits


def _b64url_decode(text: bytes) -> bytes:
    if b"=" in text.rstrip(b"="):  # (padding only at the end)
        raise binascii.Error("padding inside")
    text = text.rstrip(b"=")
    return base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _uri_decode(text: bytes) -> bytes:
    if _BAD_PERCENT.search(text):  # (urllib leaves such a % as it is: a codec says the input is bad)
        raise ValueError("a % not followed by two hex digits")
    return unquote_to_bytes(text)


def _uri_encode(data: bytes) -> bytes:
    return quote_from_bytes(data, safe=_URI_SAFE).encode()


# codec -> (encode, decode, the error a bad input gets)
CODECS: dict[bytes, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], bytes]] = {
    b"base64": (base64.b64encode, lambda t: base64.b64decode(t, validate=True), b"invalid base64"),
    b"base64url": (lambda d: base64.urlsafe_b64encode(d).rstrip(b"="), _b64url_decode, b"invalid base64"),
    b"hex": (binascii.hexlify, binascii.unhexlify, b"invalid hex"),
    b"uri": (_uri_encode, _uri_decode, b"invalid percent-encoding"),
}


class CodecService(Quiet):
    """ENCODE, DECODE, DIGEST, RANDOM, SECRET_EQUAL and MASK: stateless calls."""

    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.ENCODE, Op.DECODE, Op.DIGEST, Op.RANDOM, Op.SECRET_EQUAL, Op.MASK}
    )

    def __init__(self, kernel: Kernel) -> None:
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _encode(self, codec: object, data: object, _c: object) -> bytes:
        encode, _, _ = self._codec(codec)
        return encode(_bytes(data, 2, "encode"))

    def _decode(self, codec: object, text: object, _c: object) -> object:
        _, decode, error = self._codec(codec)
        try:
            return decode(_bytes(text, 2, "decode"))
        except (binascii.Error, ValueError):
            return (None, error)

    def _digest(self, algorithm: object, data: object, key: object) -> bytes:
        make = ALGORITHMS.get(algorithm) if isinstance(algorithm, bytes) else None
        if make is None:
            raise BadRequestError(f"digest: unknown algorithm {algorithm!r} (sha1, sha256, sha512)")
        if key is None:
            return make(_bytes(data, 2, "digest")).digest()
        return hmac.new(_bytes(key, 3, "hmac"), _bytes(data, 2, "hmac"), make).digest()

    def _random(self, n: object, _b: object, _c: object) -> bytes:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RANDOM:
            raise BadRequestError(f"bad argument #1 to 'random' (integer from 0 to {MAX_RANDOM} expected)")
        return secrets.token_bytes(n)

    def _mask(self, data: object, key: object, _c: object) -> bytes:
        """One big-integer XOR, not a loop over bytes: a 1 MiB frame in about a millisecond."""
        payload, mask = _bytes(data, 1, "mask"), _bytes(key, 2, "mask")
        if len(mask) != 4:
            raise BadRequestError("bad argument #2 to 'mask' (4 bytes expected)")
        n = len(payload)
        repeated = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")

    def _secret_equal(self, a: object, b: object, _c: object) -> bool:
        return hmac.compare_digest(_bytes(a, 1, "equal"), _bytes(b, 2, "equal"))

    @staticmethod
    def _codec(codec: object) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], bytes]:
        found = CODECS.get(codec) if isinstance(codec, bytes) else None
        if found is None:
            raise BadRequestError(f"unknown codec {codec!r} ({', '.join(c.decode() for c in CODECS)})")
        return found


def _bytes(value: object, i: int, fn: str) -> bytes:
    if not isinstance(value, bytes):
        raise BadRequestError(f"bad argument #{i} to '{fn}' (string expected)")
    return value
