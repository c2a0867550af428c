//! HMAC verification of webhook bodies: over the raw bytes, before parsing,
//! in constant time. Signatures must be lowercase hex, as both providers send.

use hmac::{Hmac, Mac};

/// Which digest the provider signs with.
#[derive(Debug, Clone, Copy)]
pub enum Digest {
    /// Sentry: HMAC-SHA256.
    Sha256,
    /// Vercel: HMAC-SHA1.
    Sha1,
}

/// True when `signature` is the lowercase-hex HMAC of `body` under `secret`.
pub fn verify(digest: Digest, secret: &[u8], body: &[u8], signature: &str) -> bool {
    let expected_len = match digest {
        Digest::Sha256 => 64,
        Digest::Sha1 => 40,
    };
    let sig = signature.trim();
    if sig.len() != expected_len || !sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return false;
    }
    let Ok(raw) = hex::decode(sig) else {
        return false;
    };
    match digest {
        Digest::Sha256 => Hmac::<sha2::Sha256>::new_from_slice(secret)
            .map(|mut m| {
                m.update(body);
                m.verify_slice(&raw).is_ok()
            })
            .unwrap_or(false),
        Digest::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(secret)
            .map(|mut m| {
                m.update(body);
                m.verify_slice(&raw).is_ok()
            })
            .unwrap_or(false),
    }
}

/// Lowercase-hex HMAC of `body`; what a provider would send. Used by the
/// simulator's senders and by tests.
pub fn sign(digest: Digest, secret: &[u8], body: &[u8]) -> String {
    match digest {
        Digest::Sha256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac takes any key");
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        }
        Digest::Sha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("hmac takes any key");
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(Digest::Sha256, b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(
            Digest::Sha256,
            b"Jefe",
            b"what do ya want for nothing?",
            &sig
        ));
    }

    #[test]
    fn sha1_matches_a_known_vector() {
        // RFC 2202 test case 2.
        let sig = sign(Digest::Sha1, b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn rejects_anything_but_the_exact_lowercase_signature() {
        let body = br#"{"action":"critical"}"#;
        let good = sign(Digest::Sha256, b"k", body);
        assert!(verify(Digest::Sha256, b"k", body, &good));
        assert!(!verify(Digest::Sha256, b"k", body, &good.to_uppercase()));
        assert!(!verify(Digest::Sha256, b"k", body, &good[..63]));
        assert!(!verify(Digest::Sha256, b"k", body, ""));
        assert!(!verify(Digest::Sha256, b"other", body, &good));
        assert!(!verify(
            Digest::Sha256,
            b"k",
            br#"{"action":"resolved"}"#,
            &good
        ));
        assert!(!verify(
            Digest::Sha256,
            b"k",
            body,
            &format!("sha256={good}")
        ));
    }
}
