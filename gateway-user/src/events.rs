//! Gate events from the ring buffer.

use ackgate_common::abi::{GateEvent, MAP_EVENTS};
use aya::maps::{MapData, MapError, RingBuf};

pub struct Events {
    ring: RingBuf<MapData>,
}

impl Events {
    /// Takes the ring buffer out of the loaded gate.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        let map = ebpf.take_map(MAP_EVENTS).ok_or(MapError::InvalidName { name: MAP_EVENTS.into() })?;
        Ok(Self { ring: RingBuf::try_from(map)? })
    }

    /// The raw fd, for readiness polling (tokio `AsyncFd`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Every event currently queued. Records of another size (a newer
    /// kernel object than this userspace) are skipped.
    pub fn drain(&mut self) -> Vec<GateEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() == size_of::<GateEvent>() {
                // SAFETY: GateEvent is plain integers; length checked.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<GateEvent>()) });
            }
        }
        out
    }
}

impl std::os::fd::AsRawFd for Events {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        Events::as_raw_fd(self)
    }
}
