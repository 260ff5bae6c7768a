// SPDX-License-Identifier: GPL-2.0
//! A QEMU guest with a virtio-balloon device, its console, QMP monitor and
//! the virtio-serial control port the guest tests talk to.

use crate::qmp::Monitor;
use crate::{agent, bench};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Named configurations `make check` runs: device options, guest kernel
/// arguments and the tests each one needs (see testing.rst). A name may be
/// followed by more options: `deflate-on-oom,stats=2`.
///
/// kmemleak (10 s of every boot under TCG) runs where a driver's allocations end: unbind,
/// reload, suspend, unplug (`plain`), OOM deflate, the hinting shrinker and both queues
/// (`deflate-on-oom`, `hint`, `hint-reporting`). The other boots run a subset of the
/// same code with another device or guest setting, under KASAN and lockdep only.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "plain",
        "tests=balloon+polling+features+oom.kills_without_deflate_on_oom+compaction+lifecycle+\
         faults.inflate_loses_no_page+faults.probe_unwinds",
    ),
    (
        "deflate-on-oom",
        // The core tests whose accounting changes with deflate-on-oom (MemTotal stays);
        // reversal, stats and migration do not depend on it (plain, soak).
        "deflate-on-oom,\
         tests=balloon.driver_bound+balloon.inflate_reaches_target_exactly+\
         balloon.deflate_returns_every_page+balloon.steps_reach_exact_targets+\
         balloon.oversized_target_takes_what_it_can+balloon.rebind_and_reload_return_every_page+\
         features+oom.deflates_instead_of_killing+oom.unbind_while_deflating",
    ),
    (
        "reporting",
        "free-page-reporting,stats=2,kmemleak=off,tests=features+queues+reporting",
    ),
    // hint.migration_skips_free_memory runs in hint-reporting; the shrinker test here
    // drives the hint queue too.
    (
        "hint",
        "free-page-hint,stats=2,\
         tests=features+queues+hint.shrinker_returns_blocks_during_migration",
    ),
    (
        "hint-reporting",
        "free-page-hint,free-page-reporting,stats=2,\
         tests=features+queues+reporting+hint.migration_skips_free_memory+lifecycle_features",
    ),
    (
        "poison",
        "free-page-reporting,guest=page_poison=1,kmemleak=off,tests=features+poison",
    ),
    (
        "poison-unsupported",
        "free-page-reporting,page-poison=off,guest=page_poison=1,kmemleak=off,tests=features",
    ),
    (
        "zero-on-free",
        "free-page-reporting,guest=init_on_free=1,kmemleak=off,tests=features+poison",
    ),
    // Every feature at once: random and flapping targets under a memory stressor, and
    // faults during hinting and reporting. `make soak` runs it longer (vb.soak, vb.flap,
    // vb.stop) and with kmemleak; make check's short run leaves the leak scan to plain.
    (
        "soak",
        "deflate-on-oom,free-page-hint,free-page-reporting,stats=2,kmemleak=off,\
         tests=faults.hinting_and_reporting+soak",
    ),
    // One CPU: under TCG a two-CPU guest takes 3 s to minutes to resume from S3 (timer
    // and RCU softirqs, ACPI link methods after the CPU comes back); one CPU takes 3 s.
    // This short boot carries the S3 test instead of a boot of its own.
    (
        "zero-on-free-unsupported",
        "free-page-reporting,page-poison=off,guest=init_on_free=1,cpus=1,kmemleak=off,\
         tests=features+lifecycle_s3",
    ),
];

/// The tests a configuration runs when it names none: the core suite.
pub const CORE_TESTS: &str = "balloon";

