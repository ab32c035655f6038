//! RMCP+ cryptography (IPMI 2.0 §13.28–13.32): RAKP key-exchange codes, session keys (SIK, K1,
//! K2), per-packet integrity and AES-CBC-128 confidentiality with the IPMI pad format, plus the
//! IPMI 1.5 per-message AuthCodes (MD5, straight password).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The cipher suites this crate negotiates. Both use AES-CBC-128 for confidentiality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
    Suite3,
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Suite17,
}

/// Algorithm numbers as carried in Open Session payloads (IPMI 2.0 tables 13-17..13-19).
pub const AUTH_RAKP_HMAC_SHA1: u8 = 0x01;
pub const AUTH_RAKP_HMAC_SHA256: u8 = 0x03;
pub const INTEGRITY_HMAC_SHA1_96: u8 = 0x01;
pub const INTEGRITY_HMAC_SHA256_128: u8 = 0x04;
pub const CONFIDENTIALITY_AES_CBC_128: u8 = 0x01;

impl CipherSuite {
    pub fn id(self) -> u8 {
        match self {
            CipherSuite::Suite3 => 3,
            CipherSuite::Suite17 => 17,
        }
    }

    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            3 => Some(CipherSuite::Suite3),
            17 => Some(CipherSuite::Suite17),
            _ => None,
        }
    }

    /// (authentication, integrity, confidentiality) algorithm numbers.
    pub fn algorithms(self) -> (u8, u8, u8) {
        match self {
            CipherSuite::Suite3 => (
                AUTH_RAKP_HMAC_SHA1,
                INTEGRITY_HMAC_SHA1_96,
                CONFIDENTIALITY_AES_CBC_128,
            ),
            CipherSuite::Suite17 => (
                AUTH_RAKP_HMAC_SHA256,
                INTEGRITY_HMAC_SHA256_128,
                CONFIDENTIALITY_AES_CBC_128,
            ),
        }
    }

    fn hash(self) -> HashAlg {
        match self {
            CipherSuite::Suite3 => HashAlg::Sha1,
            CipherSuite::Suite17 => HashAlg::Sha256,
        }
    }

    /// Length of the RAKP 2/3 key exchange authentication codes (full HMAC).
    pub fn rakp_auth_code_len(self) -> usize {
        self.hash().output_len()
    }

    /// Length of the RAKP 4 integrity check value and of every packet's AuthCode:
    /// HMAC-SHA1-96 keeps 12 bytes, HMAC-SHA256-128 keeps 16.
    pub fn integrity_len(self) -> usize {
        match self {
            CipherSuite::Suite3 => 12,
            CipherSuite::Suite17 => 16,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }
}

