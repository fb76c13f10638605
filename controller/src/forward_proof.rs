//! Proof that a request was forwarded by another controller replica of the
//! same database, not by anyone who can write the `x-measurelab-forwarded`
//! header.
//!
//! A replica that forwards a client's request (`exec_forward`) already
//! charged that client's rate-limit buckets. Without proof the replica it
//! forwards to would charge the request again, to the *forwarding replica's*
//! address: every client that reaches B through A would share one per-source
//! bucket at B, and a few busy ones would get everyone else's forwarded
//! requests refused. With proof, B serves the request without charging it
//! again; without, B treats it as any other client's.
//!
//! The proof is an HMAC-SHA256 under a key every replica holds
//! ([`FORWARD_KEY_FILE`], shared through the database like the CA, see
//! `store::replica_files`) over the method, the path and query, the
//! caller's `Authorization` and a timestamp. A captured proof is good only
//! for that same request with that same token within [`WINDOW`], and all it
//! can do is spare that request a rate-limit charge.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method};
use ring::hmac;

/// The key's file in the data directory (0600), one per database.
pub const FORWARD_KEY_FILE: &str = "forward.key";
/// How far a proof's timestamp may be from this replica's clock (replicas'
/// clocks are assumed to be kept by NTP; the forward itself takes at most
/// seconds).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Names the version of the proof's input, so a future change of what is
/// signed cannot be mistaken for this one.
const CONTEXT: &[u8] = b"measurelab forwarded request v1";
/// The header's value from a replica without a key (no database shared,
/// or an earlier release): forwarded, but proving nothing.
pub const UNPROVEN: &str = "1";

/// The replicas' shared forwarding key.
#[derive(Clone)]
pub struct ForwardKey(hmac::Key);

impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardKey(..)")
    }
}

impl ForwardKey {
    /// The key made from the secret in [`FORWARD_KEY_FILE`].
    pub fn new(secret: &str) -> Self {
        ForwardKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// The header value that proves a forward of this request, made at `now`.
    pub fn proof(
        &self,
        method: &Method,
        path_and_query: &str,
        authorization: Option<&HeaderValue>,
        now: SystemTime,
    ) -> HeaderValue {
        let seconds = unix_seconds(now);
        let tag = self.tag(seconds, method, path_and_query, authorization);
        let value = format!("v1 t={seconds} mac={}", hex::encode(tag.as_ref()));
        // Digits and hex always make a header value; were it ever not, the
        // forward would go on unproven rather than fail.
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(UNPROVEN))
    }

    /// Whether `header` proves that another replica forwarded this request
    /// at most [`WINDOW`] from `now`. Anything else (`1` from a replica of
    /// an earlier release, a malformed or stale value, another key's MAC)
    /// proves nothing.
    pub fn verifies(
        &self,
        header: &HeaderValue,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> bool {
        let Some((seconds, mac)) = header.to_str().ok().and_then(parse) else {
            return false;
        };
        if unix_seconds(now).abs_diff(seconds) > WINDOW.as_secs() {
            return false;
        }
        let authorization = headers.get(axum::http::header::AUTHORIZATION);
        let input = input(seconds, method, path_and_query, authorization);
        hmac::verify(&self.0, &input, &mac).is_ok()
    }

    fn tag(
        &self,
        seconds: u64,
        method: &Method,
        path_and_query: &str,
        authorization: Option<&HeaderValue>,
    ) -> hmac::Tag {
        hmac::sign(
            &self.0,
            &input(seconds, method, path_and_query, authorization),
        )
    }
}

/// `v1 t=SECONDS mac=HEX`.
fn parse(value: &str) -> Option<(u64, Vec<u8>)> {
    let mut parts = value.split(' ');
    if parts.next()? != "v1" {
        return None;
    }
    let seconds = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    let mac = hex::decode(parts.next()?.strip_prefix("mac=")?).ok()?;
    parts.next().is_none().then_some((seconds, mac))
}

/// Each part length-prefixed, so no two requests share an input.
fn input(
    seconds: u64,
    method: &Method,
    path_and_query: &str,
    authorization: Option<&HeaderValue>,
) -> Vec<u8> {
    let authorization = authorization.map_or(&b""[..], HeaderValue::as_bytes);
    let mut input = Vec::with_capacity(CONTEXT.len() + 64 + path_and_query.len());
    for part in [
        CONTEXT,
        &seconds.to_be_bytes()[..],
        method.as_str().as_bytes(),
        path_and_query.as_bytes(),
        authorization,
    ] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::AUTHORIZATION;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn a_proof_holds_for_its_own_request_only() {
        let key = ForwardKey::new("shared secret");
        let now = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let token = headers("Bearer t");
        let path = "/v1/deployments/d1/outputs/0?vm=lab%2Fbox";
        let proof = key.proof(&Method::GET, path, token.get(AUTHORIZATION), now);

        assert!(key.verifies(&proof, &Method::GET, path, &token, now));
        // Within the window on either side of the receiver's clock.
        assert!(key.verifies(&proof, &Method::GET, path, &token, now + WINDOW));
        assert!(key.verifies(&proof, &Method::GET, path, &token, now - WINDOW));

        let later = now + WINDOW + Duration::from_secs(1);
        let earlier = now - WINDOW - Duration::from_secs(1);
        let other_path = "/v1/deployments/d1/outputs/0?vm=lab%2Fother";
        for (why, method, path, caller, at) in [
            ("stale", Method::GET, path, &token, later),
            ("from the future", Method::GET, path, &token, earlier),
            ("another path", Method::GET, other_path, &token, now),
            ("another method", Method::POST, path, &token, now),
            (
                "another token",
                Method::GET,
                path,
                &headers("Bearer u"),
                now,
            ),
            ("no token", Method::GET, path, &HeaderMap::new(), now),
        ] {
            assert!(!key.verifies(&proof, &method, path, caller, at), "{why}");
        }
        // Another database's replicas hold another key.
        let stranger = ForwardKey::new("another secret");
        assert!(!stranger.verifies(&proof, &Method::GET, path, &token, now));
    }

    #[test]
    fn anything_but_a_well_formed_proof_proves_nothing() {
        let key = ForwardKey::new("shared secret");
        let now = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let token = headers("Bearer t");
        let good = key.proof(&Method::GET, "/v1/x", token.get(AUTHORIZATION), now);
        let good = good.to_str().unwrap();
        let mac = good.rsplit_once("mac=").unwrap().1;
        for value in [
            // What replicas of earlier releases send.
            "1".to_string(),
            String::new(),
            good.replacen("v1", "v2", 1),
            format!("{good} extra"),
            format!("v1 t=1765000000 mac={}", &mac[..mac.len() - 2]),
            format!("v1 t=1765000000 mac={mac}zz"),
            format!("v1 t=-1 mac={mac}"),
            format!("v1 mac={mac} t=1765000000"),
        ] {
            let header = HeaderValue::from_str(&value).unwrap();
            assert!(
                !key.verifies(&header, &Method::GET, "/v1/x", &token, now),
                "{value:?}"
            );
        }
    }
}
