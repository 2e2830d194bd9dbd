//! Test harness shared by the test suites, the demo and the benchmarks:
//! packet builders, a loaded-gate fixture and the namespace topology.

pub mod daemons;
pub mod deployment;
pub mod fixture;
pub mod flood;
pub mod kernel_alt;
pub mod packet;
pub mod probe;
pub mod stamp_fixture;
pub mod stamper;
pub mod table;
pub mod target;
pub mod test_gateway;
pub mod topology;
pub mod transfer;
