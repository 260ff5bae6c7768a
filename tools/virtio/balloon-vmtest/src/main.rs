// SPDX-License-Identifier: GPL-2.0
//! balloon-vmtest: boots a test guest under QEMU with a virtio-balloon
//! device and either runs the virtio_balloon kselftests in it (`check`) or
//! shows the balloon moving (`demo`). See `balloon-vmtest --help`.

mod agent;
mod bench;
mod cli;
mod ktap;
mod logscan;
mod qmp;
mod vm;

use clap::Parser;
use cli::{BenchArgs, CheckArgs, Cli, Cmd, DemoArgs, VmArgs};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressState, ProgressStyle};
use ktap::{Status, TestResult};
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vm::{Config, Device, Vm};

/// Where one boot runs: the directory of its sockets, and the tag that tells its lines
/// apart from those of boots running at the same time (`check --boots`).
struct Slot {
    sock_dir: PathBuf,
    parallel: bool,
}

impl Slot {
    fn alone(a: &VmArgs) -> Slot {
        Slot {
            sock_dir: a.log_dir.clone(),
            parallel: false,
        }
    }

    /// The prefix of a boot's own lines: empty when it runs alone.
    fn tag(&self, driver: &str, device: &Device) -> String {
        if self.parallel {
            format!("[{driver} {}] ", device.name())
        } else {
            String::new()
        }
    }
}

fn config(a: &VmArgs, driver: &str, device: &Device, mode: &str, slot: &Slot) -> Config {
    Config {
        qemu: a.qemu.clone(),
        accel: a.accel.clone(),
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        mem_mib: a.mem,
        cpus: device.cpus.unwrap_or(a.cpus),
        driver: driver.into(),
        mode: mode.into(),
        device: device.clone(),
        dir: a.log_dir.clone(),
        sock_dir: slot.sock_dir.clone(),
        log_name: format!("{mode}-{driver}-{}", device.name()),
    }
}

/// One row of the final table.
struct Row {
    driver: String,
    device: String,
    result: TestResult,
}

/// Console lines of a failed test repeated after the table.
const FAILURE_LINES: usize = 40;

/// The console lines that explain one failed test, repeated after the table
/// so that the end of the output (all a CI log may keep) names the failure.
struct Failure {
    test: String,
    log: PathBuf,
    lines: Vec<String>,
}

fn fail(name: &str, note: impl Into<String>) -> TestResult {
    TestResult {
        name: name.into(),
        status: Status::Fail,
        note: note.into(),
    }
}

