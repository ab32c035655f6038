//! Typed identifiers. A machine's id is a MAAS-style `system_id`: six characters from a
//! lowercase alphabet without look-alike letters, so MAAS clients see what they expect.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The characters a system_id may contain (MAAS avoids i, l, o, u to keep ids readable).
pub const SYSTEM_ID_ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
pub const SYSTEM_ID_LEN: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a machine id: {0:?} (expected 6 characters from [0-9a-hjkmnp-tv-z])")]
pub struct BadMachineId(pub String);

impl MachineId {
    pub fn parse(s: &str) -> Result<Self, BadMachineId> {
        if s.len() == SYSTEM_ID_LEN && s.bytes().all(|b| SYSTEM_ID_ALPHABET.contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadMachineId(s.to_owned()))
        }
    }

    /// Builds an id from six indexes into [`SYSTEM_ID_ALPHABET`] (taken modulo its length),
    /// so the caller chooses the randomness source.
    pub fn from_indexes(idx: [u8; SYSTEM_ID_LEN]) -> Self {
        let s = idx
            .iter()
            .map(|i| SYSTEM_ID_ALPHABET[*i as usize % SYSTEM_ID_ALPHABET.len()] as char)
            .collect();
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineId {
    type Error = BadMachineId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_system_ids() {
        for (input, ok) in [
            ("4y3h7n", true),
            ("000000", true),
            ("4y3h7", false),
            ("4y3h7nn", false),
            ("4Y3H7N", false),
            ("abcdei", false),
            ("ab cde", false),
            ("", false),
        ] {
            assert_eq!(MachineId::parse(input).is_ok(), ok, "{input:?}");
        }
    }

    #[test]
    fn from_indexes_round_trips_through_parse() {
        let id = MachineId::from_indexes([0, 31, 32, 255, 7, 200]);
        assert_eq!(MachineId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.as_str(), "0z0z78");
    }
}
