//! Stand-in for the agent in the BPF LSM guard's VM test (`tests/guard_vm.rs`): the guest
//! kernel is Debian 12's 6.1, which has BPF LSM but not the data plane's 6.2+ features, so this
//! pins one map the way the agent pins its maps and puts the agent's guard over it.
//!
//!   guard_lab hold DIR    pin DIR/eg_lab, attach the guard, print `READY ...`, wait for
//!                         SIGTERM (the guard goes with the process, however it ends)
//!   guard_lab write DIR   write DIR/eg_lab through its pin (what `exfilguard block` does)
//!   guard_lab sockopt [CGROUP]
//!                         set PACKET_QDISC_BYPASS on an AF_PACKET socket through the 64-bit
//!                         syscalls, then through the i386 ones (`int $0x80`), printing
//!                         `SOCKOPT64 ...` and `SOCKOPT32 ...` (`SOCKOPT32 UNAVAILABLE ...`, exit
//!                         status 3, on a kernel without IA32 emulation); with CGROUP, first
//!                         attach a stand-in for the data plane's eg_setsockopt there
use exfilguard_dataplane::guard::{Guard, ObjectKind};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn open_or_create(pin: &Path) -> MapHandle {
    if let Ok(m) = MapHandle::from_pinned_path(pin) {
        return m;
    }
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut m = MapHandle::create(MapType::Hash, Some("eg_lab"), 4, 4, 16, &opts)
        .expect("creating the lab map");
    m.pin(pin).expect("pinning the lab map");
    m
}

const SOL_PACKET: libc::c_int = 263;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// "ok readback=1" or "refused errno=1: Operation not permitted (os error 1)".
fn outcome(rc: i64, fd: libc::c_int) -> String {
    if rc < 0 {
        let e = std::io::Error::from_raw_os_error(-rc as i32);
        return format!("refused errno={}: {e}", -rc);
    }
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, v and len outlive the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        format!("ok readback-failed ({})", std::io::Error::last_os_error())
    } else {
        format!("ok readback={v}")
    }
}

/// The 64-bit path: what eg_setsockopt (cgroup/setsockopt) sees.
fn sockopt64() -> String {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return format!("socket failed: {}", std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, pointer to an int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            &one as *const libc::c_int as *const libc::c_void,
            4,
        )
    };
    let rc = if rc < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        0
    };
    outcome(rc, fd.as_raw_fd())
}

/// An i386 system call through `int $0x80` (ebx, ecx, edx, esi, edi); -errno on failure.
/// The kernel truncates every argument to 32 bits.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, a: [u32; 5]) -> i64 {
    let ret: u32;
    // SAFETY: the caller passes arguments the system call accepts (pointers below 4 GiB);
    // rbx, which LLVM reserves, is swapped in and out around the trap.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) a[0] as u64 => _,
            inlateout("eax") nr => ret,
            in("ecx") a[1],
            in("edx") a[2],
            in("esi") a[3],
            in("edi") a[4],
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    ret as i32 as i64
}

/// i386 system call numbers (arch/x86/entry/syscalls/syscall_32.tbl; socket and setsockopt
/// are direct calls since Linux 4.3, before that only through socketcall).
#[cfg(target_arch = "x86_64")]
const I386_GETPID: u32 = 20;
#[cfg(target_arch = "x86_64")]
const I386_SOCKET: u32 = 359;
#[cfg(target_arch = "x86_64")]
const I386_SETSOCKOPT: u32 = 366;

/// Whether `int $0x80` works here: a kernel without IA32 emulation (or with it off,
/// `ia32_emulation=false`) kills the process with SIGSEGV, so a child tries it first.
#[cfg(target_arch = "x86_64")]
fn ia32_emulation() -> Result<(), String> {
    // SAFETY: the child only traps and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let me = unsafe { libc::getpid() } as i64;
        let ok = int80(I386_GETPID, [0; 5]) == me;
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        Err(format!(
            "int $0x80 killed the probe with signal {} (no IA32 emulation in this kernel?)",
            libc::WTERMSIG(status)
        ))
    } else if libc::WEXITSTATUS(status) != 0 {
        Err("the i386 getpid through int $0x80 returned another pid".into())
    } else {
        Ok(())
    }
}