/// Properties of the balloon device, and of the guest, for one boot.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub deflate_on_oom: bool,
    pub free_page_reporting: bool,
    pub free_page_hint: bool,
    /// QEMU's `page-poison` property (on by default): offers PAGE_POISON.
    pub page_poison: bool,
    /// guest-stats-polling-interval in seconds, 0 for off.
    pub stats_interval: u32,
    /// Extra guest kernel arguments (`guest=init_on_free=1`).
    pub guest_args: Vec<String>,
    /// Test selectors for the guest (`FIXTURE` or `FIXTURE.TEST`), passed as
    /// `vb.tests=`; `tests=a+b` in the option string.
    pub tests: Vec<String>,
    /// The preset this came from, if any.
    pub preset: Option<String>,
    /// Guest CPUs, when the configuration needs a number of its own (`cpus=N`).
    pub cpus: Option<u32>,
    /// kmemleak tracks the guest's allocations and is read at the end of a check boot
    /// (`kmemleak=off`: not in this configuration). It costs about 10 s a boot under TCG.
    pub kmemleak: bool,
}

/// A property of the balloon device: on the command line `name=on|off|N|text`, in QMP
/// `device_add` a JSON value of its type.
#[derive(Clone, Debug, PartialEq)]
pub enum Prop {
    Bool(bool),
    Num(u32),
    Text(String),
}

impl Prop {
    fn arg(&self) -> String {
        match self {
            Prop::Bool(b) => (if *b { "on" } else { "off" }).into(),
            Prop::Num(n) => n.to_string(),
            Prop::Text(t) => t.clone(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Prop::Bool(b) => (*b).into(),
            Prop::Num(n) => (*n).into(),
            Prop::Text(t) => t.as_str().into(),
        }
    }
}

/// QEMU's name for the balloon device, and the id the harness gives it.
pub const BALLOON_DRIVER: &str = "virtio-balloon-pci";
pub const BALLOON_ID: &str = "balloon0";

impl Default for Device {
    fn default() -> Self {
        Device {
            deflate_on_oom: false,
            free_page_reporting: false,
            free_page_hint: false,
            page_poison: true,
            stats_interval: 0,
            guest_args: vec![],
            tests: vec![CORE_TESTS.into()],
            preset: None,
            cpus: None,
            kmemleak: true,
        }
    }
}

impl Device {
    /// Parses a comma-separated list such as `deflate-on-oom,stats=2`;
    /// `plain` or an empty string is the device with no options. A preset
    /// name (see [`PRESETS`]) may come first. Options: `deflate-on-oom`,
    /// `free-page-reporting`, `free-page-hint`, `stats=N`,
    /// `page-poison=on|off`, `guest=ARG` (repeatable), `cpus=N`, `kmemleak=on|off`,
    /// `tests=SEL+SEL`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut d = Device::default();
        let mut opts: Vec<&str> = s.split(',').filter(|o| !o.is_empty()).collect();
        if let Some((name, spec)) = opts
            .first()
            .and_then(|first| PRESETS.iter().find(|(n, _)| n == first))
        {
            d.preset = Some(name.to_string());
            opts.remove(0);
            let mut all: Vec<&str> = spec.split(',').collect();
            all.extend(opts);
            opts = all;
        }
        for opt in opts.into_iter().filter(|o| !o.is_empty() && *o != "plain") {
            let onoff = |v: &str| match v {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(format!("'{opt}': on or off")),
            };
            match opt.split_once('=') {
                None => match opt {
                    "deflate-on-oom" => d.deflate_on_oom = true,
                    "free-page-reporting" => d.free_page_reporting = true,
                    "free-page-hint" => d.free_page_hint = true,
                    _ => return Err(format!("unknown device option '{opt}'")),
                },
                Some(("stats", n)) => {
                    d.stats_interval = n.parse().map_err(|e| format!("'{opt}': {e}"))?
                }
                Some(("page-poison", v)) => d.page_poison = onoff(v)?,
                Some(("kmemleak", v)) => d.kmemleak = onoff(v)?,
                Some(("cpus", n)) => match n.parse::<u32>() {
                    Ok(n) if n > 0 => d.cpus = Some(n),
                    _ => return Err(format!("'{opt}': a positive number")),
                },
                Some(("guest", arg)) if !arg.is_empty() && !arg.contains(' ') => {
                    d.guest_args.push(arg.into())
                }
                Some(("tests", sel)) => {
                    d.tests = sel
                        .split('+')
                        .filter(|t| !t.is_empty())
                        .map(String::from)
                        .collect();
                    if d.tests.iter().any(|t| !valid_selector(t)) || d.tests.is_empty() {
                        return Err(format!("'{opt}': FIXTURE or FIXTURE.TEST, joined by +"));
                    }
                }
                _ => return Err(format!("unknown device option '{opt}'")),
            }
        }
        Ok(d)
    }

