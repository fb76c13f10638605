//! What the guest agent needs, and where each value comes from: a flag, then
//! its environment variable (set by the namespace backend), then the kernel
//! command line (set by the libvirt domain XML for QEMU/Xen guests).

use std::path::PathBuf;
use std::time::Duration;

/// Default address of the local platform API inside the guest.
pub const DEFAULT_LOCAL_API: &str = "127.0.0.1:7079";

/// Serial channel used when nothing else is configured (the second serial
/// port). The node agent's QEMU domains name a virtio-serial port with
/// `measurelab.channel=` instead: the 16550 has no flow control.
pub const DEFAULT_SERIAL_CHANNEL: &str = "/dev/ttyS1";

/// Resolved configuration of the guest agent.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The VM id reported in `hello`.
    pub vm_id: String,
    /// Unix socket (namespace guests) or character device (virtio-serial
    /// port, Xen PV channel or serial tty); told apart by file type at each
    /// connect.
    pub channel: PathBuf,
    /// Where programs are written: `<programs_dir>/<deployment_id>/<program_name>`.
    pub programs_dir: PathBuf,
    /// Listen address of the local platform API.
    pub local_api: String,
    /// Interval of heartbeats (and of log shipping).
    pub heartbeat_interval: Duration,
}

/// A configuration value is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum GuestConfigError {
    /// Names the field (flag) and the reason.
    #[error("invalid guest agent configuration: {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl GuestConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), GuestConfigError> {
        let invalid = |field, reason: String| GuestConfigError::Invalid { field, reason };
        if self.vm_id.trim().is_empty() {
            return Err(invalid(
                "vm_id",
                "missing: pass --vm-id, set MEASURELAB_VM_ID or boot with measurelab.vm_id=".into(),
            ));
        }
        if !self.channel.is_absolute() {
            return Err(invalid(
                "channel",
                format!(
                    "{} must be an absolute path (unix socket or serial device)",
                    self.channel.display()
                ),
            ));
        }
        if !self.programs_dir.is_absolute() {
            return Err(invalid(
                "programs_dir",
                format!("{} must be an absolute path", self.programs_dir.display()),
            ));
        }
        if self.local_api.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "local_api",
                format!("{:?} must be IP:PORT, e.g. 127.0.0.1:7079", self.local_api),
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid(
                "heartbeat_interval",
                "must be at least 100 ms".into(),
            ));
        }
        Ok(())
    }
}

/// Value of `key=` on a kernel command line (`measurelab.vm_id=...`).
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|arg| {
        arg.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuestConfig {
        GuestConfig {
            vm_id: "6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8".into(),
            channel: "/dev/ttyS1".into(),
            programs_dir: "/var/lib/measurelab-guest/programs".into(),
            local_api: DEFAULT_LOCAL_API.into(),
            heartbeat_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn cmdline_values_are_found_exactly() {
        let line = "console=ttyS0 measurelab.vm_id=abc measurelab.vm_id_x=no measurelab.channel=/dev/ttyS1 quiet";
        assert_eq!(
            cmdline_value(line, "measurelab.vm_id").as_deref(),
            Some("abc")
        );
        assert_eq!(
            cmdline_value(line, "measurelab.channel").as_deref(),
            Some("/dev/ttyS1")
        );
        assert_eq!(cmdline_value(line, "measurelab.ip"), None);
    }

    #[test]
    fn each_bad_field_is_named() {
        config().validate().unwrap();
        type Mutation = Box<dyn Fn(&mut GuestConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("vm_id", Box::new(|c| c.vm_id = " ".into())),
            ("channel", Box::new(|c| c.channel = "ttyS1".into())),
            ("programs_dir", Box::new(|c| c.programs_dir = "p".into())),
            ("local_api", Box::new(|c| c.local_api = "localhost".into())),
            (
                "heartbeat_interval",
                Box::new(|c| c.heartbeat_interval = Duration::ZERO),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            match c.validate() {
                Err(GuestConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
                Ok(()) => panic!("{field} accepted"),
            }
        }
    }
}
