//! Privileged test of the eBPF data path against the real kernel: two network
//! namespaces joined by a veth (client ↔ pod), a private bpffs, the real
//! `steer`/`guard` programs loaded through `jwtgate::datapath`.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and an agent built with
//! the eBPF object (`cargo xtask test`). Otherwise it prints a loud SKIP, or
//! fails when `CI` is set so a misconfigured CI cannot pass silently.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jwtgate::datapath::{self, Datapath, DenyList, Listeners, Steering};
use jwtgate::inbound::PortSelection;
use jwtgate_e2e::netns::NetNs;

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A uniquely named namespace from the shared test bed, `lo` up, removed on
/// drop even when the test panics.
fn netns() -> NetNs {
    let name = format!(
        "jg-dp-{}-{}",
        std::process::id(),
        NEXT_NS.fetch_add(1, Ordering::SeqCst)
    );
    NetNs::create(&name).expect("creating a network namespace")
}

fn ns_file(ns: &NetNs) -> File {
    File::open(ns.path()).expect("opening netns")
}

/// Run `f` on a thread inside `ns`; sockets it creates belong to `ns`.
fn inside<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    ns.run(f).expect("thread in netns")
}

/// A private bpffs in a temporary directory, unmounted on drop.
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn path(&self) -> PathBuf {
        self.dir.path().join("jwtgate")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Lazy unmount: succeeds even while a test thread still holds fds.
        let _ = nix::mount::umount2(&self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn listen(ns: &NetNs, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let l = inside(ns, || TcpListener::bind(addr)).expect("bind");
    l.set_nonblocking(true).unwrap();
    l
}

/// Accept one connection within `timeout`; returns the accepted socket's
/// local address (the original destination for steered connections).
fn accept(l: &TcpListener, timeout: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => return Some(s.local_addr().unwrap()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn connect(ns: &NetNs, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    inside(ns, || TcpStream::connect_timeout(&to, timeout))
}

fn counter(dp: &Datapath, name: &str) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// Blocking connect from a chosen source address (std cannot bind before
/// connecting); run it inside the namespace the socket should belong to.
/// `src_port` 0 lets the kernel pick; connect gives up after `timeout`
/// (SO_SNDTIMEO bounds a blocking connect).
fn connect_from(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<OwnedFd> {
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a fd we own, with correctly sized
    // sockaddr_in arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let a = sin(*src.ip(), src.port());
        if libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let b = sin(*dst.ip(), dst.port());
        if libc::connect(fd.as_raw_fd(), (&b as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// A private bpffs and two namespaces (client, pod), or `None` when the
/// test cannot run here (said out loud; a failure under CI).
fn bed() -> Option<(Bpffs, NetNs, NetNs)> {
    if !jwtgate_e2e::require_privileges() {
        return None;
    }
    // CI builds the agent with the object; anywhere else a plain `cargo test`
    // without it is a skip.
    if !datapath::object_embedded() {
        jwtgate_e2e::skip(
            "datapath test: agent built without the eBPF object (`cargo xtask test` builds it)",
        );
        return None;
    }
    let bpffs = Bpffs {
        dir: tempfile::tempdir().unwrap(),
    };
    Some((bpffs, netns(), netns()))
}

#[test]
fn steer_guard_fail_closed_fail_open() {
    let Some((bpffs, client, pod)) = bed() else {
        return;
    };
    let net = 10 + std::process::id() % 200;
    let client_ip: Ipv4Addr = format!("10.254.{net}.1").parse().unwrap();
    let pod_ip: Ipv4Addr = format!("10.254.{net}.2").parse().unwrap();
    let veth = format!("jgc{}", std::process::id());
    run(
        "ip",
        &[
            "link",
            "add",
            &veth,
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ],
    );
    run(
        "ip",
        &[
            "-n",
            client.name(),
            "addr",
            "add",
            &format!("{client_ip}/24"),
            "dev",
            &veth,
        ],
    );
    run("ip", &["-n", client.name(), "link", "set", &veth, "up"]);
    run(
        "ip",
        &[
            "-n",
            pod.name(),
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ],
    );
    run("ip", &["-n", pod.name(), "link", "set", "eth0", "up"]);

    let app_mesh = listen(&pod, "0.0.0.0:8080");
    let app_other = listen(&pod, "0.0.0.0:9090");
    let verifier = listen(&pod, "127.0.0.1:15006");
    let mesh_addr = SocketAddr::new(pod_ip.into(), 8080);
    let other_addr = SocketAddr::new(pod_ip.into(), 9090);
    let short = Duration::from_secs(1);

    let only_8080 = PortSelection::Only([8080].into());
    let mut dp = Datapath::open(&bpffs.path()).expect("Datapath::open");
    let id = enrol_v4(&mut dp, &pod, pod_ip, &only_8080, &verifier, false).expect("enrol");

    // Steered: the verifier accepts, and sees the original destination.
    let _c = connect(&client, mesh_addr, short).expect("connect to mesh port");
    assert_eq!(
        accept(&verifier, short),
        Some(mesh_addr),
        "not steered to the verifier"
    );
    assert_eq!(
        accept(&app_mesh, Duration::ZERO),
        None,
        "app saw a steered connection"
    );

    // A port that is not enrolled reaches the application.
    let _c = connect(&client, other_addr, short).expect("connect to other port");
    assert_eq!(accept(&app_other, short), Some(other_addr));

    // The verifier's upstream source 127.0.0.6 bypasses steering.
    let _c = inside(&pod, || {
        connect_from(
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 6), 0),
            SocketAddrV4::new(pod_ip, 8080),
            short,
        )
    })
    .expect("connect from 127.0.0.6");
    assert_eq!(
        accept(&app_mesh, short),
        Some(mesh_addr),
        "127.0.0.6 was not bypassed"
    );

    // Both programs are loaded and attached.
    let progs = output("bpftool", &["prog", "show"]);
    assert!(progs.contains("sk_lookup"), "bpftool prog show: {progs}");
    assert!(progs.contains("xdp"), "bpftool prog show: {progs}");
    let link = output("ip", &["-n", pod.name(), "-d", "link", "show", "eth0"]);
    assert!(link.contains("xdp"), "no XDP on the pod interface: {link}");
    eprintln!(
        "pod eth0: {}",
        link.lines().find(|l| l.contains("xdp")).unwrap_or("")
    );

    // Source ban with a 2 s TTL: SYNs are dropped (timeout, not refused) …
    let mut deny = DenyList::open_pinned(&bpffs.path()).expect("DenyList::open_pinned");
    let banned_at = Instant::now();
    deny.deny_source(
        IpAddr::V4(client_ip),
        Some(Duration::from_secs(2)),
        jwtgate_common::DENY_REASON_MANUAL,
    )
    .unwrap();
    let err = connect(&client, other_addr, short).expect_err("banned source connected");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "banned source: {err}");
    // … and pass again once the ban expired.
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(banned_at.elapsed()));
    let _c = connect(&client, other_addr, short).expect("connect after the ban expired");
    assert_eq!(accept(&app_other, short), Some(other_addr));
    // A permanent ban can be lifted.
    deny.deny_source(IpAddr::V4(client_ip), None, 2).unwrap();
    assert!(connect(&client, other_addr, Duration::from_millis(300)).is_err());
    deny.allow_source(IpAddr::V4(client_ip)).unwrap();
    let _c = connect(&client, other_addr, short).expect("connect after allow_source");
    assert_eq!(accept(&app_other, short), Some(other_addr));

    // Flow ban: only the banned 5-tuple is dropped (ports in network order).
    let banned_src = SocketAddrV4::new(client_ip, 40001);
    let pod_other = SocketAddrV4::new(pod_ip, 9090);
    deny.deny_flow(banned_src.into(), pod_other.into(), None, 2)
        .unwrap();
    let err = inside(&client, || connect_from(banned_src, pod_other, short))
        .expect_err("banned flow connected");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
            || err.raw_os_error() == Some(libc::EINPROGRESS),
        "banned flow: {err}"
    );
    let _c = inside(&client, || {
        connect_from(SocketAddrV4::new(client_ip, 40002), pod_other, short)
    })
    .expect("other flow");
    assert_eq!(accept(&app_other, short), Some(other_addr));
    deny.allow_flow(banned_src.into(), pod_other.into())
        .unwrap();

    // Re-enrolling keeps the listener id (agent restart), pins are re-adopted.
    let id2 = enrol_v4(&mut dp, &pod, pod_ip, &only_8080, &verifier, false).expect("re-enrol");
    assert_eq!(id, id2, "listener id changed on re-enrol");
    let key_dir = bpffs.path().join("links/test_2Fpod");
    assert!(key_dir.join("steer").exists());
    assert!(key_dir.join("guard-eth0").exists());

    // Fail-closed: without a listener the client is refused at once.
    drop(verifier);
    let t = Instant::now();
    let err = connect(&client, mesh_addr, short).expect_err("connected without a verifier");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "fail-closed: {err}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        t.elapsed()
    );

    // Fail-open: the same situation lets the client reach the application.
    let verifier2 = listen(&pod, "127.0.0.1:15007");
    let id3 =
        enrol_v4(&mut dp, &pod, pod_ip, &only_8080, &verifier2, true).expect("enrol fail-open");
    assert_eq!(id, id3);
    drop(verifier2);
    let _c = connect(&client, mesh_addr, short).expect("fail-open connect");
    assert_eq!(
        accept(&app_mesh, short),
        Some(mesh_addr),
        "fail-open did not reach the app"
    );

    let counters = dp.counters().unwrap();
    eprintln!("counters: {counters:?}");
    for name in [
        "mesh_hit",
        "steered",
        "bypassed",
        "no_listener_drop",
        "no_listener_pass",
        "pass",
        "drop_src",
        "drop_flow",
        "expired",
    ] {
        assert!(counter(&dp, name) > 0, "counter {name} is 0: {counters:?}");
    }

    // Agent restart: a new Datapath reuses the pinned maps, re-adopts the
    // links and finds the same listener id; the new listener gets steered.
    drop(dp);
    let mut dp = Datapath::open(&bpffs.path()).expect("Datapath::open after restart");
    assert_eq!(
        dp.pinned_keys().expect("pinned_keys"),
        ["test/pod"],
        "the pins of the earlier agent are listed by key"
    );
    let verifier3 = listen(&pod, "127.0.0.1:15008");
    let id4 = enrol_v4(&mut dp, &pod, pod_ip, &only_8080, &verifier3, false)
        .expect("enrol after restart");
    assert_eq!(id, id4, "listener id changed across a restart");
    let _c = connect(&client, mesh_addr, short).expect("connect after restart");
    assert_eq!(
        accept(&verifier3, short),
        Some(mesh_addr),
        "not steered after restart"
    );
    assert!(
        counter(&dp, "steered") >= 2,
        "counters not kept across restart"
    );

    // Unenrol removes pins and entries: the mesh port goes straight to the app.
    dp.unenrol("test/pod").expect("unenrol");
    assert!(!key_dir.exists(), "pins left behind");
    assert!(dp.pinned_keys().expect("pinned_keys").is_empty());
    let _c = connect(&client, mesh_addr, short).expect("connect after unenrol");
    assert_eq!(accept(&app_mesh, short), Some(mesh_addr));
    let link = output("ip", &["-n", pod.name(), "-d", "link", "show", "eth0"]);
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after unenrol: {link}"
    );

    drop(dp);
    assert_no_leftover_pins(&bpffs.path());
}

/// Wait (bounded) until `ns` has a route to `dst`.
fn wait_for_route(ns: &NetNs, dst: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Command::new("ip")
        .args(["-n", ns.name(), "route", "get", dst])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "no route to {dst} in {}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connect from `src` (any family) within `timeout`, inside the calling
/// thread's namespace.
fn connect_any(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&src.into())?;
    socket.connect_timeout(&dst.into(), timeout)?;
    Ok(socket.into())
}

/// The kernel-level guarantees of issue "Enforcement coverage": every port
/// of both families is steered unless excluded; the passthrough sources
/// pass only over the pod's loopback, so the same source forged from outside
/// is steered; a change of the port selection never lets one connection
/// through unsteered (make-before-break).
#[test]
fn every_port_both_families_and_the_passthrough_cannot_be_forged() {
    let Some((bpffs, client, pod)) = bed() else {
        return;
    };
    let net = 10 + std::process::id() % 200;
    let client_ip: Ipv4Addr = format!("10.253.{net}.1").parse().unwrap();
    let pod_ip: Ipv4Addr = format!("10.253.{net}.2").parse().unwrap();
    let client_ip6: Ipv6Addr = format!("fd00:{net}::1").parse().unwrap();
    let pod_ip6: Ipv6Addr = format!("fd00:{net}::2").parse().unwrap();
    let veth = format!("jgv{}", std::process::id());
    run(
        "ip",
        &[
            "link",
            "add",
            &veth,
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ],
    );
    for (ns, dev, v4, v6) in [
        (&client, veth.as_str(), client_ip, client_ip6),
        (&pod, "eth0", pod_ip, pod_ip6),
    ] {
        run(
            "ip",
            &[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                ns.name(),
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ],
        );
        run("ip", &["-n", ns.name(), "link", "set", dev, "up"]);
    }
    // IPv6 routes appear once both ends of the veth have carrier: wait, or
    // the first SYN-ACK has no route and the connect times out.
    wait_for_route(&pod, &client_ip6.to_string());
    wait_for_route(&client, &pod_ip6.to_string());
    // The attacker outside the pod owns ::6 on its own interface, and the
    // pod routes ::6 back to it: everything a forged source needs.
    run(
        "ip",
        &[
            "-n",
            client.name(),
            "-6",
            "addr",
            "add",
            "::6/128",
            "dev",
            &veth,
            "nodad",
        ],
    );
    run(
        "ip",
        &[
            "-n",
            pod.name(),
            "-6",
            "route",
            "add",
            "::6/128",
            "via",
            &client_ip6.to_string(),
        ],
    );

    let app = listen(&pod, "[::]:8080"); // dual-stack app
    let app_excluded = listen(&pod, "0.0.0.0:9090");
    let app_undeclared = listen(&pod, "[::]:7777");
    let verifier4 = listen(&pod, "127.0.0.1:15006");
    let verifier6 = listen(&pod, "[::]:15016");
    let short = Duration::from_secs(1);
    let ips = [IpAddr::V4(pod_ip), IpAddr::V6(pod_ip6)];
    let all_but_9090 = PortSelection::All {
        exclude: [9090].into(),
    };
    let mut dp = Datapath::open(&bpffs.path()).expect("Datapath::open");
    let enrol = |dp: &mut Datapath, ports: &PortSelection| {
        dp.enrol(
            "test/pod",
            &ns_file(&pod),
            &Steering {
                ips: &ips,
                ports,
                fail_open: false,
            },
            Listeners {
                v4: Some(verifier4.as_fd()),
                v6: Some(verifier6.as_fd()),
            },
        )
        .expect("enrol")
    };
    enrol(&mut dp, &all_but_9090);

    // Every port of both families, declared or not, reaches the verifier of
    // its family with the original destination.
    for (dst, verifier) in [
        (SocketAddr::new(pod_ip.into(), 8080), &verifier4),
        (SocketAddr::new(pod_ip.into(), 7777), &verifier4),
        (SocketAddr::new(pod_ip6.into(), 8080), &verifier6),
        (SocketAddr::new(pod_ip6.into(), 7777), &verifier6),
        (SocketAddr::new(pod_ip6.into(), 40000), &verifier6),
    ] {
        let _c = connect(&client, dst, short).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        assert_eq!(accept(verifier, short), Some(dst), "{dst} not steered");
    }
    assert_eq!(
        accept(&app, Duration::ZERO),
        None,
        "the app saw a steered connection"
    );
    assert_eq!(accept(&app_undeclared, Duration::ZERO), None);
    // The excluded port goes to the app.
    let excluded = SocketAddr::new(pod_ip.into(), 9090);
    let _c = connect(&client, excluded, short).expect("connect to the excluded port");
    assert_eq!(accept(&app_excluded, short), Some(excluded));
    assert!(counter(&dp, "excluded") > 0);

    // The passthrough sources, from inside the pod over lo, reach the app
    // on both families.
    run(
        "ip",
        &[
            "-n",
            pod.name(),
            "-6",
            "addr",
            "add",
            "::6/128",
            "dev",
            "lo",
            "nodad",
        ],
    );
    for (src, dst) in [
        (
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, 6), 0)),
            SocketAddr::new(pod_ip.into(), 8080),
        ),
        (
            SocketAddr::from(("::6".parse::<Ipv6Addr>().unwrap(), 0)),
            SocketAddr::new(pod_ip6.into(), 8080),
        ),
    ] {
        let _c = inside(&pod, || connect_any(src, dst, short))
            .unwrap_or_else(|e| panic!("passthrough {src} -> {dst}: {e}"));
        assert_eq!(
            accept(&app, short).map(|a| a.port()),
            Some(8080),
            "{src} not passed"
        );
    }
    let bypassed = counter(&dp, "bypassed");
    assert!(bypassed >= 2, "bypassed = {bypassed}");

    // The same ::6 source from outside the pod is dropped by XDP: never
    // passed to the app, on any port.
    for port in [8080, 7777] {
        let dst6 = SocketAddr::new(pod_ip6.into(), port);
        let forged = SocketAddr::from(("::6".parse::<Ipv6Addr>().unwrap(), 0));
        let err = inside(&client, || connect_any(forged, dst6, short))
            .expect_err("a forged ::6 connection was established");
        assert_eq!(
            err.kind(),
            ErrorKind::TimedOut,
            "forged ::6 to {dst6}: {err}"
        );
    }
    assert_eq!(
        accept(&app, Duration::from_millis(200)),
        None,
        "forged ::6 reached the app"
    );
    assert!(counter(&dp, "drop_forged_passthrough") > 0);
    assert_eq!(
        counter(&dp, "bypassed"),
        bypassed,
        "the forged source was bypassed"
    );

    // Make-before-break: while the selection flips between "8080 only" and
    // "all ports", a client hammering 8080 is steered every single time.
    let only_8080 = PortSelection::Only([8080].into());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dst = SocketAddr::new(pod_ip.into(), 8080);
    let attempts = std::thread::scope(|s| {
        let hammer = s.spawn(|| {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = connect(&client, dst, short) {
                    drop(c);
                    n += 1;
                }
                while accept(&verifier4, Duration::ZERO).is_some() {}
            }
            n
        });
        for i in 0..200 {
            enrol(
                &mut dp,
                if i % 2 == 0 {
                    &only_8080
                } else {
                    &all_but_9090
                },
            );
        }
        stop.store(true, Ordering::Relaxed);
        hammer.join().unwrap()
    });
    assert!(
        attempts > 10,
        "only {attempts} connections during the flips"
    );
    assert_eq!(
        accept(&app, Duration::from_millis(100)),
        None,
        "a connection slipped through while re-enrolling"
    );

    dp.unenrol("test/pod").expect("unenrol");
    drop(dp);
    assert_no_leftover_pins(&bpffs.path());
}

fn enrol_v4(
    dp: &mut Datapath,
    pod: &NetNs,
    ip: Ipv4Addr,
    ports: &PortSelection,
    listener: &TcpListener,
    fail_open: bool,
) -> anyhow::Result<u32> {
    dp.enrol(
        "test/pod",
        &ns_file(pod),
        &Steering {
            ips: &[IpAddr::V4(ip)],
            ports,
            fail_open,
        },
        Listeners {
            v4: Some(listener.as_fd()),
            v6: None,
        },
    )
}

fn assert_no_leftover_pins(root: &Path) {
    let links: Vec<_> = std::fs::read_dir(root.join("links")).unwrap().collect();
    assert!(links.is_empty(), "leftover link pins: {links:?}");
}
