"""WeChat's message encryption for the callback URL ("compatible" and "safe" modes).

As documented for the account's server settings (and implemented alike by WeChat's own
WXBizMsgCrypt samples, wechatpy's `crypto` and silenceper/wechat's `util/crypto.go`):
- key = base64(EncodingAESKey + "="): the 43-character EncodingAESKey gives 32 bytes;
- AES-256-CBC with IV = key[:16], PKCS#7 padding to a 32-byte block (not AES's 16);
- plaintext = 16 random bytes + 4-byte big-endian length + message + app id;
- msg_signature = sha1 of the sorted [token, timestamp, nonce, Encrypt] joined.

The cipher itself is `cryptography`'s; nothing here implements AES."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32  # WeChat pads to 32 bytes, not to AES's block of 16
_KEY = re.compile(r"[A-Za-z0-9+/]{43}")
MAX_ENCRYPT_CHARS = 256 * 1024  # far above any push; bounds the work on junk


class CryptoError(ValueError):
    """The message cannot be verified or decrypted; the text says why (never the key)."""


def msg_signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


class WechatCrypto:
    def __init__(self, *, token: str, encoding_aes_key: str, app_id: str):
        if not _KEY.fullmatch(encoding_aes_key or ""):
            raise CryptoError("WECHAT_ENCODING_AES_KEY must be the console's 43 letters and digits")
        self.key = base64.b64decode(encoding_aes_key + "=")
        if len(self.key) != 32:  # pragma: no cover - 43 base64 characters always give 32 bytes
            raise CryptoError("WECHAT_ENCODING_AES_KEY does not decode to 32 bytes")
        self.token, self.app_id = token, app_id

    def __repr__(self):  # the key is a secret: never in logs or tracebacks
        return f"WechatCrypto(app_id={self.app_id!r})"

    def check_signature(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = msg_signature(self.token, timestamp, nonce, encrypt)
        if not (signature.isascii() and hmac.compare_digest(expected.encode(), signature.encode())):
            raise CryptoError("bad msg_signature")

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside `encrypt` (base64), after checking its padding, length and app id."""
        if not encrypt or len(encrypt) > MAX_ENCRYPT_CHARS:
            raise CryptoError(f"Encrypt must be 1-{MAX_ENCRYPT_CHARS} characters")
        try:
            data = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("Encrypt is not base64") from None
        if not data or len(data) % 16:
            raise CryptoError("Encrypt is not a whole number of AES blocks")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise CryptoError("bad padding: wrong WECHAT_ENCODING_AES_KEY, or not from WeChat")
        plain = plain[:-pad]
        if len(plain) < 20:
            raise CryptoError("decrypted message too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, app_id = plain[20:20 + length], plain[20 + length:]
        if len(message) != length:
            raise CryptoError("decrypted message length does not match its header")
        if not hmac.compare_digest(app_id, self.app_id.encode()):
            raise CryptoError("the message is for another app id (WECHAT_APP_ID)")
        return message

    def encrypt(self, message: bytes, *, random16: bytes | None = None) -> str:
        """What WeChat does (the fake and the tests use it; replies would too)."""
        random16 = os.urandom(16) if random16 is None else random16
        plain = random16 + struct.pack(">I", len(message)) + message + self.app_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        plain += bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()
