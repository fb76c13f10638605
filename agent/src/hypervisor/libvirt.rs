//! The libvirt backend: one code path for `xen:///system`, `qemu:///system`
//! and `test:///default`.
//!
//! Every method blocks on libvirt's RPC; async callers must wrap calls in
//! `tokio::task::spawn_blocking`. The connection is kept open for the life of
//! the object, because the test driver's state lives in the connection (a new
//! connection to `test:///default` starts from the default state again).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use super::api::Hypervisor;
use super::disks::{DiskConfig, GuestDisks};
use super::domain_xml::{
    disk_sources, domain_xml_for_owner, first_tag_attribute, interface_with_bandwidth,
    owner_metadata_unprefixed, DomainFlavor,
};
use super::spec::{GuestSpec, NicAttach, RateLimit};
use super::types::{
    BackendKind, ChannelSocket, DefineOutcome, ErrorClass, GuestInfo, GuestState, HypervisorError,
    NicAdoption, ResizeOutcome, OWNER_XML_NAMESPACE,
};

/// Guests as libvirt domains.
pub struct LibvirtHypervisor {
    uri: String,
    flavor: DomainFlavor,
    /// libvirt connections are thread-safe, but reconnecting must not race.
    conn: Mutex<Option<Connect>>,
    /// Scope of the ownership tag; see [`LibvirtHypervisor::with_owner`].
    owner: Option<String>,
    /// Where appliance files may lie and per-VM disks live; see
    /// [`LibvirtHypervisor::with_disks`].
    disks: Option<DiskConfig>,
    /// MTU of the platform NIC of the guests it defines; see
    /// [`LibvirtHypervisor::with_guest_mtu`].
    guest_mtu: u32,
}

/// Whether tc police works on this host, probed once per process.
static TC_POLICE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

impl LibvirtHypervisor {
    /// QEMU applies `<outbound>` with a tc police filter on the tap; on a
    /// kernel without act_police the domain would be defined but fail at
    /// every start. Refuse the limit up front instead, naming the field.
    /// Xen (libxl's vif rate) and the test driver need no tc.
    fn check_outbound_support(&self, limit: Option<&RateLimit>) -> Result<(), HypervisorError> {
        if limit.is_none() || !matches!(self.flavor, DomainFlavor::Qemu(_)) {
            return Ok(());
        }
        match TC_POLICE.get_or_init(super::namespace::probe_tc_police) {
            Ok(()) => Ok(()),
            Err(reason) => Err(HypervisorError::InvalidSpec {
                field: "egress_limit",
                reason: format!(
                    "libvirt limits a QEMU guest's outbound traffic with tc police, which this host cannot do ({reason}); use the namespace backend"
                ),
            }),
        }
    }
}

/// What our `<metadata>` element says.
struct OwnerTag {
    vm_id: Uuid,
    platform_id: Option<Uuid>,
    spec_hash: String,
    /// [`GuestSpec::fixed_hash`]; absent in tags of older agents.
    fixed_hash: Option<String>,
    owner: Option<String>,
}

impl LibvirtHypervisor {
    /// Opens `uri` with the flavor it implies (`DomainFlavor::for_uri`).
    pub fn connect(uri: &str) -> Result<Self, HypervisorError> {
        let flavor = DomainFlavor::for_uri(uri).ok_or(HypervisorError::InvalidSpec {
            field: "libvirt_uri",
            reason: format!("{uri:?} is not a xen:, qemu: or test: URI"),
        })?;
        Self::connect_with_flavor(uri, flavor)
    }

