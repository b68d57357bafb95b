//! Byte encodings of everything the store writes to disk or sends as a snapshot.
//!
//! Every encoded value starts with a format byte so that a later version can read what an
//! earlier one wrote; the body is `postcard`. Decoding never panics: bad bytes are a
//! [`DecodeError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The format byte of values written by this version.
pub const FORMAT_V1: u8 = 1;

/// Bytes that cannot be read back as the value they should hold.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: empty input")]
    Empty { what: &'static str },
    #[error(
        "{what}: unknown format byte {found} (this build reads format {FORMAT_V1}); was it written by a newer Xene?"
    )]
    UnknownFormat { what: &'static str, found: u8 },
    #[error("{what}: {source}")]
    Body { what: &'static str, source: postcard::Error },
    #[error("{what}: checksum mismatch; the data is corrupt or truncated")]
    Checksum { what: &'static str },
}

/// Encodes `value` with the current format byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data cannot fail: postcard only errors on unsupported serde features
    // (which these types do not use) and on a full fixed-size buffer. Sized first, so the
    // bytes are written once into one allocation (every put encodes its key's record).
    let size = postcard::experimental::serialized_size(value).expect("invariant: store types serialize with postcard");
    let mut out = Vec::with_capacity(1 + size);
    out.push(FORMAT_V1);
    // As an `io::Write`, the Vec takes each run of bytes with one copy.
    postcard::to_io(value, out).expect("invariant: store types serialize with postcard")
}

/// Decodes bytes written by [`encode`]; `what` names the value in the error. `T` may borrow
/// from `bytes`.
pub fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty { what }),
        Some((&FORMAT_V1, body)) => {
            let (value, rest) = postcard::take_from_bytes(body).map_err(|source| DecodeError::Body { what, source })?;
            if !rest.is_empty() {
                return Err(DecodeError::Body { what, source: postcard::Error::DeserializeBadEncoding });
            }
            Ok(value)
        }
        Some((&found, _)) => Err(DecodeError::UnknownFormat { what, found }),
    }
}

/// Encodes `value` like [`encode`] and follows the format byte with a SHA-256 of the body, for
/// data that crosses the network in pieces (snapshots).
pub fn encode_checked<T: Serialize>(value: &T) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let body = postcard::to_stdvec(value).expect("invariant: store types serialize with postcard");
    let digest = Sha256::digest(&body);
    let mut out = Vec::with_capacity(1 + digest.len() + body.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&digest);
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes written by [`encode_checked`], verifying the checksum first.
pub fn decode_checked<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    use sha2::{Digest, Sha256};
    const DIGEST: usize = 32;
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty { what })?;
    if format != FORMAT_V1 {
        return Err(DecodeError::UnknownFormat { what, found: format });
    }
    if rest.len() < DIGEST {
        return Err(DecodeError::Checksum { what });
    }
    let (digest, body) = rest.split_at(DIGEST);
    if Sha256::digest(body).as_slice() != digest {
        return Err(DecodeError::Checksum { what });
    }
    let (value, tail) = postcard::take_from_bytes(body).map_err(|source| DecodeError::Body { what, source })?;
    if !tail.is_empty() {
        return Err(DecodeError::Body { what, source: postcard::Error::DeserializeBadEncoding });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let value = (7u64, "seven".to_string());
        let bytes = encode(&value);
        assert_eq!(decode::<(u64, String)>("pair", &bytes).expect("decodes"), value);
        assert!(matches!(decode::<(u64, String)>("pair", &[]), Err(DecodeError::Empty { .. })));
        assert!(matches!(decode::<(u64, String)>("pair", &[9, 1]), Err(DecodeError::UnknownFormat { found: 9, .. })));
        assert!(matches!(decode::<(u64, String)>("pair", &bytes[..3]), Err(DecodeError::Body { .. })));

        let checked = encode_checked(&value);
        assert_eq!(decode_checked::<(u64, String)>("pair", &checked).expect("decodes"), value);
        let mut flipped = checked.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(matches!(decode_checked::<(u64, String)>("pair", &flipped), Err(DecodeError::Checksum { .. })));
        assert!(matches!(decode_checked::<(u64, String)>("pair", &checked[..10]), Err(DecodeError::Checksum { .. })));
    }
}
