#!/usr/bin/env python3
"""Independent test vectors for the RMCP+ crypto in src/ipmi/crypto.rs.

Computed straight from the IPMI 2.0 formulas with Python's hmac/hashlib and the `cryptography`
package (for AES-CBC-128), so the Rust unit tests do not check the code against itself.
Run: python3 crates/bmc-power/tests/peers/ipmi_vectors.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SIDM = struct.pack("<I", 0x11223344)  # remote console session id
SIDC = struct.pack("<I", 0x55667788)  # BMC session id
RM = bytes(range(16))
RC = bytes(0x10 + i for i in range(16))
GUID = bytes(0xA0 + i for i in range(16))
ROLE = bytes([0x14])  # administrator, name-only lookup
USER = b"admin"
KUID = b"password"
IV = bytes(0xF0 + i for i in range(16))
PLAINTEXT = bytes([0x20, 0x18, 0xC8, 0x81, 0x04, 0x3B, 0x04, 0x3C])


def h(digest, key, data):
    return hmac.new(key, data, digest).digest()


def vectors(digest, icv_len):
    ulen = bytes([len(USER)])
    rakp2 = h(digest, KUID, SIDM + SIDC + RM + RC + GUID + ROLE + ulen + USER)
    rakp3 = h(digest, KUID, RC + SIDM + ROLE + ulen + USER)
    sik = h(digest, KUID, RM + RC + ROLE + ulen + USER)
    rakp4 = h(digest, sik, RM + SIDC + GUID)[:icv_len]
    k1 = h(digest, sik, b"\x01" * 20)
    k2 = h(digest, sik, b"\x02" * 20)
    integrity = h(digest, k1, bytes(range(32)))[:icv_len]
    pad = (16 - (len(PLAINTEXT) + 1) % 16) % 16
    padded = PLAINTEXT + bytes(range(1, pad + 1)) + bytes([pad])
    enc = Cipher(algorithms.AES(k2[:16]), modes.CBC(IV)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    return dict(RAKP2=rakp2, RAKP3=rakp3, SIK=sik, RAKP4=rakp4, K1=k1, K2=k2,
                INTEGRITY=integrity, CIPHER=ciphertext)


def md5_15():
    password = b"password".ljust(16, b"\0")
    return hashlib.md5(password + struct.pack("<I", 0x01020304) + PLAINTEXT
                       + struct.pack("<I", 0x10) + password).digest()


if __name__ == "__main__":
    for suite, digest, icv in ((3, hashlib.sha1, 12), (17, hashlib.sha256, 16)):
        for name, value in vectors(digest, icv).items():
            print(f"{name}_{suite} {value.hex()}")
    print(f"MD5_15 {md5_15().hex()}")