    /// Opens `uri` and generates XML of `flavor` (e.g. KVM instead of TCG).
    pub fn connect_with_flavor(uri: &str, flavor: DomainFlavor) -> Result<Self, HypervisorError> {
        // libvirt's default handler prints every error to stderr, including
        // the expected "Domain not found" of idempotent calls. Errors reach
        // callers as values; the handler is process-wide, which is fine for
        // the agent (the only libvirt user in its process).
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| libvirt_error("connect", e))?;
        Ok(LibvirtHypervisor {
            uri: uri.to_string(),
            flavor,
            conn: Mutex::new(Some(conn)),
            owner: None,
            disks: None,
            guest_mtu: crate::underlay::GUEST_MTU,
        })
    }

    /// Scopes ownership to `owner` (the node id): domains are tagged with it,
    /// and only domains with this exact tag are listed or touched. Several
    /// node agents sharing one libvirtd (the lab runs all nodes on one host)
    /// then never see - or garbage-collect - each other's guests. Without a
    /// scope, only unscoped domains are ours.
    pub fn with_owner(mut self, owner: &str) -> Result<Self, HypervisorError> {
        if owner.is_empty()
            || owner.len() > 64
            || !owner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(HypervisorError::InvalidSpec {
                field: "owner",
                reason: format!("{owner:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."),
            });
        }
        self.owner = Some(owner.to_string());
        Ok(self)
    }

    /// The ownership scope of the node agent whose state lives in
    /// `state_dir`: `agent-` and 16 hex digits of the canonical path's
    /// SHA-256. Stable across restarts of that agent, distinct for agents
    /// with different state dirs on one host (every lab node, every test).
    /// Domains an unscoped agent created are not seen under it.
    pub fn owner_for_state_dir(state_dir: &Path) -> String {
        use sha2::{Digest, Sha256};
        let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("agent-{hex}")
    }

    /// Confines appliance files (kernel, initrd, disk image) to
    /// `config.appliance_dir` and gives every guest its own disk files under
    /// `config.guests_dir`: a copy-on-write overlay of the appliance disk
    /// (sized `disk_mib`) and a swap disk (`swap_mib`). Without it, a spec
    /// that asks for any disk is refused.
    pub fn with_disks(mut self, config: DiskConfig) -> Self {
        self.disks = Some(config);
        self
    }

    /// Gives the platform NIC of every guest it defines this MTU (default
    /// 1500). Guests already defined keep theirs until their spec changes.
    pub fn with_guest_mtu(mut self, mtu: u32) -> Self {
        self.guest_mtu = mtu;
        self
    }

    /// Deletes the guest's overlay and swap disk (its data goes with it).
    fn remove_disks(&self, id: Uuid) -> Result<(), HypervisorError> {
        match &self.disks {
            Some(config) => config.remove(id),
            None => Ok(()),
        }
    }

    /// Checks that the appliance files lie in the appliance directory;
    /// returns the canonical appliance disk. Refuses any disk when no disk
    /// directories are configured.
    fn check_appliance(&self, spec: &GuestSpec) -> Result<Option<PathBuf>, HypervisorError> {
        let Some(config) = &self.disks else {
            let field = if spec.boot.disk.is_some() {
                "boot.disk"
            } else if spec.disk_mib > 0 {
                "disk_mib"
            } else if spec.swap_mib > 0 {
                "swap_mib"
            } else {
                return Ok(None);
            };
            return Err(HypervisorError::InvalidSpec {
                field,
                reason: "this libvirt backend has no directory for per-VM disks".into(),
            });
        };
        config.check_appliance(spec)
    }

    /// Creates or adopts the guest's overlay of `base` and its swap disk.
    fn prepare_disks(
        &self,
        spec: &GuestSpec,
        base: Option<&Path>,
    ) -> Result<GuestDisks, HypervisorError> {
        match &self.disks {
            Some(config) => config.ensure(spec, base),
            None => Ok(GuestDisks::default()),
        }
    }

    /// Brings a running guest to `spec` without a restart when the spec
    /// differs from what it runs only in sizes that fit in the maxima it
    /// booted with: sets vCPUs and memory live, then tags the running
    /// definition with the new spec so it no longer counts as stale.
    /// `Ok(false)`: not possible live (another field changed, a maximum
    /// grew, or the driver or guest refused); the guest keeps its old
    /// tag and reports a pending restart.
    fn resize_live(&self, dom: &Domain, spec: &GuestSpec) -> Result<bool, HypervisorError> {
        let live = sys::VIR_DOMAIN_AFFECT_LIVE;
        let live_fixed = live_owner_tag(dom)?.and_then(|tag| tag.fixed_hash);
        if live_fixed.as_deref() != Some(spec.fixed_hash().as_str()) {
            return Ok(false);
        }
        let max_vcpus = dom
            .vcpus_flags(live | sys::VIR_DOMAIN_VCPU_MAXIMUM)
            .map_err(|e| libvirt_error("get max vcpus", e))?;
        let max_kib = dom
            .max_memory()
            .map_err(|e| libvirt_error("get max memory", e))?;
        if spec.vcpu_maximum() > max_vcpus || spec.memory_maximum_mib() * 1024 > max_kib {
            return Ok(false);
        }
        let vcpus = dom
            .vcpus_flags(live)
            .map_err(|e| libvirt_error("get vcpus", e))?;
        if vcpus != spec.vcpus {
            if let Err(e) = dom.set_vcpus_flags(spec.vcpus, live) {
                return refused_live("set vcpus", e);
            }
        }
        let info = dom.info().map_err(|e| libvirt_error("get info", e))?;
        let kib = spec.memory_mib * 1024;
        if info.memory != kib {
            if let Err(e) = dom.set_memory_flags(kib, live) {
                return refused_live("set memory", e);
            }
        }
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&owner_metadata_unprefixed(spec, self.owner.as_deref())),
            Some("measurelab"),
            Some(OWNER_XML_NAMESPACE),
            live,
        )
        .map_err(|e| libvirt_error("set live metadata", e))?;
        Ok(true)
    }

    /// The ownership scope, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Our tag on `dom`: present and in our scope.
    fn our_tag(&self, dom: &Domain) -> Result<Option<OwnerTag>, HypervisorError> {
        Ok(owner_tag(dom)?.filter(|tag| tag.owner == self.owner))
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The XML flavor in use.
    pub fn flavor(&self) -> DomainFlavor {
        self.flavor
    }

    /// A handle on the same connection (libvirt reference-counts it). For
    /// capability probes and tests that must share the test driver's
    /// per-connection state; anything done through it bypasses the
    /// ownership checks.
    pub fn connection(&self) -> Result<Connect, HypervisorError> {
        self.with_conn(|conn| Ok(conn.clone()))
    }

    /// Runs `f` on a live connection, reopening it once if libvirtd went
    /// away (daemon restart). The test driver is never reopened: that would
    /// silently reset its state.
    fn with_conn<T>(
        &self,
        f: impl Fn(&Connect) -> Result<T, HypervisorError>,
    ) -> Result<T, HypervisorError> {
        let mut guard = self.conn.lock().map_err(|_| HypervisorError::Libvirt {
            operation: "lock connection",
            code: "Poisoned".into(),
            message: "a previous libvirt call panicked".into(),
            class: ErrorClass::Permanent,
        })?;
        let alive = guard
            .as_ref()
            .map(|c| c.is_alive().unwrap_or(false))
            .unwrap_or(false);
        if !alive && self.flavor != DomainFlavor::Test {
            // Dropping the old handle closes it.
            guard.take();
            *guard = Some(Connect::open(Some(&self.uri)).map_err(|e| libvirt_error("connect", e))?);
        }
        match guard.as_ref() {
            Some(conn) => f(conn),
            None => Err(HypervisorError::Libvirt {
                operation: "connect",
                code: "NoConnect".into(),
                message: format!("no connection to {}", self.uri),
                class: ErrorClass::Transient,
            }),
        }
    }

    /// Our domain with this UUID. `Ok(None)` if absent; `NotOwned` if a
    /// domain with this UUID exists without our tag.
    fn lookup_owned(&self, conn: &Connect, id: Uuid) -> Result<Option<Domain>, HypervisorError> {
        let dom = match conn.lookup_domain_by_uuid_string(&id.to_string()) {
            Ok(d) => d,
            Err(e) if is_code(&e, ErrorNumber::NoDomain) => return Ok(None),
            Err(e) => return Err(libvirt_error("lookup domain", e)),
        };
        match self.our_tag(&dom)? {
            Some(tag) if tag.vm_id == id => Ok(Some(dom)),
            _ => Err(HypervisorError::NotOwned {
                what: format!("libvirt domain {}", dom.name().unwrap_or_default()),
            }),
        }
    }

    fn require_owned(&self, conn: &Connect, id: Uuid) -> Result<Domain, HypervisorError> {
        self.lookup_owned(conn, id)?
            .ok_or(HypervisorError::NotFound { id })
    }
}

