//! X25519 keys: base64 on our wire and in wg-quick files, lowercase hex in
//! the UAPI.

use std::fmt;

use base64::Engine as _;

/// A 32-byte X25519 key (private or public). Its `Debug` hides the bytes so
/// a private key never reaches a log by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

/// A key that is not 32 bytes of base64 or hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("not hex: {0}")]
    Hex(String),
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    Length(usize),
}

impl Key {
    /// From the standard base64 form (`wg genkey`'s output).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// From the UAPI's hex form.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::Hex(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; 32]>::try_from(bytes)
            .map(Key)
            .map_err(|_| KeyError::Length(bytes.len()))
    }

    /// A fresh random private key, clamped as `wg genkey` clamps it.
    pub fn generate() -> Self {
        let mut bytes: [u8; 32] = rand::random();
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        Key(bytes)
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(*boringtun::x25519::PublicKey::from(&secret).as_bytes())
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_name_the_same_key_and_bad_lengths_are_refused() {
        let key = Key::generate();
        assert_eq!(Key::from_base64(&key.to_base64()), Ok(key.clone()));
        assert_eq!(Key::from_hex(&key.to_hex()), Ok(key.clone()));
        assert_ne!(key.public(), key);
        assert_eq!(Key::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(matches!(Key::from_base64("!!"), Err(KeyError::Base64(_))));
    }

    #[test]
    fn the_public_key_is_rfc7748s() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private =
            Key::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        assert_eq!(
            private.public().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
