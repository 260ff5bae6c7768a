// SPDX-License-Identifier: GPL-2.0
//! The command line: `balloon-vmtest check|demo|bench --kernel BZIMAGE --initrd INITRD
//! [options]`, each command with its `--help`.

use crate::vm::{self, Device};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Boots a test guest under QEMU with a virtio-balloon device and runs the
/// virtio_balloon kselftests in it, shows the balloon moving, or times the drivers.
#[derive(Parser, Debug)]
#[command(name = "balloon-vmtest", version, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the virtio_balloon kselftests once per driver and device
    Check(CheckArgs),
    /// Inflate and deflate the balloon, showing host and guest views
    Demo(DemoArgs),
    /// Time inflate and deflate for each driver, taking turns in one boot
    Bench(BenchArgs),
}

/// The guest every command boots: kernel, drivers, devices and QEMU.
#[derive(Args, Debug)]
pub struct VmArgs {
    /// Guest kernel
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: PathBuf,
    /// Guest initramfs
    #[arg(long, value_name = "INITRD")]
    pub initrd: PathBuf,
    /// Balloon driver module; check takes it several times, bench compares them
    #[arg(
        long = "driver",
        value_name = "MODULE",
        default_value = "virtio_balloon"
    )]
    pub drivers: Vec<String>,
    /// A configuration: [PRESET,]OPTION,...; check takes it several times, demo and bench
    /// boot the first
    #[arg(
        long = "device",
        value_name = "OPTS",
        value_parser = Device::parse,
        default_value = "plain",
        long_help = device_help()
    )]
    pub devices: Vec<Device>,
    /// tcg or kvm
    #[arg(long, value_name = "ACCEL", default_value = "tcg")]
    pub accel: String,
    /// Guest RAM in MiB
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub mem: u64,
    /// Guest CPUs (a device's cpus=N overrides it)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub cpus: u32,
    /// QEMU binary
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Console logs and sockets
    #[arg(long, value_name = "DIR", default_value = "vmtest-logs")]
    pub log_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Fail a test that shows no result for S seconds
    #[arg(long, value_name = "S", default_value_t = 240)]
    pub test_timeout: u64,
    /// Do not boot a failed configuration a second time (by default a failure that does
    /// not come back is reported as flaky, with its console excerpt)
    #[arg(long)]
    pub no_retry: bool,
    /// Boots at a time: each configuration's boot runs in its own QEMU, N of them at
    /// once (a TCG guest running tests keeps about one host CPU busy)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=16)
    )]
    pub boots: u32,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// If the driver does not bind, show this one
    #[arg(long, value_name = "MODULE")]
    pub fallback: Option<String>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Rounds of every driver (0 counts as 1)
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = at_least_one)]
    pub rounds: u64,
    /// Where the table, data and plot go [default: LOG_DIR/bench]
    #[arg(long = "out", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The host discard-limit program to measure against
    #[arg(long, value_name = "PATH")]
    pub discard_prog: Option<PathBuf>,
}

impl BenchArgs {
    pub fn out_dir(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| self.vm.log_dir.join("bench"))
    }
}

/// A count of which 0 means 1.
fn at_least_one(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map(|n| n.max(1))
        .map_err(|e| e.to_string())
}

