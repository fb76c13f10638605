//! A multicast receiver: joins the group (ASM or SSM), timestamps every datagram in the
//! kernel and feeds the statistics.
//!
//! Receive timestamps come from `SO_TIMESTAMPNS` control messages: the kernel stamps the
//! packet when the network stack receives it, so the receiver's scheduling delay does not
//! inflate the one-way delay. When a datagram arrives without the control message the
//! receiver falls back to the user-space clock and says so in its report.
//!
//! Datagrams are taken with `recvmmsg`, up to 16 per system call, each
//! with its own kernel timestamp; the per-datagram path does no heap work. While a stream
//! is fast the receiver pauses briefly between batches so that one wakeup collects several
//! datagrams: the kernel stamps survive the wait, so no metric moves (the benchmark checks
//! the one-way delay with and without the pause), and the receiver's CPU per probe drops
//! by about a third at 10 kpps.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

// Part of the result document, whose types live in crates/api.
pub use measurelab_api::result::TimestampSource;

use crate::metrics::{ReceiverStats, StatsLimits};
use crate::sender::realtime_ns;
use crate::wire::Probe;

/// How often a blocked receive wakes up to check its stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Datagrams taken per `recvmmsg` call at most.
const RECEIVE_BATCH: usize = 16;
/// Receive space per datagram: the largest UDP payload, so nothing valid is truncated.
const RECEIVE_SLOT_BYTES: usize = 65_536;

/// Pause between batches while the stream is fast (see [`Receiver::run_continuing`]): the
/// next wakeup then collects several datagrams instead of one. Harmless to the metrics
/// because the kernel stamped each datagram on arrival; the socket buffer (8 MiB) holds far
/// more than a pause's worth at any rate the path carries.
const RECEIVE_COALESCE: Duration = Duration::from_micros(500);

/// What one `recvmmsg` slot held.
#[derive(Debug, Clone, Copy, Default)]
struct Datagram {
    length: usize,
    truncated: bool,
    kernel_ns: Option<u64>,
}

/// Headers for a batch, each with room for one `SO_TIMESTAMPNS` control message.
fn receive_headers() -> MultiHeaders<SockaddrIn> {
    MultiHeaders::preallocate(RECEIVE_BATCH, Some(nix::cmsg_space!(TimeSpec)))
}

/// Errors of the receiver.
#[derive(Debug, Error)]
pub enum ReceiverError {
    /// A configuration field is invalid.
    #[error("invalid receiver config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Creating, binding or joining failed.
    #[error("socket setup failed ({step}): {source}")]
    Socket {
        /// Which step failed.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `recvmsg` failed with something other than a timeout.
    #[error("recvmsg failed: {0}")]
    Receive(#[source] Errno),
}

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Group to join.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Local interface address for the join; `0.0.0.0` lets the kernel choose by route.
    pub interface_addr: Ipv4Addr,
    /// SSM: the only source to accept (IP_ADD_SOURCE_MEMBERSHIP); `None` joins ASM.
    pub ssm_source: Option<Ipv4Addr>,
    /// Accept only this session; `None` locks onto the first session seen.
    pub session_id: Option<u64>,
    /// Memory limits of the statistics.
    pub limits: StatsLimits,
}

impl ReceiverConfig {
    /// An ASM config for `group:port` with defaults for the rest.
    pub fn new(group: Ipv4Addr, port: u16) -> Self {
        Self {
            group,
            port,
            interface_addr: Ipv4Addr::UNSPECIFIED,
            ssm_source: None,
            session_id: None,
            limits: StatsLimits::default(),
        }
    }

    /// Checks the fields; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ReceiverError> {
        let invalid = |field, reason: String| Err(ReceiverError::InvalidConfig { field, reason });
        if !self.group.is_multicast() {
            return invalid(
                "group",
                format!("{} is not an IPv4 multicast address", self.group),
            );
        }
        if self.port == 0 {
            return invalid("port", "must be 1..=65535".into());
        }
        if let Some(source) = self.ssm_source {
            if self.group.octets()[0] != 232 {
                return invalid(
                    "group",
                    format!("SSM needs a group in 232.0.0.0/8, got {}", self.group),
                );
            }
            if source.is_unspecified() || source.is_multicast() {
                return invalid("ssm_source", format!("{source} is not a unicast source"));
            }
        }
        Ok(())
    }
}

