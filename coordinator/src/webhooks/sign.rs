//! Signing a delivery, so a receiver can tell that the farm sent it and that it is fresh:
//! HMAC-SHA256 under the tenant's webhook secret of `TIMESTAMP.BODY`, where the timestamp
//! (seconds since the Unix epoch, also sent as a header) is the attempt's own. A captured
//! delivery replayed later carries an old timestamp, and changing it breaks the signature.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Header with `sha256=HEX`, the signature.
pub const SIGNATURE: &str = "X-Tessera-Signature";
/// Header with the attempt's time in seconds since the Unix epoch, part of what is signed.
pub const TIMESTAMP: &str = "X-Tessera-Timestamp";
/// Header with the delivery's id, the same on every attempt at one event: receivers drop
/// duplicates by it.
pub const DELIVERY: &str = "X-Tessera-Delivery";
/// Header with the event's type (`result` or `job_done`).
pub const EVENT: &str = "X-Tessera-Event";

/// A webhook secret: kept out of `Debug` output, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its text; `None` when empty, which would sign nothing worth checking.
    pub fn new(text: &str) -> Option<Secret> {
        let text = text.trim_end_matches(['\n', '\r']);
        (!text.is_empty()).then(|| Secret(text.as_bytes().to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Secret::new(&text).ok_or_else(|| serde::de::Error::custom("a webhook secret is empty"))
    }
}

/// The `X-Tessera-Signature` value of `body` sent at `timestamp`: `sha256=` and the
/// lower-case hex HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`.
pub fn signature(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Python's hmac.new(b"Jefe", b"1700000000.{}", hashlib.sha256).hexdigest().
        let secret = Secret::new("Jefe").unwrap();
        assert_eq!(
            signature(&secret, 1_700_000_000, b"{}"),
            "sha256=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
        assert_ne!(
            signature(&secret, 1_700_000_001, b"{}"),
            signature(&secret, 1_700_000_000, b"{}")
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let secret = Secret::new("hunter2\n").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert!(Secret::new("\n").is_none());
    }
}
