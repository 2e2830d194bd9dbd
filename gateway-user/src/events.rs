//! Gate events from the ring buffer.

use std::os::fd::{AsRawFd, RawFd};

use ackgate_common::abi::{GateEvent, MAP_EVENTS};
use aya::maps::{MapData, MapError, RingBuf};

pub struct Events {
    ring: RingBuf<MapData>,
    malformed: u64,
}

impl Events {
    /// Takes the ring buffer out of the loaded gate.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        let map = ebpf.take_map(MAP_EVENTS).ok_or(MapError::InvalidName { name: MAP_EVENTS.into() })?;
        Ok(Self { ring: RingBuf::try_from(map)?, malformed: 0 })
    }

    /// Every event currently queued. A record of another size (a kernel
    /// object from another build) cannot be decoded; it is counted in
    /// [`Events::malformed`] rather than guessed at.
    pub fn drain(&mut self) -> Vec<GateEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() == size_of::<GateEvent>() {
                // SAFETY: GateEvent is plain integers; length checked.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<GateEvent>()) });
            } else {
                self.malformed += 1;
            }
        }
        out
    }

    /// Records drained so far that could not be decoded.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// For readiness polling (tokio `AsyncFd`).
impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
