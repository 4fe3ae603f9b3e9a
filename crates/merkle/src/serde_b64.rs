//! Serde helpers: hashes as standard base64 strings.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use crate::hash::Hash;

pub(crate) fn decode(text: &str) -> Result<Hash, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("invalid base64 hash {text:?}: {e}"))?;
    Hash::try_from(bytes.as_slice())
        .map_err(|_| format!("a hash is 32 bytes, {text:?} decodes to {}", bytes.len()))
}

pub(crate) fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(h))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
    let text = String::deserialize(d)?;
    decode(&text).map_err(D::Error::custom)
}

pub(crate) mod vec {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(crate) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&STANDARD.encode(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| decode(t).map_err(D::Error::custom))
            .collect()
    }
}
