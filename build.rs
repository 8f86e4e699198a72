//! Build script. It does nothing unless the `dpdk` feature is on; then it finds DPDK 22.11 with
//! pkg-config, links its libraries, and compiles the C shim in `pmd/` (DPDK's static-inline
//! functions and macros as real functions). The Rust bindings are generated ahead of time
//! (`scripts/gen-dpdk-bindings.sh`, checked in under `vendor/`), so libclang is not needed here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::process::Command;

    /// The DPDK release the checked-in bindings were generated from: the ABI (struct layouts,
    /// flag values) changes between releases.
    const VERSION_MIN: &str = "22.11";
    const VERSION_MAX_EXCLUSIVE: &str = "22.12";
    const INSTALL_HINT: &str = "install DPDK's development files: `apt-get install \
        --no-install-recommends libdpdk-dev pkg-config` (Debian 12 ships DPDK 22.11), or build \
        without the `dpdk` feature";

    pub fn build() {
        println!("cargo:rerun-if-changed=pmd/dpdk_shim.c");
        println!("cargo:rerun-if-changed=pmd/dpdk_shim.h");
        // Emits the link lines (libraries and search paths) for the crate.
        if let Err(e) = pkg_config::Config::new()
            .range_version(VERSION_MIN..VERSION_MAX_EXCLUSIVE)
            .probe("libdpdk")
        {
            fail(&e.to_string());
        }
        let mut shim = cc::Build::new();
        shim.file("pmd/dpdk_shim.c").include("pmd").warnings(true);
        // pkg-config's cflags carry more than include paths (`-include rte_config.h`, the
        // `-march` DPDK was built for): pass them all to the compiler.
        for flag in cflags() {
            shim.flag(&flag);
        }
        shim.compile("ustack_dpdk_shim");
    }

    /// `pkg-config --cflags libdpdk`, split into arguments.
    fn cflags() -> Vec<String> {
        let pkg_config = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = match Command::new(&pkg_config)
            .args(["--cflags", "libdpdk"])
            .output()
        {
            Ok(out) if out.status.success() => out,
            Ok(out) => fail(&format!(
                "`{pkg_config} --cflags libdpdk` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => fail(&format!("running `{pkg_config}`: {e}")),
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn fail(detail: &str) -> ! {
        let msg = format!(
            "the `dpdk` feature needs DPDK {VERSION_MIN} (libdpdk, found with pkg-config), \
             and it was not found: {INSTALL_HINT}. pkg-config said: {}",
            detail.trim().replace('\n', " ")
        );
        println!("cargo::error={msg}");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