/// The compat path: socket and setsockopt as a 32-bit program makes them. The kernel runs
/// cgroup sockopt programs for 64-bit syscalls only; the LSM hook runs for both.
#[cfg(target_arch = "x86_64")]
fn sockopt32() -> Result<String, String> {
    ia32_emulation()?;
    // optval must be addressable with 32 bits
    // SAFETY: fresh anonymous mapping, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED || page as usize > u32::MAX as usize - 4 {
        return Err(format!(
            "mmap(MAP_32BIT): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the page is ours and writable.
    unsafe { *(page as *mut libc::c_int) = 1 };
    let fd = int80(
        I386_SOCKET,
        [libc::AF_PACKET as u32, libc::SOCK_RAW as u32, 0, 0, 0],
    );
    let out = if fd < 0 {
        format!(
            "socket failed: {}",
            std::io::Error::from_raw_os_error(-fd as i32)
        )
    } else {
        let rc = int80(
            I386_SETSOCKOPT,
            [
                fd as u32,
                SOL_PACKET as u32,
                PACKET_QDISC_BYPASS as u32,
                page as usize as u32,
                4,
            ],
        );
        let o = outcome(rc, fd as libc::c_int);
        // SAFETY: the fd the i386 socket() returned, closed once.
        unsafe { libc::close(fd as libc::c_int) };
        o
    };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(page, 4096) };
    Ok(out)
}

#[cfg(not(target_arch = "x86_64"))]
fn sockopt32() -> Result<String, String> {
    Err("the i386 compat path exists on x86_64 only".into())
}

/// Stand-in for the data plane's eg_setsockopt, which this 6.1 guest cannot load: a
/// cgroup/setsockopt program refusing SOL_PACKET/PACKET_QDISC_BYPASS, linked to `cgroup`
/// while the returned fd is open.
fn cgroup_sockopt(cgroup: &Path) -> OwnedFd {
    use libbpf_rs::libbpf_sys as sys;
    // bpf_insn: code, dst | src << 4, off (le16), imm (le32)
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        code as u64
            | ((dst | src << 4) as u64) << 8
            | (off as u16 as u64) << 16
            | (imm as u32 as u64) << 32
    }
    // struct bpf_sockopt: sk, optval, optval_end (8 bytes each), level, optname
    let prog = [
        insn(0xb7, 0, 0, 0, 1),                   // r0 = 1 (allow)
        insn(0x61, 2, 1, 24, 0),                  // r2 = ctx->level
        insn(0x55, 2, 0, 3, SOL_PACKET),          // if r2 != SOL_PACKET goto exit
        insn(0x61, 2, 1, 28, 0),                  // r2 = ctx->optname
        insn(0x55, 2, 0, 1, PACKET_QDISC_BYPASS), // if r2 != PACKET_QDISC_BYPASS goto exit
        insn(0xb7, 0, 0, 0, 0),                   // r0 = 0 (EPERM)
        insn(0x95, 0, 0, 0, 0),                   // exit
    ];
    let mut opts = sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<sys::bpf_prog_load_opts>() as _,
        expected_attach_type: sys::BPF_CGROUP_SETSOCKOPT,
        ..Default::default()
    };
    // SAFETY: 7 instructions in bpf_insn's layout, NUL-terminated strings, opts sized.
    let pfd = unsafe {
        sys::bpf_prog_load(
            sys::BPF_PROG_TYPE_CGROUP_SOCKOPT,
            c"eg_lab_sockopt".as_ptr(),
            c"GPL".as_ptr(),
            prog.as_ptr() as *const sys::bpf_insn,
            prog.len() as _,
            &mut opts,
        )
    };
    assert!(
        pfd >= 0,
        "loading the cgroup/setsockopt stand-in: errno {}",
        -pfd
    );
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
    let cg = std::fs::File::open(cgroup).expect("opening the cgroup");
    // SAFETY: valid fds; no options.
    let link = unsafe {
        sys::bpf_link_create(
            pfd.as_raw_fd(),
            cg.as_raw_fd(),
            sys::BPF_CGROUP_SETSOCKOPT,
            std::ptr::null(),
        )
    };
    assert!(
        link >= 0,
        "linking the stand-in to {}: errno {}",
        cgroup.display(),
        -link
    );
    unsafe { OwnedFd::from_raw_fd(link) }
}

fn sockopt(cgroup: Option<&Path>) {
    let _link = cgroup.map(cgroup_sockopt);
    println!("SOCKOPT64 {}", sockopt64());
    match sockopt32() {
        Ok(o) => println!("SOCKOPT32 {o}"),
        Err(e) => {
            println!("SOCKOPT32 UNAVAILABLE: {e}");
            std::process::exit(3)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, c] if c == "sockopt" => return sockopt(None),
        [_, c, g] if c == "sockopt" => return sockopt(Some(Path::new(g))),
        _ => {}
    }
    let (cmd, dir) = match args.as_slice() {
        [_, c, d] => (c.as_str(), Path::new(d)),
        _ => {
            eprintln!("usage: guard_lab hold|write DIR | sockopt [CGROUP]");
            std::process::exit(2)
        }
    };
    let pin = dir.join("eg_lab");
    match cmd {
        "hold" => {
            std::fs::create_dir_all(dir).expect("creating the pin directory");
            let map = open_or_create(&pin);
            let id = map.info().expect("map info").info.id;
            let guard = match Guard::attach(dir, &[(ObjectKind::Map, id)]) {
                Ok(g) => g,
                Err(e) => {
                    println!("GUARD-FAILED {e}");
                    std::process::exit(1)
                }
            };
            for p in guard.program_stats().expect("program stats") {
                println!(
                    "PROG {} insns={} verified={} xlated={} jited={}",
                    p.name, p.insns, p.verified_insns, p.xlated_bytes, p.jited_bytes
                );
            }
            // the agent keeps its own bypass sockets (its re-injection), through both paths
            println!(
                "AGENT sockopt64: {} sockopt32: {}",
                sockopt64(),
                sockopt32().unwrap_or_else(|e| format!("UNAVAILABLE: {e}"))
            );
            // SAFETY: the handler only stores to an atomic.
            unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
            let links: Vec<String> = guard.link_ids().iter().map(u32::to_string).collect();
            println!(
                "READY pid={} map={id} links={}",
                std::process::id(),
                links.join(",")
            );
            while !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let counts = guard.refusal_summary();
            drop(guard);
            println!("REMOVED {counts}");
        }
        "write" => match MapHandle::from_pinned_path(&pin) {
            Ok(m) => match m.update(&7u32.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY) {
                Ok(()) => println!("WRITE ok"),
                Err(e) => println!("WRITE refused: {e}"),
            },
            Err(e) => println!("WRITE refused: {e}"),
        },
        _ => {
            eprintln!("usage: guard_lab hold|write DIR | sockopt [CGROUP]");
            std::process::exit(2)
        }
    }
}
