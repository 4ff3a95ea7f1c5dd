//! How a workload's inbound traffic is treated before any policy looks at it:
//! which TCP ports are steered into the verifier (`ports`), which protocol a
//! connection speaks — declared by the port's name, else sniffed from the
//! client's first bytes as Istio does (`protocol`) —, and which kubelet probes
//! the pod declares (`probes`). Pure: the sources build these from pod specs
//! and the workloads file, the datapath and the proxy act on them.

pub mod ports;
pub mod probes;
pub mod protocol;

pub use ports::PortSelection;
pub use probes::{Probe, ProbeCheck};
pub use protocol::{Declared, Sniffed};
