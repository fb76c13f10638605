//! Per-task keys of measurement control: who may order a point to send or receive, and
//! who may use an MSCS's API.
//!
//! The controller generates a random secret per measurement task (a service-host task,
//! a comparison run, or a platform's MSCS) and gives it only to the parties of that task.
//! The raw key never crosses the control connection: a request that makes a point act
//! (`send`, `receive`) travels inside a [`SignedRequest`] whose `mac` is HMAC-SHA256 over
//! the exact bytes of the inner request line, the task id, a timestamp and a nonce
//! ([`mac_input`]). The point checks the MAC in constant time (`ring::hmac::verify`),
//! refuses timestamps further than [`MAX_CLOCK_SKEW`] from its own clock and nonces it
//! has seen within that window, so a captured line can neither be altered nor replayed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::hmac;
use thiserror::Error;

use crate::protocol::ControlRequest;
pub use crate::protocol::SignedRequest;

/// Bytes of a secret key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a request nonce.
pub const NONCE_BYTES: usize = 16;
/// How far a signed request's timestamp may be from the point's clock. Points of one
/// measurement need synchronised clocks anyway; the window bounds the replay cache.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Longest task id a signed request may name (ids are UUIDs).
pub const MAX_TASK_ID_BYTES: usize = 128;
/// Most nonces remembered; only requests with a valid MAC are remembered, so only a key
/// holder can fill it.
const MAX_REMEMBERED_NONCES: usize = 100_000;
/// Domain separation: a MAC of this protocol is never valid for anything else.
const MAC_CONTEXT: &[u8] = b"measurelab-point-control/2";
/// Domain separation of the MSCS API token comparison.
const API_CONTEXT: &[u8] = b"measurelab-mscs-api/1";

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct KeyError {
    /// The offending field (`control_key`, `control_key_id`).
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// One task's secret, with the task id it belongs to. `Debug` never prints the secret.
#[derive(Clone)]
pub struct ControlKey {
    task: String,
    secret: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlKey")
            .field("task", &self.task)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ControlKey {
    /// The key of `task` from its lower-case hex secret (64 digits, as the controller
    /// hands it out).
    pub fn from_hex(task: impl Into<String>, secret_hex: &str) -> Result<Self, KeyError> {
        let task = task.into();
        if task.is_empty() || task.len() > MAX_TASK_ID_BYTES {
            return Err(KeyError {
                field: "control_key_id",
                reason: format!("must be 1..={MAX_TASK_ID_BYTES} bytes"),
            });
        }
        let bad = || KeyError {
            field: "control_key",
            reason: format!("must be {} hex digits", KEY_BYTES * 2),
        };
        let bytes = hex::decode(secret_hex.trim()).map_err(|_| bad())?;
        let secret: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self { task, secret })
    }

    /// A fresh random secret as lower-case hex, for whoever hands keys out.
    pub fn generate_hex() -> String {
        let mut secret = [0u8; KEY_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        hex::encode(secret)
    }

    /// The task this key belongs to.
    pub fn task(&self) -> &str {
        &self.task
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.secret)
    }

    /// Wraps `request` in a [`SignedRequest`] stamped now with a fresh nonce.
    pub fn sign(&self, request: &ControlRequest) -> Result<ControlRequest, serde_json::Error> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        self.sign_at(request, unix_ms_now(), &hex::encode(nonce))
    }

    /// [`Self::sign`] with a given timestamp and nonce (tests, fuzzing).
    pub fn sign_at(
        &self,
        request: &ControlRequest,
        timestamp_ms: i64,
        nonce: &str,
    ) -> Result<ControlRequest, serde_json::Error> {
        let request = serde_json::to_string(request)?;
        let tag = hmac::sign(
            &self.hmac_key(),
            &mac_input(&self.task, timestamp_ms, nonce, &request),
        );
        Ok(ControlRequest::Signed(SignedRequest {
            task: self.task.clone(),
            timestamp_ms,
            nonce: nonce.to_string(),
            mac: hex::encode(tag.as_ref()),
            request,
        }))
    }

    /// Whether `presented` (an `Authorization: Bearer` value) is this key's secret,
    /// compared in constant time: both sides are HMAC'd under the secret and the tags
    /// compared by `ring::hmac::verify`, so the time taken says nothing about where
    /// they differ.
    pub fn matches_bearer(&self, presented: &str) -> bool {
        let key = self.hmac_key();
        let expected = hmac::sign(
            &key,
            &[API_CONTEXT, hex::encode(self.secret).as_bytes()].concat(),
        );
        hmac::verify(
            &key,
            &[API_CONTEXT, presented.trim().as_bytes()].concat(),
            expected.as_ref(),
        )
        .is_ok()
    }

    /// The secret as the bearer token of an MSCS API request.
    pub fn bearer(&self) -> String {
        hex::encode(self.secret)
    }
}