/// A spinner on stderr while a guest runs: the time since the boot began and `msg`, what the
/// guest does. Where stderr is no terminal (a CI log, `make check 2> log`) it draws nothing,
/// and [`say`] prints its lines plainly.
fn spinner(msg: &'static str, slot: &Slot) -> ProgressBar {
    // Boots that run at the same time print lines only.
    if slot.parallel {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("   {spinner} {elapsed:>4} {wide_msg}")
        .expect("a valid template");
    let pb = ProgressBar::new_spinner()
        .with_style(style)
        .with_message(msg)
        .with_finish(ProgressFinish::AndClear);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Prints a line to stderr above the spinner, or on its own where the spinner is hidden,
/// so that a log has every line.
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Console lines that explain a failed kselftest: from its RUN line (or the
/// previous result) to its result line.
fn excerpt(log: &[String], t: &TestResult) -> Vec<String> {
    let sub = t.name.rsplit(':').next().unwrap_or(&t.name);
    let is_result = |l: &str| {
        let l = l.trim_start_matches("# ");
        ktap::parse_result(l).is_some_and(|(_, n, _)| n == sub || n.ends_with(&format!(": {sub}")))
    };
    let Some(end) = log.iter().position(|l| is_result(l)) else {
        return vec![];
    };
    let start = log[..end]
        .iter()
        .rposition(|l| {
            l.contains(&format!("RUN           {sub}"))
                || ktap::parse_result(l.trim_start_matches("# ")).is_some()
        })
        .map_or(end, |i| i + (!l_is_run(&log[i], sub)) as usize);
    log[start..=end].to_vec()
}

/// Test selectors (`FIXTURE` or `FIXTURE.TEST`) that no result of `results`
/// (`program:FIXTURE.TEST`) answers: a misspelt selector would otherwise run nothing
/// and pass.
fn unmatched<'a>(selectors: &'a [String], results: &[TestResult]) -> Vec<&'a str> {
    selectors
        .iter()
        .filter(|sel| {
            !results.iter().any(|r| {
                let t = r.name.split_once(':').map_or("", |(_, t)| t);
                t == sel.as_str()
                    || t.strip_prefix(sel.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
        })
        .map(String::as_str)
        .collect()
}

fn l_is_run(l: &str, sub: &str) -> bool {
    l.contains(&format!("RUN           {sub}"))
}

/// Boots once and runs the suite; returns the leaf results of that boot and
/// the console excerpts of its failed tests.
fn check_one(
    a: &CheckArgs,
    driver: &str,
    device: &Device,
    slot: &Slot,
) -> (Vec<TestResult>, Vec<Failure>) {
    let cfg = config(&a.vm, driver, device, "check", slot);
    let tag = slot.tag(driver, device);
    eprintln!(
        ">> boot: driver {driver}, device {} ({} accel)",
        device.name(),
        a.vm.accel
    );
    let pb = spinner("booting", slot);
    let mut vm = match Vm::start(&cfg) {
        Ok(vm) => vm,
        Err(e) => return (vec![fail("boot", e.to_string())], vec![]),
    };
    let mut results = Vec::new();
    let Some(booted) = vm.wait_for("@@BOOTED", Duration::from_secs(300)) else {
        vm.finish(Duration::from_secs(1));
        let why = format!("no @@BOOTED line; console in {}", vm.log_path.display());
        return (vec![fail("boot", why)], vec![]);
    };
    say(
        &pb,
        format!(
            "   {tag}{booted} ({:.1}s)",
            vm.started.elapsed().as_secs_f64()
        ),
    );
    pb.set_message("running the tests");

    // Run until the guest powers off. A test that shows no result line for
    // test_timeout seconds is a hang: stop the guest.
    let mut last_progress = Instant::now();
    let mut last_result = Instant::now();
    let mut done = false;
    let mut powered_off = false;
    let mut verdict = None;
    loop {
        match vm.next_line(Duration::from_secs(1)) {
            Ok(Some(l)) => {
                let l = l.to_string();
                let content = l.trim_start_matches("# ");
                let result = ktap::parse_result(content).is_some();
                if result {
                    last_progress = Instant::now();
                    // A kselftest's result, with how long it took: where make check's time goes.
                    if l.starts_with("# ") {
                        let took = last_result.elapsed().as_secs_f64();
                        say(&pb, format!("   {tag}{content} ({took:.1}s)"));
                    }
                    last_result = Instant::now();
                }
                // The spinner names the test that runs or the last result.
                if result || content.contains(" RUN ") {
                    pb.set_message(content.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                if l.starts_with("@@KSFT-DONE") {
                    done = true;
                    say(
                        &pb,
                        format!("   {tag}{l} ({:.1}s)", vm.started.elapsed().as_secs_f64()),
                    );
                    pb.set_message("powering off");
                    last_progress = Instant::now();
                }
                if l.starts_with("@@POWEROFF") {
                    powered_off = true;
                    break;
                }
            }
            Ok(None) => {}
            Err(()) => break,
        }
        if last_progress.elapsed() > Duration::from_secs(a.test_timeout) {
            verdict = Some(format!(
                "no test result for {}s: killed the guest",
                a.test_timeout
            ));
            break;
        }
    }
    if powered_off {
        // The kernel's last words are "reboot: Power down" or, without ACPI, "reboot: Power
        // off not available: System halted instead" (QEMU then keeps running): keep the
        // shutdown messages for the log scan, then stop QEMU.
        vm.wait_for("reboot: ", Duration::from_secs(10));
        vm.finish(Duration::from_millis(200));
    } else {
        vm.finish(Duration::from_secs(5));
    }
    say(
        &pb,
        format!("   {tag}done ({:.1}s)", vm.started.elapsed().as_secs_f64()),
    );
    pb.finish_and_clear();
    // KUnit runs in the kernel before init; the kselftests after it.
    let init = vm
        .log
        .iter()
        .position(|l| l.starts_with("@@BOOTED"))
        .unwrap_or(0);
    results.extend(ktap::parse_kunit(&vm.log[..init]));
    results.extend(ktap::parse(&vm.log[init..]));
    for sel in unmatched(&device.tests, &results) {
        results.push(fail(
            &format!("selected: {sel}"),
            "no test of that name ran (vb.tests)",
        ));
    }
    if !done {
        let why = verdict.unwrap_or_else(|| "the guest stopped before the suite finished".into());
        results.push(fail(
            "suite finished",
            format!("{why}; console in {}", vm.log_path.display()),
        ));
    }
    results.push(log_clean(&vm));
    let marker = |m: &str| vm.log.iter().any(|l| l.starts_with(m));
    // kmemleak allocates its own metadata without dipping into reserves; under the OOM
    // tests' pressure that can fail, and kmemleak then turns itself off. That is no
    // verdict on the driver, but no report either: say so.
    let starved = vm.log.iter().any(|l| {
        l.contains("kmemleak: Cannot allocate a kmemleak_object")
            || l.contains("kmemleak: Memory pool empty")
    });
    if device.kmemleak && marker("@@KMEMLEAK-OFF") && starved {
        results.push(TestResult {
            name: "kmemleak clean".into(),
            status: Status::Skip,
            note: "kmemleak turned itself off: it could not allocate its metadata under the \
                   tests' memory pressure"
                .into(),
        });
    } else if device.kmemleak && marker("@@KMEMLEAK-OFF") {
        results.push(fail(
            "kmemleak clean",
            "kmemleak was off in the guest (disabled itself, or a kernel without it: \
             kmemleak=off)",
        ));
    } else if device.kmemleak && done && !marker("@@KMEMLEAK-END") {
        results.push(fail("kmemleak clean", "no kmemleak report after the suite"));
    }
    if marker("@@KMEMLEAK-END") {
        let leaks = logscan::kmemleak(&vm.log);
        if leaks.is_empty() {
            results.push(TestResult {
                name: "kmemleak clean".into(),
                status: Status::Pass,
                note: String::new(),
            });
        } else {
            eprintln!("!! kmemleak ({}):", vm.log_path.display());
            for l in &leaks {
                eprintln!("   | {l}");
            }
            results.push(fail("kmemleak clean", "suspected leaks"));
        }
    }
    let mut failures = Vec::new();
    for t in results.iter().filter(|t| t.status == Status::Fail) {
        let lines = excerpt(&vm.log, t);
        if !lines.is_empty() {
            eprintln!("!! {} failed ({}):", t.name, vm.log_path.display());
            for l in &lines {
                eprintln!("   | {l}");
            }
            failures.push(Failure {
                test: t.name.clone(),
                log: vm.log_path.clone(),
                lines,
            });
        }
    }
    (results, failures)
}

/// QMP `system_reset`, then waits until the new boot is idle.
fn reset_and_wait(vm: &mut Vm) -> Result<(), String> {
    vm.qmp
        .lock()
        .unwrap()
        .system_reset()
        .map_err(|e| e.to_string())?;
    wait_idle(vm)
}

/// Waits until the guest (re)booted, loaded the driver and is idle.
fn wait_idle(vm: &mut Vm) -> Result<(), String> {
    vm.wait_for("@@IDLE", Duration::from_secs(300))
        .map(|_| ())
        .ok_or_else(|| {
            format!(
                "the guest did not come up; console in {}",
                vm.log_path.display()
            )
        })
}

/// Waits until `last-update` of guest-stats advanced twice; returns the stats.
fn fresh_stats(vm: &Vm) -> Result<serde_json::Value, String> {
    let mut q = vm.qmp.lock().unwrap();
    let (_, first) = q.guest_stats().map_err(|e| e.to_string())?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let (stats, last) = q.guest_stats().map_err(|e| e.to_string())?;
        if last >= first + 2 {
            return Ok(stats);
        }
        drop(q);
        std::thread::sleep(Duration::from_millis(100));
        q = vm.qmp.lock().unwrap();
    }
    Err(format!("guest-stats last-update stuck at {first}"))
}

/// `stat-total-memory` of a fresh guest-stats update.
fn fresh_total(vm: &Vm) -> Result<i64, String> {
    let s = fresh_stats(vm)?;
    s["stat-total-memory"]
        .as_i64()
        .filter(|t| *t > 0)
        .ok_or_else(|| format!("no stat-total-memory in {s}"))
}

/// Sets the balloon target and waits until QEMU's `actual` equals it.
fn reach(vm: &Vm, target: i64) -> Result<(), String> {
    vm.qmp
        .lock()
        .unwrap()
        .set_target(target)
        .map_err(|e| e.to_string())?;
    wait_actual(vm, target)
}

/// Waits until QEMU's `actual` equals `target`.
fn wait_actual(vm: &Vm, target: i64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let actual = vm.qmp.lock().unwrap().actual().map_err(|e| e.to_string())?;
        if actual == target {
            return Ok(());
        }
        if start.elapsed() > agent::TARGET_TIMEOUT {
            return Err(format!(
                "actual {} MiB, target {} MiB after {}s",
                actual >> 20,
                target >> 20,
                agent::TARGET_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the guest may take to power off before it counts as hung.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// The balloons of the host checks: reset with one, reset while inflating to another.
const RESET_BALLOON: i64 = 128 << 20;
const MID_BALLOON: i64 = 512 << 20;
/// The reset comes once the balloon is at least this big on its way to MID_BALLOON.
const MID_RESET_AT: i64 = 256 << 20;

/// Host-side checks that need a whole guest, in one idle boot: stats keep flowing across
/// `system_reset`; QEMU keeps the balloon target across a reset (with the balloon inflated
/// and while it inflates) and the driver of the new boot inflates to it again, which the
/// guest's own MemTotal in guest-stats confirms (QEMU's `actual` alone could be a stale
/// value from before the reset); the guest powers off with the balloon inflated.
fn host_checks(a: &VmArgs, driver: &str, device: &Device, slot: &Slot) -> Vec<TestResult> {
    let cfg = config(a, driver, device, "idle", slot);
    eprintln!(
        ">> boot: driver {driver}, device {}: host checks",
        device.name()
    );
    let pb = spinner("booting", slot);
    let mut vm = match Vm::start(&cfg) {
        Ok(vm) => vm,
        Err(e) => return vec![fail("host: boot", e.to_string())],
    };
    let ram = (a.mem << 20) as i64;
    // MemTotal drops by the balloon unless the guest may take it back on OOM.
    let shrinks = if device.deflate_on_oom { 0 } else { 1 };
    let mut results = Vec::new();
    let mut row = |name: &str, r: Result<String, String>| {
        results.push(match r {
            Ok(note) => TestResult {
                name: name.into(),
                status: Status::Pass,
                note,
            },
            Err(e) => fail(name, e),
        })
    };

    let mut total0 = 0;
    let booted = (|| -> Result<(), String> {
        wait_idle(&mut vm)?;
        vm.qmp
            .lock()
            .unwrap()
            .qom_set("guest-stats-polling-interval", 1.into())
            .map_err(|e| e.to_string())?;
        total0 = fresh_total(&vm)?;
        Ok(())
    })();
    if let Err(e) = booted {
        row("host: boot", Err(e));
    } else {
        // 1. system_reset with the balloon inflated.
        pb.set_message("system_reset with the balloon inflated");
        let mut reset = || -> Result<(i64, i64), String> {
            reach(&vm, ram - RESET_BALLOON)?;
            let before = fresh_total(&vm)?;
            reset_and_wait(&mut vm)?;
            let after = fresh_total(&vm)?;
            Ok((before, after))
        };
        let r = reset();
        row(
            "host: stats flow after system_reset",
            r.as_ref().map(|_| String::new()).map_err(String::clone),
        );
        let settled = r.and_then(|(before, _)| {
            wait_actual(&vm, ram - RESET_BALLOON)?;
            let after = fresh_total(&vm)?;
            if after != before || before != total0 - shrinks * RESET_BALLOON {
                return Err(format!(
                    "guest MemTotal {} MiB before the reset with {} MiB ballooned, {} MiB after \
                     (full: {} MiB)",
                    before >> 20,
                    RESET_BALLOON >> 20,
                    after >> 20,
                    total0 >> 20
                ));
            }
            Ok(String::new())
        });
        row("host: balloon re-inflates after system_reset", settled);

        // 2. system_reset while the balloon inflates.
        pb.set_message("system_reset while the balloon inflates");
        let mid = (|| -> Result<String, String> {
            let target = ram - MID_BALLOON;
            vm.qmp
                .lock()
                .unwrap()
                .set_target(target)
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            let at = loop {
                let actual = vm.qmp.lock().unwrap().actual().map_err(|e| e.to_string())?;
                if actual <= ram - MID_RESET_AT && actual > target {
                    break actual;
                }
                if actual == target || start.elapsed() > agent::TARGET_TIMEOUT {
                    return Err(format!(
                        "did not see the balloon between {} and {} MiB (at {} MiB)",
                        MID_RESET_AT >> 20,
                        MID_BALLOON >> 20,
                        (ram - actual) >> 20
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            reset_and_wait(&mut vm)?;
            wait_actual(&vm, target)?;
            let after = fresh_total(&vm)?;
            if after != total0 - shrinks * MID_BALLOON {
                return Err(format!(
                    "guest MemTotal {} MiB with {} MiB ballooned (full: {} MiB)",
                    after >> 20,
                    MID_BALLOON >> 20,
                    total0 >> 20
                ));
            }
            Ok(format!("reset at {} MiB", (ram - at) >> 20))
        })();
        row(
            "host: balloon reaches its target after system_reset mid-inflate",
            mid,
        );

        // 3. Power-off with the balloon inflated (to MID_BALLOON, or whatever is left of it).
        pb.set_message("poweroff with the balloon inflated");
        let off = (|| -> Result<String, String> {
            vm.console_write("poweroff").map_err(|e| e.to_string())?;
            let took = vm.wait_exit(POWEROFF_TIMEOUT).ok_or(format!(
                "QEMU still runs {}s after the guest was told to power off",
                POWEROFF_TIMEOUT.as_secs()
            ))?;
            say(
                &pb,
                format!(
                    "   poweroff with the balloon inflated: QEMU exited after {} ms",
                    took.as_millis()
                ),
            );
            Ok(format!("{} ms", took.as_millis()))
        })();
        row("host: poweroff with the balloon inflated", off);
    }
    vm.finish(Duration::from_secs(1));
    pb.finish_and_clear();
    results.push(log_clean(&vm));
    results
}

/// The "kernel log clean" result of a boot, printing any report found.
fn log_clean(vm: &Vm) -> TestResult {
    let reports = logscan::kernel_reports(&vm.log);
    for r in &reports {
        eprintln!("!! kernel report at {}:{}:", vm.log_path.display(), r.line);
        for l in &r.text {
            eprintln!("   | {l}");
        }
    }
    if reports.is_empty() {
        TestResult {
            name: "kernel log clean".into(),
            status: Status::Pass,
            note: String::new(),
        }
    } else {
        fail("kernel log clean", format!("{} report(s)", reports.len()))
    }
}

/// What one boot adds to the report.
#[derive(Default)]
struct Outcome {
    rows: Vec<Row>,
    failures: Vec<Failure>,
    flaky: Vec<Failure>,
}

/// One boot of `check`: a driver with a device configuration, or the host checks.
enum Job<'a> {
    Tests(&'a str, &'a Device),
    Host(&'a str, &'a Device),
}

/// Boots `driver` with `device` and runs its tests. A boot that failed runs once more: a
/// failure that does not come back is reported as flaky (a race to look into), not hidden;
/// one that does fails.
fn check_boot(a: &CheckArgs, driver: &str, device: &Device, slot: &Slot) -> Outcome {
    let mut out = Outcome::default();
    let (mut results, mut failed) = check_one(a, driver, device, slot);
    let first: Vec<TestResult> = results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .cloned()
        .collect();
    if !first.is_empty() && !a.no_retry {
        eprintln!(
            ">> {} failed: booting {driver}, {} once more",
            first
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            device.name()
        );
        let (again, mut failed_again) = check_one(a, driver, device, slot);
        if again.iter().all(|r| r.status != Status::Fail) {
            results = again;
            for r in &first {
                let note = format!("flaky: failed on the first boot: {}", r.note);
                match results.iter_mut().find(|x| x.name == r.name) {
                    Some(x) => x.note = note,
                    None => results.push(TestResult {
                        name: r.name.clone(),
                        status: Status::Pass,
                        note,
                    }),
                }
            }
            out.flaky.append(&mut failed);
        } else {
            failed.append(&mut failed_again);
        }
    }
    out.failures = failed;
    out.rows = rows(driver, device, results);
    out
}

fn rows(driver: &str, device: &Device, results: Vec<TestResult>) -> Vec<Row> {
    results
        .into_iter()
        .map(|result| Row {
            driver: driver.into(),
            device: device.name(),
            result,
        })
        .collect()
}

fn check(a: &CheckArgs) -> ExitCode {
    let start = Instant::now();
    // Every configuration of every driver, then the host checks of each driver.
    let mut jobs = Vec::new();
    for driver in &a.vm.drivers {
        jobs.extend(a.vm.devices.iter().map(|d| Job::Tests(driver, d)));
        jobs.push(Job::Host(driver, &a.vm.devices[0]));
    }
    // `boots` workers take the next job in that order; the report keeps the order.
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<Outcome>>> = Mutex::new(jobs.iter().map(|_| None).collect());
    let parallel = a.boots > 1;
    std::thread::scope(|s| {
        for w in 0..a.boots {
            let (jobs, next, done) = (&jobs, &next, &done);
            s.spawn(move || {
                let slot = Slot {
                    sock_dir: if parallel {
                        a.vm.log_dir.join(format!("boot{w}"))
                    } else {
                        a.vm.log_dir.clone()
                    },
                    parallel,
                };
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else { break };
                    let outcome = match job {
                        Job::Tests(driver, device) => check_boot(a, driver, device, &slot),
                        Job::Host(driver, device) => Outcome {
                            rows: rows(driver, device, host_checks(&a.vm, driver, device, &slot)),
                            ..Outcome::default()
                        },
                    };
                    done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
                }
            });
        }
    });
    let mut rows = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut flaky: Vec<Failure> = Vec::new();
    for o in done
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
    {
        rows.extend(o.rows);
        failures.extend(o.failures);
        flaky.extend(o.flaky);
    }
    let w = |f: &dyn Fn(&Row) -> usize, min| rows.iter().map(f).max().unwrap_or(0).max(min);
    let (wd, wv, wt) = (
        w(&|r| r.driver.len(), 6),
        w(&|r| r.device.len(), 6),
        w(&|r| r.result.name.len(), 4),
    );
    println!(
        "\n{:wd$}  {:wv$}  {:wt$}  result",
        "driver", "device", "test"
    );
    for r in &rows {
        let s = match r.result.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        let note = if r.result.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", r.result.note)
        };
        println!(
            "{:wd$}  {:wv$}  {:wt$}  {s}{note}",
            r.driver, r.device, r.result.name
        );
    }
    let count = |s| rows.iter().filter(|r| r.result.status == s).count();
    let (p, f, s) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    );
    println!(
        "\nconsole logs in {}; suite time {:.0}s",
        a.vm.log_dir.display(),
        start.elapsed().as_secs_f64()
    );
    let skipped = if s > 0 {
        format!(", {s} skipped")
    } else {
        String::new()
    };
    for x in &flaky {
        println!(
            "\nflaky, failed on the first boot only: {} ({}):",
            x.test,
            x.log.display()
        );
        let skip = x.lines.len().saturating_sub(FAILURE_LINES);
        for l in &x.lines[skip..] {
            println!("  | {l}");
        }
    }
    if f > 0 {
        // Again at the end, where a truncated CI log still shows it.
        println!("\nfailed:");
        for r in rows.iter().filter(|r| r.result.status == Status::Fail) {
            println!(
                "  {}  {}  {}  ({})",
                r.driver, r.device, r.result.name, r.result.note
            );
        }
        for x in &failures {
            println!("\n{} ({}):", x.test, x.log.display());
            // The assertions come last: keep the end of a long excerpt.
            let skip = x.lines.len().saturating_sub(FAILURE_LINES);
            for l in &x.lines[skip..] {
                println!("  | {l}");
            }
        }
    }
    let flaky = rows
        .iter()
        .filter(|r| r.result.note.starts_with("flaky"))
        .count();
    let flaky = if flaky > 0 {
        format!(" ({flaky} of them flaky: failed once, passed on a second boot)")
    } else {
        String::new()
    };
    println!("{p} passed{flaky}, {f} failed{skipped}");
    if f > 0 || p == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Latest `@@GUEST MemTotal:.. MemFree:.. Balloon:..` values, in KiB.
fn guest_view(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("@@GUEST ")?;
    let get = |k: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((get("MemTotal:")?, get("Balloon:")?))
}

/// How far the balloon has moved from `from` towards `to` (bytes): (moved, distance) in MiB,
/// with a move the wrong way counted as none and one past `to` as all the way.
fn moved_mib(from: u64, now: u64, to: u64) -> (u64, u64) {
    let distance = from.abs_diff(to);
    let moved = if (now >= from) == (to >= from) {
        from.abs_diff(now).min(distance)
    } else {
        0
    };
    (moved >> 20, distance >> 20)
}

/// The guest's own view, from its latest `@@GUEST` line.
fn guest_text(guest: Option<(u64, u64)>) -> String {
    match guest {
        Some((total, balloon)) => format!(
            "guest Balloon {:4} MiB, MemTotal {:5} MiB",
            balloon / 1024,
            total / 1024
        ),
        None => "guest: no sample yet".into(),
    }
}

/// Boots in demo mode; returns the bound driver ("none" if none) and the VM.
fn demo_boot(a: &VmArgs, driver: &str) -> Result<(String, Vm), String> {
    let cfg = config(a, driver, &a.devices[0], "demo", &Slot::alone(a));
    println!(
        "booting a {} MiB guest with {driver} ({} accel, device {})...",
        a.mem,
        a.accel,
        a.devices[0].name()
    );
    let mut vm = Vm::start(&cfg).map_err(|e| e.to_string())?;
    let bound = vm
        .wait_for("@@BOUND", Duration::from_secs(300))
        .ok_or(format!(
            "the guest did not come up; console in {}",
            vm.log_path.display()
        ))?;
    let name = bound
        .split_whitespace()
        .nth(1)
        .unwrap_or("none")
        .to_string();
    println!(
        "guest up after {:.1}s, balloon device bound to: {name}",
        vm.started.elapsed().as_secs_f64()
    );
    Ok((name, vm))
}

/// The demo's bar on stdout for one move of the balloon: MiB moved of the way to the target,
/// host and guest views in the message. Hidden where stdout is no terminal.
fn demo_bar(distance_mib: u64) -> ProgressBar {
    let style =
        ProgressStyle::with_template("  {secs}  [{bar:20}] {pos:>3}/{len} MiB moved  {msg}")
            .expect("a valid template")
            .progress_chars("#>.")
            .with_key("secs", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = write!(w, "{:5.1}s", s.elapsed().as_secs_f64());
            });
    ProgressBar::with_draw_target(Some(distance_mib), ProgressDrawTarget::stdout())
        .with_style(style)
}

fn demo(a: &DemoArgs) -> ExitCode {
    let mut driver = a.vm.drivers[0].clone();
    let (mut bound, mut vm) = match demo_boot(&a.vm, &driver) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if bound != driver {
        println!(
            "\n{driver} did not bind to the balloon device: our driver is not implemented yet."
        );
        let Some(fb) = &a.fallback else {
            return ExitCode::SUCCESS;
        };
        println!("Showing the same demo with {fb}, the C driver, instead.\n");
        drop(vm);
        driver = fb.clone();
        match demo_boot(&a.vm, &driver) {
            Ok((b, v)) => (bound, vm) = (b, v),
            Err(e) => {
                eprintln!("demo: {e}");
                return ExitCode::FAILURE;
            }
        }
        if bound != driver {
            eprintln!(
                "demo: {driver} did not bind either; console in {}",
                vm.log_path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let mib = 1u64 << 20;
    let ram = a.vm.mem * mib;
    let steps = [ram - 256 * mib, ram - 512 * mib, ram - 256 * mib, ram];
    let mut guest: Option<(u64, u64)> = None;
    for target in steps {
        println!(
            "\nhost: balloon target {} MiB (balloon {} MiB)",
            target / mib,
            (ram - target) / mib
        );
        let qmp = vm.qmp.clone();
        if let Err(e) = qmp.lock().unwrap().set_target(target as i64) {
            eprintln!("demo: QMP balloon: {e}");
            return ExitCode::FAILURE;
        }
        let start = Instant::now();
        let from = ram - (qmp.lock().unwrap().actual().unwrap_or(0) as u64).min(ram);
        let want = ram - target;
        let pb = demo_bar(moved_mib(from, from, want).1);
        let mut last_print = Instant::now() - Duration::from_secs(1);
        loop {
            while let Ok(Some(l)) = vm.next_line(Duration::from_millis(10)) {
                if let Some(g) = guest_view(l) {
                    guest = Some(g);
                }
            }
            let actual = qmp.lock().unwrap().actual().unwrap_or(-1) as u64;
            let (moved, distance) = moved_mib(from, ram - actual.min(ram), want);
            let reached = actual == target && guest.is_some_and(|g| g.1 * 1024 == want);
            let host = format!("host actual {:5} MiB", actual / mib);
            if !pb.is_hidden() {
                pb.set_position(moved);
                pb.set_message(format!("{host}  |  {}", guest_text(guest)));
            } else if reached || last_print.elapsed() > Duration::from_millis(500) {
                // No terminal: a line every 500 ms, as a log can keep them.
                println!(
                    "  {:5.1}s  {host}  moved {moved:3}/{distance} MiB  |  {}",
                    start.elapsed().as_secs_f64(),
                    guest_text(guest)
                );
                last_print = Instant::now();
            }
            if reached {
                pb.finish();
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                pb.abandon();
                eprintln!("demo: the balloon did not reach the target in 120s");
                return ExitCode::FAILURE;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\n{driver}: inflated and deflated; every page is back in the guest.");
    ExitCode::SUCCESS
}

/// `@@BENCH DRIVER inflate_ms=N deflate_ms=N`
/// The benchmark: both drivers take turns in one boot (see `bench.rs` and init's `bench`).
/// The first driver is the reference the others are compared with.
fn bench(a: &BenchArgs) -> ExitCode {
    let limit = match &a.discard_prog {
        Some(p) => match bench::discard_limit(p, 1024) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("bench: host discard limit: {e}");
                None
            }
        },
        None => None,
    };
    let mut device = a.vm.devices[0].clone();
    device.guest_args.push(format!("vb.rounds={}", a.rounds));
    let cfg = config(
        &a.vm,
        &a.vm.drivers.join(","),
        &device,
        "bench",
        &Slot::alone(&a.vm),
    );
    eprintln!(
        ">> bench: {} MiB guest, {} CPUs, drivers {}, {} rounds, {} accel",
        a.vm.mem,
        cfg.cpus,
        a.vm.drivers.join(", "),
        a.rounds,
        a.vm.accel
    );
    let mut vm = match Vm::start(&cfg) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    // About 40 s a round per driver under TCG; the guest halts after its last run.
    let limit_s = 120 + 120 * a.rounds * a.vm.drivers.len() as u64;
    let done = vm
        .wait_for("@@BENCH-DONE", Duration::from_secs(limit_s))
        .is_some();
    vm.finish(Duration::from_secs(1));
    for l in vm.log.iter().filter(|l| l.starts_with("@@HOST-ERROR")) {
        eprintln!("bench: {l}");
    }
    let runs: Vec<bench::Run> = vm.log.iter().filter_map(|l| bench::parse_line(l)).collect();
    let missing: Vec<&String> =
        a.vm.drivers
            .iter()
            .filter(|d| !runs.iter().any(|r| &r["drv"] == *d))
            .collect();
    if !done || !missing.is_empty() {
        eprintln!(
            "bench: {}; console in {}",
            if done {
                format!("no result for {missing:?}")
            } else {
                "the guest did not finish".into()
            },
            vm.log_path.display()
        );
        return ExitCode::FAILURE;
    }
    let table = bench::table(&runs, &a.vm.drivers);
    println!(
        "\n{} rounds, {} MiB guest, {} vCPUs, {} accel; {} runs",
        a.rounds,
        a.vm.mem,
        cfg.cpus,
        a.vm.accel,
        runs.len()
    );
    print!("{}", table.print(limit));
    let out = &a.out_dir();
    let traces = vm.traces.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let written = std::fs::create_dir_all(out)
        .and_then(|_| {
            let json = table.json(&runs, limit);
            std::fs::write(
                out.join("bench.json"),
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            )
        })
        .and_then(|_| std::fs::write(out.join("bench.csv"), bench::csv(&runs)))
        .and_then(|_| std::fs::write(out.join("bench.txt"), table.print(limit)))
        .map_err(|e| e.to_string())
        .and_then(|_| bench::plot(&out.join("bench.svg"), &runs, &a.vm.drivers, &traces));
    match written {
        Ok(()) => {
            println!(
                "data: {0}/bench.json, {0}/bench.csv; plot: {0}/bench.svg",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: writing {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Check(a) => check(&a),
        Cmd::Demo(a) => demo(&a),
        Cmd::Bench(a) => bench(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn moved_both_ways() {
        let m = 1 << 20;
        assert_eq!(moved_mib(0, 0, 100 * m), (0, 100));
        assert_eq!(moved_mib(0, 50 * m, 100 * m), (50, 100));
        assert_eq!(moved_mib(512 * m, 384 * m, 256 * m), (128, 256));
        assert_eq!(moved_mib(512 * m, 600 * m, 256 * m), (0, 256));
        assert_eq!(moved_mib(512 * m, 200 * m, 256 * m), (256, 256));
        assert_eq!(moved_mib(7, 7, 7), (0, 0));
    }

    #[test]
    fn guest_sample() {
        assert_eq!(guest_text(None), "guest: no sample yet");
        assert_eq!(
            guest_text(Some((768 * 1024, 256 * 1024))),
            "guest Balloon  256 MiB, MemTotal   768 MiB"
        );
    }

    #[test]
    fn guest_line() {
        assert_eq!(
            guest_view("@@GUEST MemTotal:1000 MemFree:500 Balloon:128 "),
            Some((1000, 128))
        );
        assert_eq!(guest_view("other"), None);
    }

    #[test]
    fn selectors_that_ran_nothing() {
        let r = |n: &str| TestResult {
            name: n.into(),
            status: Status::Pass,
            note: String::new(),
        };
        let results = vec![
            r("balloon_test:balloon.driver_bound"),
            r("balloon_mm_test:oom.kills_without_deflate_on_oom"),
            r("kunit:rust_kernel_balloon.empty"),
            r("balloon_mm_test"),
        ];
        let sel = s(&[
            "balloon",
            "oom.kills_without_deflate_on_oom",
            "oom.deflates",
            "ballo",
            "hint",
            "rust_kernel_balloon",
        ]);
        assert_eq!(
            unmatched(&sel, &results),
            vec!["oom.deflates", "ballo", "hint"]
        );
    }

    #[test]
    fn excerpt_of_failed_subtest() {
        let log = s(&[
            "# #  RUN           balloon.a ...",
            "# #            OK  balloon.a",
            "# ok 1 balloon.a",
            "# #  RUN           balloon.b ...",
            "# # balloon_test.c:10:b:Expected 1 (1) == 2 (2)",
            "# not ok 2 balloon.b",
        ]);
        let t = fail("balloon_test:balloon.b", "");
        let e = excerpt(&log, &t);
        assert_eq!(e.first().unwrap(), "# #  RUN           balloon.b ...");
        assert_eq!(e.len(), 3);
    }
}