/// HMAC over the concatenation of `parts`. HMAC accepts keys of any length, so this cannot fail.
fn hmac(alg: HashAlg, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match alg {
        HashAlg::Sha1 => {
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key");
            parts.iter().for_each(|p| mac.update(p));
            mac.finalize().into_bytes().to_vec()
        }
        HashAlg::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
            parts.iter().for_each(|p| mac.update(p));
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Constant-time comparison for received authentication codes.
pub fn codes_match(expected: &[u8], received: &[u8]) -> bool {
    expected.len() == received.len() && bool::from(expected.ct_eq(received))
}

/// What both sides contribute to the RAKP exchange.
#[derive(Debug, Clone)]
pub struct RakpContext<'a> {
    pub suite: CipherSuite,
    /// Remote console (our) session ID, SIDm.
    pub console_session_id: u32,
    /// Managed system (BMC) session ID, SIDc.
    pub bmc_session_id: u32,
    /// Remote console random number, Rm.
    pub console_random: [u8; 16],
    /// Managed system random number, Rc.
    pub bmc_random: [u8; 16],
    /// Managed system GUID, GUIDc.
    pub bmc_guid: [u8; 16],
    /// The requested role byte exactly as sent in RAKP 1 (privilege level plus lookup bit).
    pub role: u8,
    pub username: &'a [u8],
}

impl RakpContext<'_> {
    fn username_len(&self) -> [u8; 1] {
        [self.username.len() as u8]
    }

    /// RAKP 2 key exchange authentication code the BMC must have sent:
    /// HMAC_Kuid(SIDm | SIDc | Rm | Rc | GUIDc | ROLEm | ULENGTHm | UNAMEm).
    pub fn rakp2_auth_code(&self, kuid: &[u8]) -> Vec<u8> {
        hmac(
            self.suite.hash(),
            kuid,
            &[
                &self.console_session_id.to_le_bytes(),
                &self.bmc_session_id.to_le_bytes(),
                &self.console_random,
                &self.bmc_random,
                &self.bmc_guid,
                &[self.role],
                &self.username_len(),
                self.username,
            ],
        )
    }

    /// RAKP 3 key exchange authentication code we send: HMAC_Kuid(Rc | SIDm | ROLEm | ULENGTHm | UNAMEm).
    pub fn rakp3_auth_code(&self, kuid: &[u8]) -> Vec<u8> {
        hmac(
            self.suite.hash(),
            kuid,
            &[
                &self.bmc_random,
                &self.console_session_id.to_le_bytes(),
                &[self.role],
                &self.username_len(),
                self.username,
            ],
        )
    }

    /// Session Integrity Key: HMAC_KG(Rm | Rc | ROLEm | ULENGTHm | UNAMEm). KG is the BMC key, or
    /// Kuid (the password) when the BMC has no KG set.
    pub fn session_integrity_key(&self, kg: &[u8]) -> Vec<u8> {
        hmac(
            self.suite.hash(),
            kg,
            &[
                &self.console_random,
                &self.bmc_random,
                &[self.role],
                &self.username_len(),
                self.username,
            ],
        )
    }

    /// RAKP 4 integrity check value the BMC must have sent: HMAC_SIK(Rm | SIDc | GUIDc), truncated
    /// to the integrity length (12 bytes for suite 3, 16 for suite 17).
    pub fn rakp4_check_value(&self, sik: &[u8]) -> Vec<u8> {
        let mut full = hmac(
            self.suite.hash(),
            sik,
            &[
                &self.console_random,
                &self.bmc_session_id.to_le_bytes(),
                &self.bmc_guid,
            ],
        );
        full.truncate(self.suite.integrity_len());
        full
    }
}

/// Keys of an established RMCP+ session.
#[derive(Clone)]
pub struct SessionKeys {
    pub suite: CipherSuite,
    pub sik: Vec<u8>,
    /// Integrity key: HMAC_SIK(0x01 × 20).
    pub k1: Vec<u8>,
    /// Confidentiality key material: HMAC_SIK(0x02 × 20); AES-128 uses its first 16 bytes.
    pub k2: Vec<u8>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    pub fn derive(suite: CipherSuite, sik: Vec<u8>) -> Self {
        // The constants are 20 bytes for every authentication algorithm (IPMI 2.0 §13.32).
        let k1 = hmac(suite.hash(), &sik, &[&[0x01; 20]]);
        let k2 = hmac(suite.hash(), &sik, &[&[0x02; 20]]);
        SessionKeys { suite, sik, k1, k2 }
    }

    /// The packet AuthCode over `signed` (auth type .. next header), truncated per suite.
    pub fn integrity_code(&self, signed: &[u8]) -> Vec<u8> {
        let mut full = hmac(self.suite.hash(), &self.k1, &[signed]);
        full.truncate(self.suite.integrity_len());
        full
    }

    fn aes_key(&self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key.copy_from_slice(&self.k2[..16]);
        key
    }

    /// AES-CBC-128 payload: IV, then the encrypted (data | pad 01 02 .. N | N), a multiple of 16.
    pub fn encrypt(&self, iv: [u8; 16], plaintext: &[u8]) -> Vec<u8> {
        let pad = (16 - (plaintext.len() + 1) % 16) % 16;
        let mut buffer = Vec::with_capacity(16 + plaintext.len() + pad + 1);
        buffer.extend_from_slice(plaintext);
        buffer.extend((1..=pad as u8).collect::<Vec<_>>());
        buffer.push(pad as u8);
        let len = buffer.len();
        cbc::Encryptor::<aes::Aes128>::new(&self.aes_key().into(), &iv.into())
            .encrypt_padded_mut::<NoPadding>(&mut buffer, len)
            .expect("buffer is a whole number of blocks");
        let mut out = iv.to_vec();
        out.extend_from_slice(&buffer);
        out
    }