/// What the MAC covers: the context, the task id, the timestamp, the nonce and the exact
/// inner request line, each length-prefixed so no two different tuples give the same
/// bytes.
pub fn mac_input(task: &str, timestamp_ms: i64, nonce: &str, request: &str) -> Vec<u8> {
    let mut input =
        Vec::with_capacity(MAC_CONTEXT.len() + task.len() + nonce.len() + request.len() + 40);
    input.extend_from_slice(MAC_CONTEXT);
    let timestamp = timestamp_ms.to_string();
    for part in [
        task.as_bytes(),
        timestamp.as_bytes(),
        nonce.as_bytes(),
        request.as_bytes(),
    ] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input
}

impl SignedRequest {
    /// The request this line carries, unchecked: a point without keys acts on it, a keyed
    /// one only after [`KeyRing::verify`].
    pub fn inner(&self) -> Result<ControlRequest, AuthError> {
        match serde_json::from_str::<ControlRequest>(&self.request) {
            Ok(ControlRequest::Signed(_)) => Err(AuthError::Malformed {
                field: "request",
                reason: "a signed request cannot carry another".into(),
            }),
            Ok(request) => Ok(request),
            Err(err) => Err(AuthError::Malformed {
                field: "request",
                reason: err.to_string(),
            }),
        }
    }
}

/// Why a request was not authenticated; the point answers with it and does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// A request that makes the point act came without a key proof.
    #[error("unauthenticated: {op} needs a key proof (a signed request) on this point")]
    Missing {
        /// The op.
        op: &'static str,
    },
    /// The point holds no key for the named task.
    #[error("unauthenticated: no key for task {task:?} on this point")]
    UnknownTask {
        /// The task named.
        task: String,
    },
    /// The MAC does not match: another key, or an altered request.
    #[error("unauthenticated: the key proof for task {task:?} does not match")]
    BadMac {
        /// The task named.
        task: String,
    },
    /// The timestamp is outside the window.
    #[error("unauthenticated: timestamp_ms is {skew_ms} ms from this point's clock (at most {max_ms} allowed)")]
    Stale {
        /// Distance from the point's clock.
        skew_ms: i64,
        /// [`MAX_CLOCK_SKEW`].
        max_ms: i64,
    },
    /// The nonce was already used within the window.
    #[error("unauthenticated: nonce already used (a replayed request)")]
    Replayed,
    /// A field of the proof is malformed.
    #[error("unauthenticated: {field}: {reason}")]
    Malformed {
        /// `task`, `nonce`, `mac` or `request`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Too many fresh nonces to remember.
    #[error("unauthenticated: too many signed requests within the replay window")]
    Busy,
}

impl AuthError {
    /// Short reason label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::UnknownTask { .. } => "unknown_task",
            Self::BadMac { .. } => "bad_mac",
            Self::Stale { .. } => "stale",
            Self::Replayed => "replayed",
            Self::Malformed { .. } => "malformed",
            Self::Busy => "busy",
        }
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A not-yet-upgraded (release 0.1.0, control protocol version 1) orchestrator of one
/// service task, as the controller marks it (`ServicePeer.control_protocol_version = 1`
/// on the task's first peer). It cannot sign, so a point accepts its unsigned `send` and
/// `receive` only from `source` and only for the task's own `group` and `port`, and
/// answers its `info` as a version-1 point. Nothing on the wire makes a point add one:
/// only the node agent does, from the controller's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyOrchestrator {
    /// The task it orchestrates.
    pub task: String,
    /// Its service address (the source of its control connections).
    pub source: IpAddr,
    /// The task's multicast group.
    pub group: Ipv4Addr,
    /// The task's UDP port.
    pub port: u16,
}

