//! The source addresses of the verifier's forward hop to the application,
//! Istio's inbound passthrough addresses. `steer` lets a connection from one
//! of them through to the app only when it arrives on the loopback device,
//! i.e. from inside the pod itself.
//!
//! 127.0.0.6 is loopback already. `::6` is not, so it is added to `lo` inside
//! the pod namespace (what Istio's iptables setup does with
//! `ip -6 addr add ::6/128 dev lo`), through rtnetlink: the agent image has
//! no `ip` binary, and one netlink request is all it takes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub const PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
pub const PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// `ip -6 addr replace ::6/128 dev lo nodad`, in the calling thread's
/// network namespace. Idempotent.
pub(super) fn add_v6_to_loopback() -> io::Result<()> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = 128;
    msg.header.scope = AddressScope::Host;
    msg.header.index = jwtgate_common::LOOPBACK_IFINDEX;
    // No duplicate address detection: the address only exists on lo, and a
    // tentative address could not be bound to at once.
    msg.header.flags = AddressHeaderFlags::Nodad;
    let addr = IpAddr::V6(PASSTHROUGH_V6);
    msg.attributes = vec![
        AddressAttribute::Local(addr),
        AddressAttribute::Address(addr),
        AddressAttribute::Flags(AddressFlags::Nodad),
    ];
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::NewAddress(msg)),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);

    // The socket belongs to the namespace of the thread that creates it.
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 8192];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| io::Error::other(format!("unreadable rtnetlink reply: {e}")))?;
    match ack.payload {
        NetlinkPayload::Error(err) => match err.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(io::Error::other(format!(
            "unexpected rtnetlink reply to adding ::6 to lo: {other:?}"
        ))),
    }
}