/// Reads our `<metadata>` element from the persistent definition (what the
/// next boot runs), falling back to the live one for transient domains.
/// `None` if the domain has none.
fn owner_tag(dom: &Domain) -> Result<Option<OwnerTag>, HypervisorError> {
    match read_owner_tag(dom, sys::VIR_DOMAIN_AFFECT_CONFIG) {
        Err(HypervisorError::Libvirt { code, .. }) if code.contains("OperationInvalid") => {
            read_owner_tag(dom, 0)
        }
        other => other,
    }
}

/// Our tag in the running definition; differs from [`owner_tag`] after a
/// redefine of a running guest, until it restarts.
fn live_owner_tag(dom: &Domain) -> Result<Option<OwnerTag>, HypervisorError> {
    read_owner_tag(dom, sys::VIR_DOMAIN_AFFECT_LIVE)
}

fn read_owner_tag(dom: &Domain, flags: u32) -> Result<Option<OwnerTag>, HypervisorError> {
    let xml = match dom.metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(OWNER_XML_NAMESPACE),
        flags,
    ) {
        Ok(xml) => xml,
        Err(e) if is_code(&e, ErrorNumber::NoDomainMetadata) => return Ok(None),
        // The domain vanished between listing and reading: not ours to report.
        Err(e) if is_code(&e, ErrorNumber::NoDomain) => return Ok(None),
        Err(e) => return Err(libvirt_error("get metadata", e)),
    };
    let vm_id = first_tag_attribute(&xml, "vm-id").and_then(|v| Uuid::parse_str(&v).ok());
    let Some(vm_id) = vm_id else {
        // Our namespace but unreadable: treat as not ours rather than guess.
        return Ok(None);
    };
    Ok(Some(OwnerTag {
        vm_id,
        platform_id: first_tag_attribute(&xml, "platform-id")
            .and_then(|v| Uuid::parse_str(&v).ok()),
        spec_hash: first_tag_attribute(&xml, "spec-hash").unwrap_or_default(),
        fixed_hash: first_tag_attribute(&xml, "fixed-hash"),
        owner: first_tag_attribute(&xml, "owner"),
    }))
}