    pub fn decrypt(&self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if payload.len() < 32 || !payload.len().is_multiple_of(16) {
            return Err(CryptoError::CipherLength(payload.len()));
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&payload[..16]);
        let mut buffer = payload[16..].to_vec();
        cbc::Decryptor::<aes::Aes128>::new(&self.aes_key().into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buffer)
            .map_err(|_| CryptoError::CipherLength(payload.len()))?;
        let pad = *buffer.last().expect("at least one block") as usize;
        if pad > 15 || pad + 1 > buffer.len() {
            return Err(CryptoError::Pad);
        }
        let data_len = buffer.len() - pad - 1;
        // The pad bytes are 1, 2, .. N; checking them catches a wrong key early.
        if buffer[data_len..data_len + pad]
            .iter()
            .enumerate()
            .any(|(i, &b)| b as usize != i + 1)
        {
            return Err(CryptoError::Pad);
        }
        buffer.truncate(data_len);
        Ok(buffer)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("encrypted payload length {0} is not IV plus whole AES blocks")]
    CipherLength(usize),
    #[error("confidentiality pad is malformed (wrong key or corrupted packet)")]
    Pad,
}

/// IPMI 1.5 per-message AuthCode (IPMI 2.0 §22.17.1). MD5 signs
/// password | session id | message | session sequence | password; straight password sends the
/// padded password itself.
pub fn v15_auth_code(
    auth_type: super::wire::AuthType,
    password: &[u8; 16],
    session_id: u32,
    message: &[u8],
    sequence: u32,
) -> Option<[u8; 16]> {
    use super::wire::AuthType;
    match auth_type {
        AuthType::Md5 => {
            let mut md5 = Md5::new();
            md5.update(password);
            md5.update(session_id.to_le_bytes());
            md5.update(message);
            md5.update(sequence.to_le_bytes());
            md5.update(password);
            Some(md5.finalize().into())
        }
        AuthType::StraightPassword => Some(*password),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! Expected values were computed independently with Python's hmac/hashlib/cryptography from
    //! the IPMI 2.0 formulas (see `tests/peers/ipmi_vectors.py`), not with this code.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn context(suite: CipherSuite) -> RakpContext<'static> {
        let mut rm = [0u8; 16];
        let mut rc = [0u8; 16];
        let mut guid = [0u8; 16];
        for i in 0..16 {
            rm[i] = i as u8;
            rc[i] = 0x10 + i as u8;
            guid[i] = 0xA0 + i as u8;
        }
        RakpContext {
            suite,
            console_session_id: 0x1122_3344,
            bmc_session_id: 0x5566_7788,
            console_random: rm,
            bmc_random: rc,
            bmc_guid: guid,
            role: 0x14,
            username: b"admin",
        }
    }

    struct Vectors {
        rakp2: &'static str,
        rakp3: &'static str,
        sik: &'static str,
        rakp4: &'static str,
        k1: &'static str,
        k2: &'static str,
        integrity: &'static str,
        ciphertext: &'static str,
    }

    fn check(suite: CipherSuite, v: Vectors) {
        let ctx = context(suite);
        let kuid = b"password";
        assert_eq!(ctx.rakp2_auth_code(kuid), hex(v.rakp2), "RAKP 2 auth code");
        assert_eq!(ctx.rakp3_auth_code(kuid), hex(v.rakp3), "RAKP 3 auth code");
        let sik = ctx.session_integrity_key(kuid);
        assert_eq!(sik, hex(v.sik), "SIK");
        assert_eq!(ctx.rakp4_check_value(&sik), hex(v.rakp4), "RAKP 4 ICV");
        let keys = SessionKeys::derive(suite, sik);
        assert_eq!(keys.k1, hex(v.k1), "K1");
        assert_eq!(keys.k2, hex(v.k2), "K2");
        let signed: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            keys.integrity_code(&signed),
            hex(v.integrity),
            "packet AuthCode"
        );
        let iv: [u8; 16] = core::array::from_fn(|i| 0xF0 + i as u8);
        let plaintext = b"\x20\x18\xc8\x81\x04\x3b\x04\x3c";
        let encrypted = keys.encrypt(iv, plaintext);
        assert_eq!(&encrypted[..16], &iv);
        assert_eq!(
            &encrypted[16..],
            &hex(v.ciphertext)[..],
            "AES-CBC-128 ciphertext"
        );
        assert_eq!(keys.decrypt(&encrypted).unwrap(), plaintext);
    }

    #[test]
    fn cipher_suite_3_vectors() {
        check(
            CipherSuite::Suite3,
            Vectors {
                rakp2: "dc8922708e10b691701b45ba41c72cd27445519a",
                rakp3: "4402012e214da511895a399bd77d5396e7998a4d",
                sik: "122c77c4b11ccd93251cbae6c34a9cb6310da154",
                rakp4: "7e1a71bb29a4120fbe8b86f2",
                k1: "e4472be78f9a81fa68297aab696a7be8c97fc9f8",
                k2: "2b6552012a2517cb3b5713901d757a6efc7d8301",
                integrity: "775cefb34abd503b2e9932b2",
                ciphertext: "54ac67fd661a1f78afee609dc1fcf9f8",
            },
        );
    }

    #[test]
    fn cipher_suite_17_vectors() {
        check(
            CipherSuite::Suite17,
            Vectors {
                rakp2: "1fcccda989a97629cc3e77179db0a2a55ce28fdf49ac088f88355c7e7758ae4e",
                rakp3: "e6f17841e92f8c11cbc4fd1cafcc9c21e3d814e713e13e9ee640103b50c0ef15",
                sik: "e5935f7199865ad961063477b0662684e2ce9b1da8f2b8d41c5ce127d37e9bcf",
                rakp4: "858aa7a1a1a03dc1777ec9f33af1a0b6",
                k1: "dc4fe73d075306f6897115dd63257385e845c10404fa1d73991790c6a101bec2",
                k2: "2a4f969ea6dfa83066f36674fdc2fea289fa1a21da90303e9b5269b54ec5adb5",
                integrity: "9701c4db194383eccb8eaf05d0db801f",
                ciphertext: "a30acb4667bfe489a596269ee449f4e7",
            },
        );
    }

    #[test]
    fn v15_md5_auth_code_vector() {
        let mut password = [0u8; 16];
        password[..8].copy_from_slice(b"password");
        let message = [0x20, 0x18, 0xC8, 0x81, 0x04, 0x3B, 0x04, 0x3C];
        let code = v15_auth_code(
            crate::ipmi::wire::AuthType::Md5,
            &password,
            0x0102_0304,
            &message,
            0x0000_0010,
        )
        .unwrap();
        assert_eq!(code.to_vec(), hex("4e31a395885b0edf312472c89daa298e"));
        let straight = v15_auth_code(
            crate::ipmi::wire::AuthType::StraightPassword,
            &password,
            1,
            &message,
            1,
        );
        assert_eq!(straight, Some(password));
    }

    #[test]
    fn decrypt_rejects_bad_lengths_and_pads() {
        let keys = SessionKeys::derive(CipherSuite::Suite3, vec![7; 20]);
        assert_eq!(keys.decrypt(&[0; 16]), Err(CryptoError::CipherLength(16)));
        assert_eq!(keys.decrypt(&[0; 33]), Err(CryptoError::CipherLength(33)));
        let other = SessionKeys::derive(CipherSuite::Suite3, vec![8; 20]);
        let encrypted = keys.encrypt([1; 16], b"hello");
        // A different key almost surely yields a malformed pad; check it does not panic.
        let _ = other.decrypt(&encrypted);
        let mut bad_pad = keys.encrypt([1; 16], &[0u8; 15]);
        // 15 bytes + pad length 0: flip the last block so the pad byte is garbage.
        let last = bad_pad.len() - 1;
        bad_pad[last - 16] ^= 0x40;
        assert!(keys.decrypt(&bad_pad).is_err());
    }
}
