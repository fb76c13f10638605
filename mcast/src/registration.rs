//! A point's side of registration (`mcast-point serve --mscs ADDR`): register with the
//! MSCS when the point starts, then repeat the registration as a heartbeat at the
//! interval the MSCS asks for, so that the MSCS keeps the point in its rotation.
//!
//! A refusal that retrying cannot cure (another protocol version, a bad field, an MSCS
//! without registration) ends the loop with an error, which ends the point: a point that
//! would never be measured should say so and stop rather than serve silently. Anything
//! else (MSCS down or restarting, a name still held by this point's previous instance)
//! is retried with backoff.

use crate::auth::ControlKey;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use measurelab_backoff::Backoff;
use serde_json::Value;
use thiserror::Error;
use tracing::{info, warn};

use crate::protocol::{Registration, RegistrationAck};

/// First retry delay after a failed registration.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest retry delay while the MSCS is unreachable.
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Timeout of one registration request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a wait checks the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Why registration stopped for good.
#[derive(Debug, Error)]
pub enum RegistrationClientError {
    /// `--mscs` is not a usable address.
    #[error("--mscs {addr:?}: {reason}")]
    BadAddress {
        /// What was given.
        addr: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The MSCS refused the registration in a way retrying cannot cure.
    #[error("MSCS at {url} refused the registration (HTTP {status}): {message}")]
    Refused {
        /// The registration URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The MSCS's message.
        message: String,
    },
    /// The async runtime for the client could not start.
    #[error("cannot start the registration client: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Error codes of the MSCS (`POST /points`) that no retry can change.
const PERMANENT_CODES: [&str; 4] = [
    "protocol_version_mismatch",
    "unauthenticated",
    "invalid_argument",
    "registration_disabled",
];

enum Attempt {
    Registered(RegistrationAck),
    Retry(String),
    Refused { status: u16, message: String },
}

async fn attempt(
    client: &reqwest::Client,
    url: &str,
    registration: &Registration,
    key: Option<&ControlKey>,
) -> Attempt {
    let mut request = client.post(url).json(registration);
    if let Some(key) = key {
        request = request.bearer_auth(key.bearer());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => return Attempt::Retry(err.to_string()),
    };
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        return match serde_json::from_slice::<RegistrationAck>(&body) {
            Ok(ack) => Attempt::Registered(ack),
            Err(err) => Attempt::Retry(format!("unreadable answer: {err}")),
        };
    }
    let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = error["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    let code = error["error"]["code"].as_str().unwrap_or("");
    if PERMANENT_CODES.contains(&code) || status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
        Attempt::Refused {
            status: status.as_u16(),
            message,
        }
    } else {
        Attempt::Retry(format!("HTTP {status}: {message}"))
    }
}

/// Waits `duration` or until `shutdown` is set; false if it was set.
async fn wait(duration: Duration, shutdown: &AtomicBool) -> bool {
    let mut left = duration;
    while !left.is_zero() {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        let step = left.min(SHUTDOWN_POLL);
        tokio::time::sleep(step).await;
        left -= step;
    }
    !shutdown.load(Ordering::Relaxed)
}

/// Registers with the MSCS at `mscs` (HOST:PORT of its HTTP API) and heartbeats until
/// `shutdown` is set, with `key` as the bearer token when the MSCS requires one. Blocks:
/// run it on its own thread.
pub fn run_heartbeats(
    mscs: &str,
    registration: Registration,
    key: Option<ControlKey>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RegistrationClientError> {
    let bad_address = |reason: String| RegistrationClientError::BadAddress {
        addr: mscs.to_string(),
        reason,
    };
    if mscs.contains('/') {
        return Err(bad_address("expected HOST:PORT, not a URL".into()));
    }
    let url = format!("http://{mscs}/points");
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|err| bad_address(err.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        let mut registered = false;
        loop {
            let pause = match attempt(&client, &url, &registration, key.as_ref()).await {
                Attempt::Registered(ack) => {
                    if !registered {
                        info!(mscs = %url, heartbeat_seconds = ack.heartbeat_seconds, deadline_seconds = ack.deadline_seconds, "registered with the MSCS");
                        registered = true;
                    }
                    backoff.reset();
                    // Bounded so that a confused MSCS cannot silence the heartbeat or
                    // turn it into a flood.
                    Duration::from_secs_f64(ack.heartbeat_seconds.clamp(0.05, 60.0))
                }
                Attempt::Retry(reason) => {
                    if registered {
                        warn!(mscs = %url, %reason, "heartbeat failed; retrying");
                    } else {
                        warn!(mscs = %url, %reason, "registration failed; retrying");
                    }
                    registered = false;
                    backoff.next_delay()
                }
                Attempt::Refused { status, message } => {
                    return Err(RegistrationClientError::Refused {
                        url: url.clone(),
                        status,
                        message,
                    })
                }
            };
            if !wait(pause, &shutdown).await {
                return Ok(());
            }
        }
    })
}