/// `--device`'s long help; the presets come from their table.
fn device_help() -> String {
    let presets: Vec<&str> = vm::PRESETS.iter().map(|(name, _)| *name).collect();
    format!(
        "A configuration: an optional preset name ({}) and options: deflate-on-oom, \
         free-page-reporting, free-page-hint, stats=N, page-poison=on|off, \
         guest=KERNEL_ARG (repeatable), cpus=N (instead of --cpus), kmemleak=on|off, \
         tests=SEL+SEL (FIXTURE or FIXTURE.TEST; default: the core suite, balloon). \
         Example: deflate-on-oom,stats=2. check takes it several times; demo and bench \
         boot the first one.",
        presets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(line.split_whitespace()).map(|c| c.cmd)
    }

    fn check(line: &str) -> CheckArgs {
        match parse(line).unwrap() {
            Cmd::Check(a) => a,
            c => panic!("not check: {c:?}"),
        }
    }

    // The Makefile's VMARGS, with its variables' defaults.
    const VMARGS: &str = "--kernel /c/build/debug/arch/x86/boot/bzImage \
                          --initrd /c/initramfs.cpio.gz --accel tcg --mem 1024 --log-dir /c/logs";

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn make_check() {
        let a = check(&format!(
            "balloon-vmtest check {VMARGS} --driver virtio_balloon --driver virtio_balloon_rust \
             --device plain --device deflate-on-oom --device reporting --device hint \
             --device hint-reporting --device soak --device poison --device poison-unsupported \
             --device zero-on-free --device zero-on-free-unsupported"
        ));
        assert_eq!(
            a.vm.kernel,
            PathBuf::from("/c/build/debug/arch/x86/boot/bzImage")
        );
        assert_eq!(a.vm.initrd, PathBuf::from("/c/initramfs.cpio.gz"));
        assert_eq!(a.vm.accel, "tcg");
        assert_eq!(a.vm.mem, 1024);
        assert_eq!(a.vm.cpus, 2);
        assert_eq!(a.vm.qemu, "qemu-system-x86_64");
        assert_eq!(a.vm.log_dir, PathBuf::from("/c/logs"));
        assert_eq!(a.vm.drivers, vec!["virtio_balloon", "virtio_balloon_rust"]);
        assert_eq!(a.vm.devices.len(), 10);
        assert_eq!(a.vm.devices[1], Device::parse("deflate-on-oom").unwrap());
        assert_eq!(a.vm.devices[1].preset.as_deref(), Some("deflate-on-oom"));
        assert_eq!(a.test_timeout, 240);
        assert!(!a.no_retry);
    }

    #[test]
    fn make_soak() {
        let a = check(&format!(
            "balloon-vmtest check {VMARGS} --test-timeout 7200 --driver virtio_balloon \
             --driver virtio_balloon_rust --device soak,guest=vb.soak=1000,guest=vb.flap=60,\
             guest=vb.stop=150,kmemleak=on,tests=faults.hinting_and_reporting+soak+stop"
        ));
        assert_eq!(a.test_timeout, 7200);
        assert_eq!(a.vm.devices.len(), 1);
        let d = &a.vm.devices[0];
        assert!(d.kmemleak);
        assert!(d.guest_args.contains(&"vb.flap=60".to_string()));
        assert_eq!(
            d.tests,
            vec!["faults.hinting_and_reporting", "soak", "stop"]
        );
    }

    #[test]
    fn make_run() {
        let Cmd::Demo(a) = parse(&format!(
            "balloon-vmtest demo {VMARGS} --driver virtio_balloon_rust --fallback virtio_balloon"
        ))
        .unwrap() else {
            panic!("not demo")
        };
        assert_eq!(a.vm.drivers, vec!["virtio_balloon_rust"]);
        assert_eq!(a.fallback.as_deref(), Some("virtio_balloon"));
        assert_eq!(a.vm.devices, vec![Device::parse("plain").unwrap()]);
    }

    #[test]
    fn make_bench() {
        let Cmd::Bench(a) = parse(
            "balloon-vmtest bench --kernel /c/build/release/arch/x86/boot/bzImage \
             --initrd /c/initramfs-release.cpio.gz --accel tcg --mem 4096 --cpus 2 --rounds 5 \
             --log-dir /c/logs --out /c/bench --discard-prog /c/bin/discard_limit \
             --driver virtio_balloon --driver virtio_balloon_rust",
        )
        .unwrap() else {
            panic!("not bench")
        };
        assert_eq!(a.vm.mem, 4096);
        assert_eq!(a.vm.cpus, 2);
        assert_eq!(a.rounds, 5);
        assert_eq!(a.out_dir(), PathBuf::from("/c/bench"));
        assert_eq!(a.discard_prog, Some(PathBuf::from("/c/bin/discard_limit")));
        assert_eq!(a.vm.drivers, vec!["virtio_balloon", "virtio_balloon_rust"]);
    }

    #[test]
    fn defaults() {
        let a = check("balloon-vmtest check --kernel k --initrd i");
        assert_eq!(a.vm.drivers, vec!["virtio_balloon"]);
        assert_eq!(a.vm.devices, vec![Device::parse("plain").unwrap()]);
        assert_eq!(a.vm.accel, "tcg");
        assert_eq!((a.vm.mem, a.vm.cpus), (1024, 2));
        assert_eq!(a.vm.log_dir, PathBuf::from("vmtest-logs"));
        let Cmd::Bench(b) =
            parse("balloon-vmtest bench --kernel k --initrd i --log-dir L").unwrap()
        else {
            panic!("not bench")
        };
        assert_eq!(b.rounds, 5);
        assert_eq!(b.out_dir(), PathBuf::from("L/bench"));
        assert_eq!(b.discard_prog, None);
    }

    #[test]
    fn rounds_at_least_one() {
        let rounds = |n: &str| match parse(&format!("x bench --kernel k --initrd i --rounds {n}")) {
            Ok(Cmd::Bench(b)) => Ok(b.rounds),
            Ok(c) => panic!("not bench: {c:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(rounds("0").unwrap(), 1);
        assert_eq!(rounds("3").unwrap(), 3);
        assert!(rounds("-1").is_err());
        assert!(rounds("x").is_err());
    }

    #[test]
    fn errors() {
        // --kernel and --initrd are required.
        assert!(parse("x check --kernel k").is_err());
        assert!(parse("x check --kernel k --initrd i --mem x").is_err());
        assert!(parse("x check --kernel k --initrd i --device no-such-preset").is_err());
        assert!(parse("x check --kernel k --initrd i --device plain,stats=x").is_err());
        assert!(parse("x check --kernel k --initrd i --bogus").is_err());
        assert!(parse("x frobnicate --kernel k --initrd i").is_err());
        // Options of another command.
        assert!(parse("x demo --kernel k --initrd i --rounds 3").is_err());
        assert!(parse("x check --kernel k --initrd i --fallback m").is_err());
    }

    #[test]
    fn device_error_names_the_option() {
        let e = parse("x check --kernel k --initrd i --device no-such-preset").unwrap_err();
        assert!(e.to_string().contains("no-such-preset"), "{e}");
    }

    #[test]
    fn help_lists_every_preset() {
        let help = Cli::command()
            .find_subcommand_mut("check")
            .unwrap()
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (name, _) in vm::PRESETS {
            assert!(help.contains(name), "{name} missing from check --help");
        }
    }
}