    /// Short name for tables and log files: the device options and guest
    /// arguments (not the tests).
    pub fn name(&self) -> String {
        let mut v = Vec::new();
        if self.deflate_on_oom {
            v.push("deflate-on-oom".to_string());
        }
        if self.free_page_reporting {
            v.push("free-page-reporting".into());
        }
        if self.free_page_hint {
            v.push("free-page-hint".into());
        }
        if !self.page_poison {
            v.push("page-poison=off".into());
        }
        if self.stats_interval > 0 {
            v.push(format!("stats={}", self.stats_interval));
        }
        for g in &self.guest_args {
            v.push(format!("guest={g}"));
        }
        if let Some(n) = self.cpus {
            v.push(format!("cpus={n}"));
        }
        if !self.kmemleak {
            v.push("kmemleak=off".into());
        }
        if v.is_empty() {
            "plain".into()
        } else {
            v.join(",")
        }
    }

    /// The balloon device's properties beyond its driver and id, in command-line order:
    /// the boot's `-device` and a hot-plug's `device_add` create the same device.
    pub fn props(&self) -> Vec<(&'static str, Prop)> {
        let mut v = vec![
            ("deflate-on-oom", Prop::Bool(self.deflate_on_oom)),
            ("free-page-reporting", Prop::Bool(self.free_page_reporting)),
            ("page-poison", Prop::Bool(self.page_poison)),
        ];
        if self.free_page_hint {
            v.push(("free-page-hint", Prop::Bool(true)));
            v.push(("iothread", Prop::Text("iot0".into())));
        }
        if self.stats_interval > 0 {
            v.push((
                "guest-stats-polling-interval",
                Prop::Num(self.stats_interval),
            ));
        }
        v
    }

    /// The `-device` argument.
    pub fn qemu_arg(&self) -> String {
        let mut s = format!("{BALLOON_DRIVER},id={BALLOON_ID}");
        for (k, v) in self.props() {
            s += &format!(",{k}={}", v.arg());
        }
        s
    }

    /// What the guest kernel command line gets beyond the harness's own
    /// arguments: `vb.tests=` and the guest arguments.
    pub fn append(&self) -> String {
        let mut v = vec![format!("vb.tests={}", self.tests.join(","))];
        v.extend(self.guest_args.iter().cloned());
        v.join(" ")
    }
}

/// `FIXTURE` or `FIXTURE.TEST`: letters, digits and underscores.
fn valid_selector(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match s.split_once('.') {
        Some((f, t)) => ok(f) && ok(t),
        None => ok(s),
    }
}

#[derive(Clone)]
pub struct Config {
    pub qemu: String,
    pub accel: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u64,
    pub cpus: u32,
    pub driver: String,
    pub mode: String,
    pub device: Device,
    /// Directory for the console log.
    pub dir: PathBuf,
    /// Directory for the sockets: one per boot that runs at the same time.
    pub sock_dir: PathBuf,
    pub log_name: String,
}

