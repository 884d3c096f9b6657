//! Who owns the other end of a loopback TCP connection. The kernel knows: `NETLINK_SOCK_DIAG`
//! answers an exact query for the client's socket (its 4-tuple, as `ss` does), including the uid
//! that created it and its inode; `/proc/net/tcp{,6}` is read when netlink is unavailable.
//!
//! The lookup is made at accept time, while the client's socket is alive. An answer that is not
//! exact (no such socket, a socket with inode 0 — closed or in TIME_WAIT — or a 4-tuple that does
//! not match) is `None`: the caller treats it as anonymous, never as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// The uid owning the client socket of the connection `peer` -> `local`, if the kernel says so
/// unambiguously. Only meaningful for loopback connections (the client is on this machine).
pub fn tcp_owner(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (local, peer) = (unmap(local), unmap(peer));
    match netlink_owner(local, peer) {
        Ok(found) => found,
        Err(error) => {
            tracing::debug!(%error, "sock_diag lookup failed; reading /proc/net/tcp");
            proc_owner(local, peer)
        }
    }
}

/// Whether an address is loopback (an IPv4-mapped IPv6 loopback address counts).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A v4-mapped v6 address (a dual-stack listener) names the IPv4 socket the client made.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// `Ok(None)`: the kernel answered and the owner is unknown. `Err`: no answer (fall back).
fn netlink_owner(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let family = if peer.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(std::io::Error::from)?;
    // The client's socket: its source is the peer we see, its destination our local address.
    let wanted = SocketId {
        source_port: peer.port(),
        destination_port: local.port(),
        source_address: peer.ip(),
        destination_address: local.ip(),
        interface_id: 0,
        // INET_DIAG_NOCOOKIE: match on the 4-tuple alone.
        cookie: [0xff; 8],
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: wanted.clone(),
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut reply = Vec::with_capacity(8192);
    socket.recv(&mut reply, 0)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            let h = &response.header;
            let exact = h.socket_id.source_port == wanted.source_port
                && h.socket_id.destination_port == wanted.destination_port
                && h.socket_id.source_address == wanted.source_address
                && h.socket_id.destination_address == wanted.destination_address;
            (exact && h.inode != 0).then_some(h.uid)
        }
        // ENOENT and friends: the kernel knows no such socket.
        NetlinkPayload::Error(_) => None,
        _ => None,
    })
}

/// The same lookup from `/proc/net/tcp` or `/proc/net/tcp6`.
fn proc_owner(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let file = if peer.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    let text = std::fs::read_to_string(file).ok()?;
    owner_in_proc_table(&text, local, peer)
}

/// Finds the row whose local address is `peer` and remote address is `local` (the client's
/// socket) and returns its uid, unless its inode is 0.
pub fn owner_in_proc_table(text: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let mut found = None;
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        if parse_proc_addr(fields[1]) != Some(peer) || parse_proc_addr(fields[2]) != Some(local) {
            continue;
        }
        let uid = fields[7].parse::<u32>().ok()?;
        let inode = fields[9].parse::<u64>().ok()?;
        if inode == 0 || found.is_some() {
            // Dead, or ambiguous: nobody.
            return None;
        }
        found = Some(uid);
    }
    found
}

/// Parses `0100007F:1F90` or a 32-digit IPv6 form. The kernel prints each 32-bit word of the
/// address as a number in host byte order.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_live_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        let me = nix::unistd::Uid::effective().as_raw();
        assert_eq!(tcp_owner(local, peer), Some(me));
        assert_eq!(proc_owner(local, peer), Some(me), "the /proc fallback agrees");
        drop(client);
    }

    #[test]
    fn ipv6_loopback_too() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else { return };
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let me = nix::unistd::Uid::effective().as_raw();
        assert_eq!(tcp_owner(server.local_addr().unwrap(), peer), Some(me));
    }

    #[test]
    fn no_socket_means_no_owner() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(tcp_owner(local, peer), None);
    }

    #[test]
    fn proc_rows_parse_and_dead_sockets_are_nobody() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let row = |uid: u32, inode: u64| {
            format!(
                "   1: 0100007F:A000 0100007F:2CAA 01 00000000:00000000 00:00000000 00000000  {uid}        0 {inode} 1 0 20 4 30 10 -1\n"
            )
        };
        let local: SocketAddr = "127.0.0.1:11434".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40960".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(owner_in_proc_table(&format!("{header}{}", row(1000, 77)), local, peer), Some(1000));
            assert_eq!(owner_in_proc_table(&format!("{header}{}", row(1000, 0)), local, peer), None);
            let twice = format!("{header}{}{}", row(1000, 77), row(0, 78));
            assert_eq!(owner_in_proc_table(&twice, local, peer), None, "ambiguous is nobody");
        }
        let v6 = parse_proc_addr("00000000000000000000000001000000:2CAA").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v6, "[::1]:11434".parse().unwrap());
        }
    }
}
