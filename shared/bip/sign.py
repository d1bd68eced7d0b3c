"""BIP self-built-app token signature (selfAppAuth)."""
from __future__ import annotations

import base64
import hashlib
import hmac


def self_app_signature(app_key: str, timestamp: str, app_secret: str) -> str:
    """Base64(HmacSHA256(key=appSecret, msg="appKey"+appKey+"timestamp"+timestamp)).

    Returned raw: the HTTP library URL-encodes query parameters once, which is exactly the one
    encoding the gateway expects. Encoding it here as well would double-encode it.
    """
    message = f"appKey{app_key}timestamp{timestamp}".encode()
    digest = hmac.new(app_secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")