fn guest_info(dom: &Domain, tag: OwnerTag) -> Result<GuestInfo, HypervisorError> {
    let info = dom.info().map_err(|e| libvirt_error("get info", e))?;
    let state = match info.state {
        virt::enumutil::Enum::Known(DomainState::Running)
        | virt::enumutil::Enum::Known(DomainState::Blocked) => GuestState::Running,
        virt::enumutil::Enum::Known(DomainState::Paused)
        | virt::enumutil::Enum::Known(DomainState::PMSuspended) => GuestState::Paused,
        virt::enumutil::Enum::Known(DomainState::Shutoff) => GuestState::Stopped,
        virt::enumutil::Enum::Known(DomainState::Crashed) => GuestState::Crashed,
        _ => GuestState::Other,
    };
    let restart_pending = match state {
        GuestState::Running | GuestState::Paused => {
            live_owner_tag(dom)?.is_some_and(|live| live.spec_hash != tag.spec_hash)
        }
        _ => false,
    };
    Ok(GuestInfo {
        restart_pending,
        id: tag.vm_id,
        name: dom.name().map_err(|e| libvirt_error("get name", e))?,
        platform_id: tag.platform_id,
        spec_hash: tag.spec_hash,
        state,
        vcpus: info.nr_virt_cpu,
        memory_mib: info.memory / 1024,
    })
}

fn is_active(dom: &Domain) -> Result<bool, HypervisorError> {
    dom.is_active().map_err(|e| libvirt_error("is active", e))
}

fn is_paused(dom: &Domain) -> Result<bool, HypervisorError> {
    let (state, _) = dom.state().map_err(|e| libvirt_error("get state", e))?;
    Ok(matches!(
        state,
        virt::enumutil::Enum::Known(DomainState::Paused)
    ))
}

/// A live resize the driver or guest cannot do (no hotplug, no balloon)
/// waits for the next boot; anything else is an error.
fn refused_live(operation: &'static str, err: VirtError) -> Result<bool, HypervisorError> {
    let refused = [
        ErrorNumber::OperationInvalid,
        ErrorNumber::OperationFailed,
        ErrorNumber::NoSupport,
        ErrorNumber::OperationUnsupported,
        ErrorNumber::ArgumentUnsupported,
        ErrorNumber::ConfigUnsupported,
    ];
    if refused.iter().any(|code| is_code(&err, *code)) {
        tracing::info!(operation, error = %err.message(), "live resize refused; the change waits for a restart");
        return Ok(false);
    }
    Err(libvirt_error(operation, err))
}

fn is_code(err: &VirtError, code: ErrorNumber) -> bool {
    err.code() == virt::enumutil::Enum::Known(code)
}