impl Config {
    pub fn qemu_args(&self) -> Vec<String> {
        let d = self.sock_dir.display();
        let mut a: Vec<String> = vec!["-accel".into(), self.accel.clone()];
        if self.accel == "kvm" {
            a.extend(["-cpu".into(), "host".into()]);
        }
        a.extend(
            [
                // Thread names ("CPU 0/TCG"), so the benchmark can tell vCPU time apart.
                "-name",
                "balloon-vm,debug-threads=on",
                "-smp",
                &self.cpus.to_string(),
                "-m",
                &format!("{}M", self.mem_mib),
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-kernel",
                &self.kernel.display().to_string(),
                "-initrd",
                &self.initrd.display().to_string(),
                "-append",
                &format!(
                    "console=ttyS0 panic=-1 vb.driver={} vb.mode={} {}{}",
                    self.driver,
                    self.mode,
                    self.device.append(),
                    // Only a check boot reads kmemleak's report.
                    if self.mode == "check" && self.device.kmemleak {
                        ""
                    } else {
                        " kmemleak=off"
                    }
                ),
                "-chardev",
                &format!("socket,id=con0,path={d}/console.sock,server=on,wait=on"),
                "-serial",
                "chardev:con0",
                "-qmp",
                &format!("unix:{d}/qmp.sock,server=on,wait=off"),
                "-device",
                "virtio-serial-pci,id=vser0",
                "-chardev",
                &format!("socket,id=bctl,path={d}/ctl.sock,server=on,wait=off"),
                "-device",
                "virtserialport,bus=vser0.0,chardev=bctl,name=org.kselftest.balloon",
            ]
            .map(String::from),
        );
        // A guest that panics (panic=-1 reboots) ends the run, except where the host resets
        // the machine on purpose: -no-reboot turns QMP system_reset into an exit too.
        if self.mode != "idle" {
            a.push("-no-reboot".into());
        }
        if self.device.free_page_hint {
            a.extend(["-object".into(), "iothread,id=iot0".into()]);
        }
        a.extend(["-device".into(), self.device.qemu_arg()]);
        a
    }
}

pub struct Vm {
    child: Child,
    pub qmp: Arc<Mutex<Monitor>>,
    /// The console's input side (the guest's /dev/console).
    console_in: UnixStream,
    lines: Receiver<String>,
    /// Every console line so far.
    pub log: Vec<String>,
    pub log_path: PathBuf,
    pub started: Instant,
    /// The balloon size over each benchmark change (`bench-target`).
    pub traces: bench::Traces,
}

