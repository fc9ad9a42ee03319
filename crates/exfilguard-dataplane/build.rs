//! Compiles bpf/exfilguard.bpf.c with clang and generates the libbpf-rs skeleton.
//! vmlinux.h (CO-RE) is generated from the build machine's BTF with bpftool unless
//! EXFILGUARD_VMLINUX_H points at one.
use std::path::PathBuf;
use std::process::Command;
use std::{env, fs};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/exfilguard.bpf.c";
/// The BPF LSM guard is its own object: a kernel without BPF LSM refuses it, not the data plane.
const GUARD: &str = "bpf/guard.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let inc = out.join("include");
    fs::create_dir_all(&inc).expect("create include dir");
    let vmlinux = inc.join("vmlinux.h");
    match env::var_os("EXFILGUARD_VMLINUX_H") {
        Some(given) => {
            fs::copy(&given, &vmlinux).expect("copy EXFILGUARD_VMLINUX_H");
        }
        None => {
            let btf = "/sys/kernel/btf/vmlinux";
            let dumped = Command::new("bpftool")
                .args(["btf", "dump", "file", btf, "format", "c"])
                .output()
                .unwrap_or_else(|e| {
                    panic!("running bpftool to generate vmlinux.h from {btf}: {e} (apt-get install bpftool, or set EXFILGUARD_VMLINUX_H)")
                });
            assert!(
                dumped.status.success(),
                "bpftool btf dump failed: {}",
                String::from_utf8_lossy(&dumped.stderr)
            );
            fs::write(&vmlinux, dumped.stdout).expect("write vmlinux.h");
        }
    }

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    for (src, skel) in [(SRC, "exfilguard.skel.rs"), (GUARD, "guard.skel.rs")] {
        SkeletonBuilder::new()
            .source(manifest.join(src))
            .clang_args([
                "-I".into(),
                inc.clone().into_os_string(),
                "-I".into(),
                manifest.join("bpf").into_os_string(),
                "-mcpu=v3".into(),
                "-Wall".into(),
                "-Wno-unused-function".into(),
                "-Wno-compare-distinct-pointer-types".into(),
            ])
            .build_and_generate(out.join(skel))
            .unwrap_or_else(|e| panic!("compiling the BPF programs of {src}: {e}"));
    }
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={GUARD}");
    println!("cargo:rerun-if-changed=bpf/exfilguard.h");
    println!("cargo:rerun-if-env-changed=EXFILGUARD_VMLINUX_H");
}
