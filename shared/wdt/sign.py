"""Taobao TOP md5 signature, as the Qimen gateway checks it."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping


def top_md5_sign(params: Mapping[str, object], secret: str) -> str:
    """Sort by name (without `sign`), drop empty values, concatenate name+value, wrap in the
    secret on both sides, MD5, upper-case hex."""
    body = "".join(
        f"{k}{v}" for k, v in sorted(params.items()) if k != "sign" and v is not None and str(v) != ""
    )
    return hashlib.md5(f"{secret}{body}{secret}".encode()).hexdigest().upper()
