//! The gate's flow map seen from userspace, for the work that must not run
//! on the daemon's event loop: the census of flows by state and the walks of
//! revocations. A walk reads the map in batches (`BPF_MAP_LOOKUP_BATCH`, a
//! few thousand entries per call) rather than two syscalls per entry: a
//! million flows take a few hundred calls instead of two million.
//!
//! A batch walk goes bucket by bucket (kernel/bpf/hashtab.c,
//! `__htab_map_lookup_and_delete_batch`), so flows removed or added while
//! it runs do not restart it or make it see a key twice, as a
//! `get_next_key` walk can (it starts over from the first key when the key
//! it stands on was deleted).

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ackgate_common::abi::{FlowKey, MAP_PENDING, PendingFlow};
use ackgate_common::pod::key_absent;
use aya::maps::{HashMap, Map, MapData, MapError};

use crate::gate::GateError;

/// `BPF_MAP_LOOKUP_BATCH`, include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per batch call. A hash map's batch holds whole
/// buckets, so this must exceed the longest bucket (`ENOSPC` otherwise,
/// handled by asking for more).
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The pinned flow map, shared by the daemon's event loop (through the
/// gate), its census and its revocations. Clones share one map and one
/// count of removals.
#[derive(Clone)]
pub struct FlowTable {
    inner: Arc<Inner>,
}

struct Inner {
    /// For single-entry calls (aya's typed map takes `&mut` to write; each
    /// call is one syscall, so the lock is held for microseconds).
    flows: Mutex<HashMap<MapData, FlowKey, PendingFlow>>,
    /// The same map, for batch reads without the lock.
    fd: OwnedFd,
    removed: AtomicU64,
}

impl FlowTable {
    /// The flow map of the gate pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, GateError> {
        let map_err = |source| GateError::Map { map: MAP_PENDING, source };
        let data = MapData::from_pin(pin_dir.join(MAP_PENDING)).map_err(map_err)?;
        let fd =
            data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
                map_err(MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }))
            })?;
        let flows = HashMap::try_from(Map::LruHashMap(data)).map_err(map_err)?;
        Ok(Self { inner: Arc::new(Inner { flows: Mutex::new(flows), fd, removed: AtomicU64::new(0) }) })
    }

    /// Calls `visit` with every entry, in batches. Entries that come or go
    /// during the walk may or may not be seen; none is seen twice.
    pub fn scan(&self, mut visit: impl FnMut(&FlowKey, &PendingFlow)) -> Result<(), GateError> {
        let mut want = BATCH;
        let mut keys = vec![FlowKey::default(); want];
        let mut values = vec![PendingFlow::default(); want];
        // The hash map's batch token: the next bucket's index.
        let (mut token, mut next) = (0u32, 0u32);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { (&raw const token) as u64 },
                out_batch: (&raw mut next) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: want as u32,
                map_fd: self.inner.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` points at buffers of `want` keys and values of
            // the map's key and value types (a pinned map of another layout
            // fails to load with the gate), and at two u32 tokens; all
            // outlive the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    core::mem::size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let err = (rc < 0).then(std::io::Error::last_os_error);
            match err.as_ref().and_then(std::io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {
                    let got = (attr.count as usize).min(want);
                    keys[..got].iter().zip(&values[..got]).for_each(|(k, v)| visit(k, v));
                    if err.is_some() {
                        return Ok(());
                    }
                    token = next;
                    first = false;
                }
                // A bucket longer than the batch: ask for more at once.
                Some(libc::ENOSPC) if want < 1 << 20 => {
                    want *= 4;
                    keys.resize(want, FlowKey::default());
                    values.resize(want, PendingFlow::default());
                }
                _ => {
                    let io_error = err.unwrap_or_else(|| std::io::Error::other("no entries returned"));
                    let source =
                        MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error });
                    return Err(GateError::Map { map: MAP_PENDING, source });
                }
            }
        }
    }

    /// Every entry (for tools and tests; the daemon scans).
    pub fn all(&self) -> Result<Vec<(FlowKey, PendingFlow)>, GateError> {
        let mut out = Vec::new();
        self.scan(|k, v| out.push((*k, *v)))?;
        Ok(out)
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, FlowKey, PendingFlow>> {
        ackgate_common::host::lock(&self.inner.flows)
    }

    /// One entry, if the map holds it.
    pub fn get(&self, key: &FlowKey) -> Result<Option<PendingFlow>, GateError> {
        match self.flows().get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(GateError::Map { map: MAP_PENDING, source }),
        }
    }

    /// Rewrites an entry the map still holds; `Ok(false)` if it is gone.
    /// Never adds one: a flow the map evicted meanwhile stays gone, rather
    /// than come back unseen by the census (which would hide the eviction).
    pub fn update(&self, key: &FlowKey, value: &PendingFlow) -> Result<bool, GateError> {
        match self.flows().insert(key, value, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(GateError::Map { map: MAP_PENDING, source }),
        }
    }

    /// Removes an entry; whether the map held it.
    pub fn remove(&self, key: &FlowKey) -> Result<bool, GateError> {
        match self.flows().remove(key) {
            Ok(()) => {
                self.inner.removed.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if key_absent(&e) => Ok(false),
            Err(source) => Err(GateError::Map { map: MAP_PENDING, source }),
        }
    }

    /// Entries removed through this table and its clones.
    pub fn removed(&self) -> u64 {
        self.inner.removed.load(Ordering::Relaxed)
    }
}

/// `BPF_EXIST` (include/uapi/linux/bpf.h): update only an existing element.
const BPF_EXIST: u64 = 2;
