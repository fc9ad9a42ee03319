//! Stand-in for the agent in the BPF LSM guard's VM test (`tests/guard_vm.rs`): the guest
//! kernel is Debian 12's 6.1, which has BPF LSM but not the data plane's 6.2+ features, so this
//! pins one map the way the agent pins its maps and puts the agent's guard over it.
//!
//!   guard_lab hold DIR    pin DIR/eg_lab, attach the guard, print `READY ...`, wait for
//!                         SIGTERM (the guard goes with the process, however it ends)
//!   guard_lab write DIR   write DIR/eg_lab through its pin (what `exfilguard block` does)
use exfilguard_dataplane::guard::{Guard, ObjectKind};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (cmd, dir) = match args.as_slice() {
        [_, c, d] => (c.as_str(), Path::new(d)),
        _ => {
            eprintln!("usage: guard_lab hold|write DIR");
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
            eprintln!("usage: guard_lab hold|write DIR");
            std::process::exit(2)
        }
    }
}
