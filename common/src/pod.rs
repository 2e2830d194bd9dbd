//! `aya::Pod` for the map types, userspace only (as aya's integration-common
//! does): the kernel side never needs it.

use crate::abi::{
    AgentIdentity, FlowKey, GateEvent, PendingFlow, ServiceKey, ServicePolicy, SpliceEntry, SpliceKey, StampedFlow,
    SynAckProfile, TargetPolicy, VipInfo, VipKey,
};
use crate::mac::MacKey;

// SAFETY: all are #[repr(C)] integer/byte-array structs with explicit
// padding fields, so every byte is initialised and any bit pattern is valid.
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServicePolicy {}
unsafe impl aya::Pod for VipKey {}
unsafe impl aya::Pod for VipInfo {}
unsafe impl aya::Pod for MacKey {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for PendingFlow {}
unsafe impl aya::Pod for GateEvent {}
unsafe impl aya::Pod for TargetPolicy {}
unsafe impl aya::Pod for AgentIdentity {}
unsafe impl aya::Pod for StampedFlow {}
unsafe impl aya::Pod for SpliceEntry {}
unsafe impl aya::Pod for SpliceKey {}
unsafe impl aya::Pod for SynAckProfile {}