/// Classifies by libvirt's error number: lost connections and busy daemons
/// are worth a retry, bad XML and unsupported operations are not.
fn libvirt_error(operation: &'static str, err: VirtError) -> HypervisorError {
    use ErrorNumber as N;
    let class = match err.code() {
        virt::enumutil::Enum::Known(
            N::XmlError
            | N::XmlDetail
            | N::InvalidArg
            | N::ConfigUnsupported
            | N::NoSupport
            | N::OperationUnsupported
            | N::ArgumentUnsupported
            | N::AuthFailed
            | N::OperationDenied,
        ) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    };
    HypervisorError::Libvirt {
        operation,
        code: format!("{:?}", err.code()),
        message: err.message().to_string(),
        class,
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn kind(&self) -> BackendKind {
        self.flavor.backend_kind()
    }

    fn define(&self, spec: &GuestSpec) -> Result<DefineOutcome, HypervisorError> {
        spec.validate()?;
        self.check_outbound_support(spec.egress_limit.as_ref())?;
        // Before anything is looked up or created: a refused appliance
        // leaves no trace on the host.
        let base = self.check_appliance(spec)?;
        let hash = spec.spec_hash();
        self.with_conn(|conn| {
            // A foreign domain with our name would be overwritten by define
            // (libvirt matches on name too): refuse instead.
            match conn.lookup_domain_by_name(&spec.name) {
                Ok(dom) => {
                    let owned = self.our_tag(&dom)?.is_some_and(|t| t.vm_id == spec.id);
                    if !owned {
                        return Err(HypervisorError::NotOwned {
                            what: format!("libvirt domain {}", spec.name),
                        });
                    }
                }
                Err(e) if is_code(&e, ErrorNumber::NoDomain) => {}
                Err(e) => return Err(libvirt_error("lookup domain", e)),
            }
            let existing = self.lookup_owned(conn, spec.id)?;
            // Adopts the disks a previous agent made: their data survives.
            let disks = self.prepare_disks(spec, base.as_deref())?;
            let mut outcome = match &existing {
                None => DefineOutcome::Created,
                Some(dom) => {
                    let tag = self.our_tag(dom)?;
                    // A definition from before per-VM disks (or edited by
                    // hand) attaches other files: redefine it.
                    let config = dom
                        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                        .map_err(|e| libvirt_error("get domain XML", e))?;
                    let wanted: Vec<_> = disks.data.iter().chain(&disks.swap).cloned().collect();
                    if tag.is_some_and(|t| t.spec_hash == hash) && disk_sources(&config) == wanted {
                        return Ok(DefineOutcome::Unchanged);
                    }
                    DefineOutcome::Updated {
                        restart_required: is_active(dom)?,
                    }
                }
            };
            let xml = domain_xml_for_owner(
                spec,
                self.flavor,
                self.owner.as_deref(),
                &disks,
                self.guest_mtu,
            );
            conn.define_domain_xml(&xml)
                .map_err(|e| libvirt_error("define", e))?;
            if let (
                DefineOutcome::Updated {
                    restart_required: true,
                },
                Some(dom),
            ) = (outcome, &existing)
            {
                if self.resize_live(dom, spec)? {
                    outcome = DefineOutcome::Updated {
                        restart_required: false,
                    };
                }
            }
            Ok(outcome)
        })
    }

    fn start(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            if is_active(&dom)? {
                return Ok(());
            }
            match dom.create() {
                Ok(_) => Ok(()),
                // Raced with another start: it is running, which is what we want.
                Err(e) if is_code(&e, ErrorNumber::OperationInvalid) && is_active(&dom)? => Ok(()),
                Err(e) => Err(libvirt_error("start", e)),
            }
        })
    }

    fn pause(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            if !is_active(&dom)? {
                return Err(HypervisorError::InvalidState {
                    id,
                    operation: "pause",
                    state: GuestState::Stopped,
                });
            }
            if is_paused(&dom)? {
                return Ok(());
            }
            dom.suspend().map_err(|e| libvirt_error("suspend", e))
        })
    }

    fn resume(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            if !is_active(&dom)? {
                return Err(HypervisorError::InvalidState {
                    id,
                    operation: "resume",
                    state: GuestState::Stopped,
                });
            }
            if !is_paused(&dom)? {
                return Ok(());
            }
            dom.resume().map_err(|e| libvirt_error("resume", e))
        })
    }

    fn stop(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            if !is_active(&dom)? {
                return Ok(());
            }
            match dom.destroy() {
                Ok(()) => Ok(()),
                Err(e) if is_code(&e, ErrorNumber::OperationInvalid) && !is_active(&dom)? => Ok(()),
                Err(e) => Err(libvirt_error("destroy", e)),
            }
        })
    }

    fn undefine(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.with_conn(|conn| {
            let Some(dom) = self.lookup_owned(conn, id)? else {
                // A define that failed after making the disks leaves them.
                return self.remove_disks(id);
            };
            if is_active(&dom)? {
                dom.destroy().map_err(|e| libvirt_error("destroy", e))?;
            }
            let name = dom.name().unwrap_or_default();
            match dom.undefine() {
                Ok(()) => {}
                Err(e) if is_code(&e, ErrorNumber::NoDomain) => {}
                Err(e) => return Err(libvirt_error("undefine", e)),
            }
            // The system QEMU driver keeps each domain's log after the
            // domain is gone; our names carry the VM id and are never reused.
            if matches!(self.flavor, DomainFlavor::Qemu(_))
                && self.uri.ends_with("/system")
                && !name.is_empty()
            {
                let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{name}.log"));
            }
            self.remove_disks(id)
        })
    }

    fn info(&self, id: Uuid) -> Result<Option<GuestInfo>, HypervisorError> {
        self.with_conn(|conn| {
            let Some(dom) = self.lookup_owned(conn, id)? else {
                return Ok(None);
            };
            match self.our_tag(&dom)? {
                Some(tag) => guest_info(&dom, tag).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list_owned(&self) -> Result<Vec<GuestInfo>, HypervisorError> {
        self.with_conn(|conn| {
            let domains = conn
                .list_all_domains(0)
                .map_err(|e| libvirt_error("list domains", e))?;
            let mut guests = Vec::new();
            for dom in domains {
                if let Some(tag) = self.our_tag(&dom)? {
                    match guest_info(&dom, tag) {
                        Ok(info) => guests.push(info),
                        // Undefined between list and info: just gone.
                        Err(HypervisorError::Libvirt { code, .. }) if code.contains("NoDomain") => {
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            guests.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(guests)
        })
    }

    /// libvirt binds the socket for the guest's second serial port.
    fn channel_socket(&self) -> ChannelSocket {
        ChannelSocket::HypervisorListens
    }

    /// QEMU and Xen guests have a real tap, which libvirtd creates in its
    /// own namespace; the test driver creates none.
    fn adopt_nic(&self, spec: &GuestSpec) -> Result<NicAdoption, HypervisorError> {
        let tap = spec
            .nic
            .as_ref()
            .filter(|nic| nic.attach == NicAttach::TapOnly);
        match (self.kind(), tap) {
            (BackendKind::Qemu | BackendKind::Xen, Some(nic)) => {
                super::tap::adopt_tap(&nic.port_name, &spec.name)
            }
            _ => Ok(NicAdoption::NotNeeded),
        }
    }

    fn set_vcpus(&self, id: Uuid, vcpus: u32) -> Result<ResizeOutcome, HypervisorError> {
        if !(1..=64).contains(&vcpus) {
            return Err(HypervisorError::InvalidSpec {
                field: "vcpus",
                reason: format!("must be 1 to 64, got {vcpus}"),
            });
        }
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            let config = sys::VIR_DOMAIN_AFFECT_CONFIG;
            let max = dom
                .vcpus_flags(config | sys::VIR_DOMAIN_VCPU_MAXIMUM)
                .map_err(|e| libvirt_error("get max vcpus", e))?;
            // Persist first: raise the maximum when needed, then the count.
            if vcpus > max {
                dom.set_vcpus_flags(vcpus, config | sys::VIR_DOMAIN_VCPU_MAXIMUM)
                    .map_err(|e| libvirt_error("set max vcpus", e))?;
            }
            dom.set_vcpus_flags(vcpus, config)
                .map_err(|e| libvirt_error("set vcpus", e))?;
            if !is_active(&dom)? {
                return Ok(ResizeOutcome::Applied);
            }
            if vcpus > max {
                return Ok(ResizeOutcome::RestartRequired);
            }
            match dom.set_vcpus_flags(vcpus, sys::VIR_DOMAIN_AFFECT_LIVE) {
                Ok(()) => Ok(ResizeOutcome::Applied),
                // Hot(un)plug not supported by this guest/driver: next boot.
                Err(e)
                    if libvirt_error("set vcpus", e.clone()).class() == ErrorClass::Permanent =>
                {
                    Ok(ResizeOutcome::RestartRequired)
                }
                Err(e)
                    if is_code(&e, ErrorNumber::OperationInvalid)
                        || is_code(&e, ErrorNumber::OperationFailed) =>
                {
                    Ok(ResizeOutcome::RestartRequired)
                }
                Err(e) => Err(libvirt_error("set vcpus", e)),
            }
        })
    }

    fn set_memory(&self, id: Uuid, memory_mib: u64) -> Result<ResizeOutcome, HypervisorError> {
        if !(16..=1024 * 1024).contains(&memory_mib) {
            return Err(HypervisorError::InvalidSpec {
                field: "memory_mib",
                reason: format!("must be 16 to 1048576, got {memory_mib}"),
            });
        }
        let kib = memory_mib * 1024;
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            let config = sys::VIR_DOMAIN_AFFECT_CONFIG;
            let live_max_kib = dom
                .max_memory()
                .map_err(|e| libvirt_error("get max memory", e))?;
            let active = is_active(&dom)?;
            // Persisted maximum and current size follow the new value.
            dom.set_memory_flags(kib, config | sys::VIR_DOMAIN_MEM_MAXIMUM)
                .map_err(|e| libvirt_error("set max memory", e))?;
            dom.set_memory_flags(kib, config)
                .map_err(|e| libvirt_error("set memory", e))?;
            if !active {
                return Ok(ResizeOutcome::Applied);
            }
            // A running guest can only balloon within the maximum it booted with.
            if kib > live_max_kib {
                return Ok(ResizeOutcome::RestartRequired);
            }
            match dom.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE) {
                Ok(()) => Ok(ResizeOutcome::Applied),
                Err(e)
                    if is_code(&e, ErrorNumber::OperationInvalid)
                        || is_code(&e, ErrorNumber::OperationFailed)
                        || is_code(&e, ErrorNumber::NoSupport)
                        || is_code(&e, ErrorNumber::OperationUnsupported) =>
                {
                    Ok(ResizeOutcome::RestartRequired)
                }
                Err(e) => Err(libvirt_error("set memory", e)),
            }
        })
    }

    /// Rewrites the interface's `<bandwidth>` with virDomainUpdateDeviceFlags:
    /// the persistent definition always, the running guest too when the
    /// driver can (QEMU changes the tap's tc live). A driver that cannot
    /// change it live gives `RestartRequired`. The owner tag's spec hash is
    /// not touched: `define` with the new spec records it.
    fn set_egress_limit(
        &self,
        id: Uuid,
        limit: Option<RateLimit>,
    ) -> Result<ResizeOutcome, HypervisorError> {
        if let Some(limit) = &limit {
            limit.validate()?;
        }
        self.check_outbound_support(limit.as_ref())?;
        let no_interface = || HypervisorError::InvalidSpec {
            field: "egress_limit",
            reason: "the domain has no network interface to limit".into(),
        };
        self.with_conn(|conn| {
            let dom = self.require_owned(conn, id)?;
            let config = dom
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| libvirt_error("get domain XML", e))?;
            let iface =
                interface_with_bandwidth(&config, limit.as_ref()).ok_or_else(no_interface)?;
            dom.update_device_flags(&iface, sys::VIR_DOMAIN_AFFECT_CONFIG)
                .map_err(|e| libvirt_error("update interface bandwidth", e))?;
            if !is_active(&dom)? {
                return Ok(ResizeOutcome::Applied);
            }
            let live = dom
                .xml_desc(0)
                .map_err(|e| libvirt_error("get domain XML", e))?;
            let iface = interface_with_bandwidth(&live, limit.as_ref()).ok_or_else(no_interface)?;
            match dom.update_device_flags(&iface, sys::VIR_DOMAIN_AFFECT_LIVE) {
                Ok(()) => Ok(ResizeOutcome::Applied),
                Err(e)
                    if is_code(&e, ErrorNumber::OperationInvalid)
                        || is_code(&e, ErrorNumber::NoSupport)
                        || is_code(&e, ErrorNumber::OperationUnsupported) =>
                {
                    Ok(ResizeOutcome::RestartRequired)
                }
                Err(e) => Err(libvirt_error("update interface bandwidth", e)),
            }
        })
    }
}