/// What a receiver collected.
#[derive(Debug, Clone)]
pub struct ReceiveOutcome {
    /// The statistics, ready for [`ReceiverStats::finish`].
    pub stats: ReceiverStats,
    /// The session that was measured, if any probe arrived.
    pub session_id: Option<u64>,
    /// Valid probes of other sessions, dropped.
    pub foreign_session_packets: u64,
    /// Datagrams on the port that were not valid probes.
    pub malformed_packets: u64,
    /// Where the receive timestamps came from.
    pub timestamp_source: TimestampSource,
    /// Datagrams stamped by the kernel (SO_TIMESTAMPNS).
    pub kernel_stamped_packets: u64,
    /// Datagrams stamped with the user-space clock because no kernel stamp came.
    pub user_stamped_packets: u64,
}

/// A joined, bound receive socket.
pub struct Receiver {
    socket: Socket,
    config: ReceiverConfig,
}

impl Receiver {
    /// Binds and joins. When this returns, the membership report has been sent and
    /// datagrams are queued for [`Receiver::run`].
    pub fn open(config: ReceiverConfig) -> Result<Self, ReceiverError> {
        config.validate()?;
        let step = |step| move |source| ReceiverError::Socket { step, source };
        let socket =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(step("socket"))?;
        socket
            .set_reuse_address(true)
            .map_err(step("SO_REUSEADDR"))?;
        // Binding the group address (not 0.0.0.0) keeps datagrams for other groups on the
        // same port out of this socket.
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(
                config.group,
                config.port,
            )))
            .map_err(step("bind group:port"))?;
        // Linux delivers every joined group to every socket on the port unless told not to.
        socket
            .set_multicast_all_v4(false)
            .map_err(step("IP_MULTICAST_ALL"))?;
        match config.ssm_source {
            Some(source) => socket
                .join_ssm_v4(&source, &config.group, &config.interface_addr)
                .map_err(step("IP_ADD_SOURCE_MEMBERSHIP"))?,
            None => socket
                .join_multicast_v4(&config.group, &config.interface_addr)
                .map_err(step("IP_ADD_MEMBERSHIP"))?,
        }
        // Bursts at high rates must queue, not drop, while the thread is descheduled.
        let _ = socket.set_recv_buffer_size(8 << 20);
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
            .map_err(|errno| step("SO_TIMESTAMPNS")(errno.into()))?;
        socket
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(step("SO_RCVTIMEO"))?;
        Ok(Self { socket, config })
    }

    /// Receives until `stop` is set or `deadline` passes, whichever is first.
    pub fn run(
        &self,
        stop: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<ReceiveOutcome, ReceiverError> {
        self.run_continuing(None, stop, deadline)
    }

    /// Like [`Receiver::run`], but continues the statistics of an earlier slice, so a
    /// caller can look at progress between slices without losing anything.
    pub fn run_continuing(
        &self,
        previous: Option<ReceiveOutcome>,
        stop: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<ReceiveOutcome, ReceiverError> {
        let (
            mut stats,
            mut session_id,
            mut foreign_session_packets,
            mut malformed_packets,
            mut kernel_stamped,
            mut user_stamped,
        ) = match previous {
            Some(p) => (
                p.stats,
                p.session_id,
                p.foreign_session_packets,
                p.malformed_packets,
                p.kernel_stamped_packets,
                p.user_stamped_packets,
            ),
            None => (
                ReceiverStats::new(self.config.limits),
                self.config.session_id,
                0,
                0,
                0,
                0,
            ),
        };
        // One maximal datagram per slot, so a large probe is never truncated. The pages
        // behind unused slot tails are never touched, so the memory actually used stays
        // about a page per slot.
        let mut buffer = vec![0u8; RECEIVE_BATCH * RECEIVE_SLOT_BYTES];
        let mut headers = receive_headers();
        let mut batch = [Datagram::default(); RECEIVE_BATCH];
        let fd = self.socket.as_raw_fd();

        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
                break;
            }
            let (received, waited) = {
                let mut slots = buffer.chunks_exact_mut(RECEIVE_SLOT_BYTES);
                let mut iovs: [[IoSliceMut<'_>; 1]; RECEIVE_BATCH] =
                    std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
                // MSG_WAITFORONE: block (up to SO_RCVTIMEO) for the first datagram only, then
                // take whatever else is queued; one system call per wakeup, not per datagram.
                let messages = match recvmmsg(
                    fd,
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(messages) => messages,
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(errno) => return Err(ReceiverError::Receive(errno)),
                };
                let waited = now.elapsed();
                let mut received = 0;
                for (datagram, message) in batch.iter_mut().zip(messages) {
                    let mut kernel_ns = None;
                    if let Ok(cmsgs) = message.cmsgs() {
                        for cmsg in cmsgs {
                            if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                                kernel_ns =
                                    Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                            }
                        }
                    }
                    *datagram = Datagram {
                        length: message.bytes,
                        truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
                        kernel_ns,
                    };
                    received += 1;
                }
                (received, waited)
            };
            let mut any_unstamped = false;
            for (index, datagram) in batch[..received].iter().enumerate() {
                let receive_ns = match datagram.kernel_ns {
                    Some(ns) => {
                        kernel_stamped += 1;
                        ns
                    }
                    None => {
                        user_stamped += 1;
                        any_unstamped = true;
                        realtime_ns()
                    }
                };
                if datagram.truncated {
                    malformed_packets += 1;
                    continue;
                }
                let start = index * RECEIVE_SLOT_BYTES;
                let probe = match Probe::decode(&buffer[start..start + datagram.length]) {
                    Ok(probe) => probe,
                    Err(_) => {
                        malformed_packets += 1;
                        continue;
                    }
                };
                match session_id {
                    Some(id) if id != probe.session_id => {
                        foreign_session_packets += 1;
                        continue;
                    }
                    Some(_) => {}
                    None => session_id = Some(probe.session_id),
                }
                stats.record(probe.sequence, probe.send_time_ns, receive_ns);
            }
            if any_unstamped {
                // The kernel shrinks a header's msg_controllen to what it wrote, and the
                // reused headers keep that; fresh ones give every slot full control space
                // again, so one unstamped datagram does not cost the stamps of later ones.
                headers = receive_headers();
            }
            // A fast stream: the batch held more than one datagram, or the first one came
            // sooner than a pause would have lasted. Then pausing costs no extra wakeup. A
            // slow stream (say 1 kpps) keeps one blocking wakeup per datagram, the cheapest
            // there is for it. A full batch means more is queued: read on at once.
            let fast_stream = received >= 2 || waited < RECEIVE_COALESCE;
            if fast_stream && received < RECEIVE_BATCH {
                std::thread::sleep(RECEIVE_COALESCE);
            }
        }

        let timestamp_source = match (kernel_stamped, user_stamped) {
            (0, 0) => TimestampSource::None,
            (_, 0) => TimestampSource::Kernel,
            _ => TimestampSource::UserSpaceFallback,
        };
        Ok(ReceiveOutcome {
            stats,
            session_id,
            foreign_session_packets,
            malformed_packets,
            timestamp_source,
            kernel_stamped_packets: kernel_stamped,
            user_stamped_packets: user_stamped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssm_requires_a_232_group_and_a_unicast_source() {
        let mut config = ReceiverConfig::new(Ipv4Addr::new(239, 1, 1, 1), 5000);
        config.ssm_source = Some(Ipv4Addr::new(10, 200, 0, 1));
        assert!(matches!(
            config.validate(),
            Err(ReceiverError::InvalidConfig { field: "group", .. })
        ));
        config.group = Ipv4Addr::new(232, 1, 1, 1);
        config.validate().unwrap();
        config.ssm_source = Some(Ipv4Addr::UNSPECIFIED);
        assert!(matches!(
            config.validate(),
            Err(ReceiverError::InvalidConfig {
                field: "ssm_source",
                ..
            })
        ));
    }

    #[test]
    fn rejects_unicast_group_and_port_zero() {
        let config = ReceiverConfig::new(Ipv4Addr::new(10, 0, 0, 1), 5000);
        assert!(matches!(
            config.validate(),
            Err(ReceiverError::InvalidConfig { field: "group", .. })
        ));
        let config = ReceiverConfig::new(Ipv4Addr::new(239, 0, 0, 1), 0);
        assert!(matches!(
            config.validate(),
            Err(ReceiverError::InvalidConfig { field: "port", .. })
        ));
    }
}