/// The keys a point accepts, by task id, and the nonces it has seen. Shared between the
/// point's connection threads and whoever keeps it current (the node agent replaces the
/// set from every desired state).
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Mutex<HashMap<String, ControlKey>>,
    /// Orchestrators the controller says still speak version 1 (see [`LegacyOrchestrator`]).
    legacy: Mutex<Vec<LegacyOrchestrator>>,
    legacy_changed: Condvar,
    changed: Condvar,
    nonces: Mutex<HashMap<String, Instant>>,
    /// Bumped whenever a request names a task the ring has no key for, so the keeper can
    /// fetch its keys at once instead of at its next resync.
    misses: AtomicU64,
    miss_notify: tokio::sync::Notify,
    refused: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave a key map half-written: every write is one insert
    // or one replacement.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn with_keys(keys: impl IntoIterator<Item = ControlKey>) -> Self {
        let ring = Self::default();
        ring.replace(keys);
        ring
    }

    /// Replaces the accepted keys whole (the tasks that are open now).
    pub fn replace(&self, keys: impl IntoIterator<Item = ControlKey>) {
        let keys = keys.into_iter().map(|k| (k.task.clone(), k)).collect();
        *lock(&self.keys) = keys;
        self.changed.notify_all();
    }

    /// Replaces the version-1 orchestrators whole (from the same desired state as the keys).
    pub fn replace_legacy(&self, orchestrators: impl IntoIterator<Item = LegacyOrchestrator>) {
        *lock(&self.legacy) = orchestrators.into_iter().collect();
        self.legacy_changed.notify_all();
    }

    /// The task whose version-1 orchestrator at `source` may order `group`:`port`
    /// unsigned, waiting up to `wait` for the controller's mark: a 0.1.0 orchestrator
    /// orders its receivers as soon as its own desired state lists the task, which can be
    /// before this node's agent has applied the desired state that marks it. It cannot
    /// sign, so this is the wait [`Self::key_of`] makes for a signed order's key.
    pub fn legacy_task(
        &self,
        source: IpAddr,
        group: Ipv4Addr,
        port: u16,
        wait: Duration,
    ) -> Option<String> {
        self.wait_for(&self.legacy, &self.legacy_changed, wait, |legacy| {
            legacy
                .iter()
                .find(|o| o.source == source && o.group == group && o.port == port)
                .map(|o| o.task.clone())
        })
    }

    /// Whether `source` is a version-1 orchestrator of some task (its `info` is answered
    /// as version 1, which is all a 0.1.0 orchestrator accepts).
    pub fn is_legacy_source(&self, source: IpAddr) -> bool {
        lock(&self.legacy).iter().any(|o| o.source == source)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests refused so far, for every reason.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts one refusal (the point calls this for every [`AuthError`] it answers).
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when a request named a task the ring had no key for.
    pub async fn key_missed(&self) {
        self.miss_notify.notified().await
    }

    /// The key of `task`, waiting up to `wait` for it to arrive: a run can reach a peer's
    /// point before that peer has read the desired state that lists the task.
    fn key_of(&self, task: &str, wait: Duration) -> Option<ControlKey> {
        self.wait_for(&self.keys, &self.changed, wait, |keys| {
            keys.get(task).cloned()
        })
    }

    /// What `find` finds in `held`, waiting up to `wait` for `changed` to bring it. The
    /// first miss is signalled ([`Self::key_missed`]) so the keeper fetches the desired
    /// state at once rather than at its next resync.
    fn wait_for<T, R>(
        &self,
        held: &Mutex<T>,
        changed: &Condvar,
        wait: Duration,
        mut find: impl FnMut(&T) -> Option<R>,
    ) -> Option<R> {
        let deadline = Instant::now() + wait;
        let mut guard = lock(held);
        let mut signalled = false;
        loop {
            if let Some(found) = find(&guard) {
                return Some(found);
            }
            if !signalled {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.miss_notify.notify_one();
                signalled = true;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Checks a signed request and returns the request it carries. `key_wait` is how long
    /// an unknown task may wait for its key.
    pub fn verify(
        &self,
        signed: &SignedRequest,
        key_wait: Duration,
    ) -> Result<ControlRequest, AuthError> {
        self.verify_at(signed, unix_ms_now(), key_wait)
    }

    /// [`Self::verify`] against a given clock (tests, fuzzing).
    pub fn verify_at(
        &self,
        signed: &SignedRequest,
        now_ms: i64,
        key_wait: Duration,
    ) -> Result<ControlRequest, AuthError> {
        if signed.task.is_empty() || signed.task.len() > MAX_TASK_ID_BYTES {
            return Err(AuthError::Malformed {
                field: "task",
                reason: format!("must be 1..={MAX_TASK_ID_BYTES} bytes"),
            });
        }
        let nonce_ok = signed.nonce.len() == NONCE_BYTES * 2
            && signed.nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if !nonce_ok {
            return Err(AuthError::Malformed {
                field: "nonce",
                reason: format!("must be {} hex digits", NONCE_BYTES * 2),
            });
        }
        let tag = hex::decode(&signed.mac).map_err(|_| AuthError::Malformed {
            field: "mac",
            reason: "must be hex".into(),
        })?;
        let max_ms = i64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(i64::MAX);
        let skew_ms = now_ms.saturating_sub(signed.timestamp_ms).saturating_abs();
        if skew_ms > max_ms {
            return Err(AuthError::Stale { skew_ms, max_ms });
        }
        let key = self
            .key_of(&signed.task, key_wait)
            .ok_or_else(|| AuthError::UnknownTask {
                task: signed.task.clone(),
            })?;
        let input = mac_input(
            &signed.task,
            signed.timestamp_ms,
            &signed.nonce,
            &signed.request,
        );
        hmac::verify(&key.hmac_key(), &input, &tag).map_err(|_| AuthError::BadMac {
            task: signed.task.clone(),
        })?;
        self.remember_nonce(&signed.nonce)?;
        signed.inner()
    }

    fn remember_nonce(&self, nonce: &str) -> Result<(), AuthError> {
        let now = Instant::now();
        let mut nonces = lock(&self.nonces);
        if nonces.len() >= MAX_REMEMBERED_NONCES {
            nonces.retain(|_, seen| now.duration_since(*seen) <= MAX_CLOCK_SKEW * 2);
        }
        if nonces.contains_key(nonce) {
            return Err(AuthError::Replayed);
        }
        if nonces.len() >= MAX_REMEMBERED_NONCES {
            return Err(AuthError::Busy);
        }
        nonces.insert(nonce.to_string(), now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(task: &str, byte: u8) -> ControlKey {
        ControlKey::from_hex(task, &hex::encode([byte; KEY_BYTES])).unwrap()
    }

    fn signed(request: ControlRequest) -> SignedRequest {
        match request {
            ControlRequest::Signed(signed) => signed,
            other => panic!("not signed: {other:?}"),
        }
    }

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn the_right_key_passes_once_and_others_are_refused_by_reason() {
        let ring = KeyRing::with_keys([key("task-a", 1), key("task-b", 2)]);
        let now = 1_700_000_000_000;
        let good = signed(
            key("task-a", 1)
                .sign_at(&ControlRequest::Info, now, NONCE)
                .unwrap(),
        );
        assert_eq!(
            ring.verify_at(&good, now + 5, Duration::ZERO).unwrap(),
            ControlRequest::Info
        );
        // The same line again is a replay.
        assert_eq!(
            ring.verify_at(&good, now + 6, Duration::ZERO).unwrap_err(),
            AuthError::Replayed
        );
        let fresh =
            |k: &ControlKey, n: &str| signed(k.sign_at(&ControlRequest::Info, now, n).unwrap());
        // Task A's key claiming task B.
        let mut stolen = fresh(&key("task-a", 1), "10112233445566778899aabbccddeeff");
        stolen.task = "task-b".into();
        assert_eq!(
            ring.verify_at(&stolen, now, Duration::ZERO)
                .unwrap_err()
                .reason(),
            "bad_mac"
        );
        // A key the ring does not hold.
        let unknown = fresh(&key("task-c", 3), "20112233445566778899aabbccddeeff");
        assert_eq!(
            ring.verify_at(&unknown, now, Duration::ZERO)
                .unwrap_err()
                .reason(),
            "unknown_task"
        );
        // An altered request line.
        let mut altered = fresh(&key("task-b", 2), "30112233445566778899aabbccddeeff");
        altered.request = r#"{"op":"stop","packets_sent":1}"#.into();
        assert_eq!(
            ring.verify_at(&altered, now, Duration::ZERO)
                .unwrap_err()
                .reason(),
            "bad_mac"
        );
        // Too old.
        let old = fresh(&key("task-b", 2), "40112233445566778899aabbccddeeff");
        let late = now + MAX_CLOCK_SKEW.as_millis() as i64 + 1;
        assert_eq!(
            ring.verify_at(&old, late, Duration::ZERO)
                .unwrap_err()
                .reason(),
            "stale"
        );
        let mut short = fresh(&key("task-b", 2), "50112233445566778899aabbccddeeff");
        short.nonce = "00".into();
        assert_eq!(
            ring.verify_at(&short, now, Duration::ZERO)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn a_missing_key_is_waited_for_and_announced() {
        let ring = std::sync::Arc::new(KeyRing::default());
        let now = unix_ms_now();
        let request = signed(
            key("late", 7)
                .sign_at(&ControlRequest::Info, now, NONCE)
                .unwrap(),
        );
        let keeper = {
            let ring = std::sync::Arc::clone(&ring);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(ring.key_missed());
                ring.replace([key("late", 7)]);
            })
        };
        assert_eq!(
            ring.verify_at(&request, now, Duration::from_secs(20))
                .unwrap(),
            ControlRequest::Info
        );
        keeper.join().unwrap();
    }

    #[test]
    fn bearer_tokens_match_only_the_secret() {
        let k = key("t", 9);
        assert!(k.matches_bearer(&k.bearer()));
        assert!(!k.matches_bearer(&key("t", 8).bearer()));
        assert!(!k.matches_bearer(""));
        assert!(!format!("{k:?}").contains(&k.bearer()));
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        assert_eq!(
            ControlKey::from_hex("t", "abcd").unwrap_err().field,
            "control_key"
        );
        assert_eq!(
            ControlKey::from_hex("", &"a".repeat(64)).unwrap_err().field,
            "control_key_id"
        );
        assert_eq!(ControlKey::generate_hex().len(), 64);
    }
}
