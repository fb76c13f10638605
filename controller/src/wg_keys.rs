//! WireGuard keys: X25519 key pairs in the base64 form `wg` prints, and the
//! check of a public key a researcher hands in.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::validation::FieldError;

/// A key pair, both halves base64 (standard alphabet, padded, as `wg genkey`).
pub(crate) struct KeyPair {
    pub private_key: String,
    pub public_key: String,
}

/// Why no key pair could be made.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct KeyGenError;

/// A fresh key pair from the system's CSPRNG.
pub(crate) fn generate() -> Result<KeyPair, KeyGenError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyGenError)?;
    // StaticSecret clamps the scalar itself, as `wg genkey` does.
    let secret = StaticSecret::from(bytes);
    let public = PublicKey::from(&secret);
    Ok(KeyPair {
        private_key: STANDARD.encode(secret.to_bytes()),
        public_key: STANDARD.encode(public.as_bytes()),
    })
}

/// A public key as given: 32 bytes in standard base64, returned re-encoded so
/// two spellings of one key compare equal.
pub(crate) fn public_key(field: &str, text: &str) -> Result<String, FieldError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
        FieldError::new(
            field,
            format!("is not standard base64 ({e}); give the key as `wg pubkey` prints it"),
        )
    })?;
    if bytes.len() != 32 {
        return Err(FieldError::new(
            field,
            format!(
                "decodes to {} bytes; a WireGuard (X25519) public key has 32",
                bytes.len()
            ),
        ));
    }
    Ok(STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_public_key_belongs_to_the_private_key() {
        let pair = generate().unwrap();
        let private: [u8; 32] = STANDARD
            .decode(&pair.private_key)
            .unwrap()
            .try_into()
            .unwrap();
        let derived = PublicKey::from(&StaticSecret::from(private));
        assert_eq!(STANDARD.encode(derived.as_bytes()), pair.public_key);
        assert_ne!(generate().unwrap().private_key, pair.private_key);
    }

    #[test]
    fn rfc_7748_test_vector_derives() {
        // RFC 7748 §6.1, Alice's key pair, in base64.
        let private: [u8; 32] = STANDARD
            .decode("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
            .unwrap()
            .try_into()
            .unwrap();
        let public = PublicKey::from(&StaticSecret::from(private));
        assert_eq!(
            STANDARD.encode(public.as_bytes()),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn public_keys_are_32_bytes_of_base64() {
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(public_key("public_key", &good).unwrap(), good);
        let short = public_key("public_key", &STANDARD.encode([7u8; 31])).unwrap_err();
        assert_eq!(short.field, "public_key");
        assert!(short.reason.contains("31 bytes"), "{}", short.reason);
        let garbage = public_key("public_key", "not base64!").unwrap_err();
        assert!(garbage.reason.contains("base64"), "{}", garbage.reason);
    }
}