fn connect_retry(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Vm {
    pub fn start(cfg: &Config) -> io::Result<Vm> {
        std::fs::create_dir_all(&cfg.dir)?;
        std::fs::create_dir_all(&cfg.sock_dir)?;
        for s in ["console.sock", "qmp.sock", "ctl.sock"] {
            let _ = std::fs::remove_file(cfg.sock_dir.join(s));
        }
        let log_path = cfg.dir.join(format!("{}.log", cfg.log_name));
        let qemu_err = File::create(cfg.dir.join(format!("{}.qemu.log", cfg.log_name)))?;
        let mut child = Command::new(&cfg.qemu)
            .args(cfg.qemu_args())
            .stdin(Stdio::null())
            .stdout(qemu_err.try_clone()?)
            .stderr(qemu_err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cfg.qemu)))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let console = match connect_retry(&cfg.sock_dir.join("console.sock"), deadline) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let why =
                    std::fs::read_to_string(cfg.dir.join(format!("{}.qemu.log", cfg.log_name)))
                        .unwrap_or_default();
                return Err(io::Error::other(format!("QEMU did not start: {e}\n{why}")));
            }
        };
        let events = File::create(cfg.dir.join(format!("{}.qmp-events.log", cfg.log_name)))?;
        let qmp = Monitor::new(
            connect_retry(&cfg.sock_dir.join("qmp.sock"), deadline)?,
            events,
        )?;
        let qmp = Arc::new(Mutex::new(qmp));
        let ctl = connect_retry(&cfg.sock_dir.join("ctl.sock"), deadline)?;
        let traces = bench::Traces::default();
        agent::spawn(
            ctl,
            qmp.clone(),
            cfg.mem_mib << 20,
            cfg.device.clone(),
            child.id(),
            traces.clone(),
        );

        let console_in = console.try_clone()?;
        let (tx, lines) = mpsc::channel();
        let mut file = File::create(&log_path)?;
        std::thread::spawn(move || {
            for line in BufReader::new(console).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                let _ = writeln!(file, "{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Vm {
            child,
            qmp,
            console_in,
            lines,
            log: Vec::new(),
            log_path,
            started,
            traces,
        })
    }

    /// Next console line, `None` on timeout, `Err` when the console closed.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<&str>, ()> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.log.push(l);
                Ok(self.log.last().map(String::as_str))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// Reads console lines until one starts with `prefix`; returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_line(left) {
                Ok(Some(l)) if l.starts_with(prefix) => return Some(l.to_string()),
                Ok(Some(l)) if l.starts_with("Kernel panic") => return None,
                Ok(_) => {}
                Err(()) => return None,
            }
        }
        None
    }

    /// Types `line` on the guest's console (init reads commands there in idle mode).
    pub fn console_write(&mut self, line: &str) -> io::Result<()> {
        writeln!(self.console_in, "{line}")
    }

    /// Keeps reading the console until QEMU exits; returns how long that took, `None`
    /// when it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                let took = start.elapsed();
                // The rest of the console, for the log scan.
                while let Ok(Some(_)) = self.next_line(Duration::from_millis(100)) {}
                return Some(took);
            }
            if self.next_line(Duration::from_millis(5)).is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        None
    }

    /// Reads the rest of the console until QEMU exits or `timeout` passes,
    /// then makes sure QEMU is gone.
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.next_line(left).is_err() {
                break;
            }
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(mut q) = self.qmp.try_lock() {
                q.quit();
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_options() {
        assert_eq!(Device::parse("").unwrap(), Device::default());
        let d = Device::parse("deflate-on-oom,free-page-hint,stats=2").unwrap();
        assert!(d.deflate_on_oom && d.free_page_hint && !d.free_page_reporting);
        assert_eq!(d.stats_interval, 2);
        assert_eq!(d.name(), "deflate-on-oom,free-page-hint,stats=2");
        assert!(d.qemu_arg().contains("free-page-hint=on,iothread=iot0"));
        assert!(d.qemu_arg().contains("page-poison=on"));
        assert!(Device::parse("bogus").is_err());
        assert!(Device::parse("stats=x").is_err());
    }

    #[test]
    fn hotplug_props_match_the_command_line() {
        let d = Device::parse("free-page-hint,stats=2,page-poison=off").unwrap();
        assert_eq!(
            d.qemu_arg(),
            "virtio-balloon-pci,id=balloon0,deflate-on-oom=off,free-page-reporting=off,\
             page-poison=off,free-page-hint=on,iothread=iot0,guest-stats-polling-interval=2"
        );
        let json: Vec<String> = d
            .props()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.json()))
            .collect();
        assert_eq!(
            json.join(","),
            "deflate-on-oom=false,free-page-reporting=false,page-poison=false,\
             free-page-hint=true,iothread=\"iot0\",guest-stats-polling-interval=2"
        );
        assert_eq!(
            Device::default().qemu_arg(),
            "virtio-balloon-pci,id=balloon0,deflate-on-oom=off,free-page-reporting=off,\
             page-poison=on"
        );
    }

    #[test]
    fn cpus_option() {
        let d = Device::parse("plain,cpus=1").unwrap();
        assert_eq!(d.cpus, Some(1));
        assert_eq!(d.name(), "cpus=1");
        assert!(Device::parse("cpus=0").is_err());
        assert!(Device::parse("cpus=x").is_err());
        assert_eq!(Device::default().cpus, None);
    }

    #[test]
    fn poison_guest_and_tests() {
        let d = Device::parse(
            "free-page-reporting,page-poison=off,guest=init_on_free=1,tests=features+oom.a_b",
        )
        .unwrap();
        assert!(!d.page_poison && d.free_page_reporting);
        assert_eq!(d.guest_args, vec!["init_on_free=1"]);
        assert_eq!(d.tests, vec!["features", "oom.a_b"]);
        assert_eq!(
            d.name(),
            "free-page-reporting,page-poison=off,guest=init_on_free=1"
        );
        assert!(d.qemu_arg().contains("page-poison=off"));
        assert_eq!(d.append(), "vb.tests=features,oom.a_b init_on_free=1");
        assert!(Device::parse("page-poison=maybe").is_err());
        assert!(Device::parse("guest=").is_err());
        assert!(Device::parse("tests=").is_err());
        assert!(Device::parse("tests=a.b.c").is_err());
        assert!(Device::parse("tests=a-b").is_err());
        assert_eq!(Device::default().append(), "vb.tests=balloon");
    }

    #[test]
    fn presets() {
        let p = Device::parse("plain").unwrap();
        assert_eq!(p.name(), "plain");
        assert_eq!(p.preset.as_deref(), Some("plain"));
        assert_eq!(p.tests[0], "balloon");
        // A preset name is the same device as its options spelled out.
        let d = Device::parse("deflate-on-oom,stats=2").unwrap();
        assert!(d.deflate_on_oom);
        assert_eq!(d.stats_interval, 2);
        assert!(d
            .tests
            .contains(&"oom.deflates_instead_of_killing".to_string()));
        let h = Device::parse("hint-reporting").unwrap();
        assert!(h.free_page_hint && h.free_page_reporting);
        assert_eq!(
            h.tests,
            vec![
                "features",
                "queues",
                "reporting",
                "hint.migration_skips_free_memory",
                "lifecycle_features"
            ]
        );
        let z = Device::parse("zero-on-free-unsupported").unwrap();
        assert_eq!(z.cpus, Some(1));
        assert_eq!(z.tests, vec!["features", "lifecycle_s3"]);
        // Every preset parses, and no two share a name (log files are named after it).
        let mut names: Vec<String> = PRESETS
            .iter()
            .map(|(n, _)| Device::parse(n).unwrap().name())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PRESETS.len());
    }

    #[test]
    fn qemu_command_line() {
        let cfg = Config {
            qemu: "qemu-system-x86_64".into(),
            accel: "tcg".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            mem_mib: 1024,
            cpus: 2,
            driver: "virtio_balloon".into(),
            mode: "check".into(),
            device: Device::parse("free-page-hint").unwrap(),
            dir: "/w".into(),
            sock_dir: "/w".into(),
            log_name: "x".into(),
        };
        let a = cfg.qemu_args().join(" ");
        assert!(a.starts_with("-accel tcg -name balloon-vm,debug-threads=on -smp 2 -m 1024M"));
        assert!(a.contains("vb.driver=virtio_balloon vb.mode=check vb.tests=balloon -chardev"));
        assert!(a.contains("-object iothread,id=iot0 -device virtio-balloon-pci,id=balloon0"));
        assert!(!a.contains("-cpu host"));
        assert!(a.contains("-no-reboot"));
        assert!(!a.contains("kmemleak"));
        let quiet = Config {
            device: Device::parse("free-page-hint,kmemleak=off").unwrap(),
            ..cfg.clone()
        };
        assert!(quiet
            .qemu_args()
            .join(" ")
            .contains("vb.tests=balloon kmemleak=off -chardev"));
        assert_eq!(quiet.device.name(), "free-page-hint,kmemleak=off");
        // Nobody reads kmemleak's report outside a check boot.
        let idle = Config {
            mode: "idle".into(),
            ..cfg
        };
        let a = idle.qemu_args().join(" ");
        assert!(!a.contains("-no-reboot"));
        assert!(a.contains(" kmemleak=off"));
    }
}
