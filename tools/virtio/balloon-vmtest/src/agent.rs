// SPDX-License-Identifier: GPL-2.0
//! The host end of the org.kselftest.balloon port: one request line from a
//! guest test, one answer line back, always (`ok ...` or `err ...`), so a
//! guest test never blocks on a host that gave up. A request may start with
//! an id (`#123.4 target 1024`); the answer then starts with the same id, so
//! a guest test never takes an answer meant for an earlier, killed test.
//!
//! - `ram`: guest RAM in bytes as configured
//! - `actual`: `query-balloon` actual, bytes
//! - `device`: `deflate-on-oom=0/1 free-page-reporting=0/1 free-page-hint=0/1 page-poison=0/1
//!   stats-interval=N`
//! - `target BYTES`: sets the balloon and waits for actual == BYTES: `ACTUAL ms=ELAPSED`
//! - `bench-target BYTES`: as `target`, timed for the benchmark: `ms=Q event_ms=E vcpu_ms=V
//!   qemu_ms=O trace=N` (see `bench.rs`)
//! - `set BYTES`: sets the balloon target and answers at once
//! - `stats-cadence INTERVAL SECONDS`: polls guest-stats at INTERVAL s for SECONDS s: `updates=N
//!   min-gap=G max-gap=H`
//! - `stats`: a fresh `guest-stats` as `stat-NAME=VALUE ...`; polling goes back to the device's
//!   interval afterwards
//! - `rss`: QEMU's resident set size, bytes
//! - `migrate`: migrates to a sink, resumes; bytes transferred
//! - `migrate-start BPS`: sets max-bandwidth to BPS bytes/s, starts a migration to a sink, answers
//!   at once; the VM resumes by itself when it completes
//! - `migrate-status`: `status=S transferred=N normal=N duplicate=N remaining=N`
//! - `migrate-wait BPS`: sets max-bandwidth to BPS (0: unchanged), waits for the end, resumes, puts
//!   the bandwidth back: `status=completed transferred=N ... ms=WAITED`
//! - `reset`: answers, then resets the machine
//! - `wait MS`: answers after MS milliseconds
//! - `pause MS`: stops the VM (QMP `stop`), waits MS ms (at most 60000), resumes it (`cont`):
//!   `ms=STOPPED`; the guest is frozen meanwhile, so the answer comes after `cont`
//! - `wake-after-suspend`: answers at once; a host thread polls `query-status` until the VM is
//!   `suspended` (the guest entered ACPI S3) and sends `system_wakeup` (gives up after 60 s)
//! - `wake-idle MS`: answers at once; a host thread presses the ACPI power button MS ms (100 to
//!   60000) later and every MS ms after that, until `wake-status` (at most 60 s): the guest's wake
//!   source from suspend-to-idle, which QEMU cannot see
//! - `wake-status`: stops the wake thread and reports it: `woke=0/1 ms=N presses=N` (`ms`: from the
//!   wake request to `system_wakeup` or the first press; -1 when none)
//! - `unplug`: `device_del` of the balloon (ACPI PCI hotplug), waits for its `DEVICE_DELETED` (60
//!   s): `ms=ELAPSED`
//! - `plug`: `device_add` of a balloon with the boot's properties: `ms=ELAPSED` (the guest binds it
//!   by itself)

use crate::bench::{self, Traces};
use crate::qmp::Monitor;
use crate::vm::{Device, BALLOON_DRIVER, BALLOON_ID};
use serde_json::Value;
use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `target` waits for the guest to reach it.
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stats` waits for two fresh updates.
const STATS_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a migration may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);
/// Where migrations go: the VM stays here and resumes.
const MIGRATE_SINK: &str = "exec:cat > /dev/null";
/// The longest `pause`.
const PAUSE_MAX_MS: u64 = 300_000;
/// How long a wake thread waits for the guest to suspend, or presses the power button.
const WAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `unplug` waits for the guest to release the device.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq)]
pub enum Request {
    Ram,
    Actual,
    Device,
    Target(i64),
    BenchTarget(i64),
    Set(i64),
    StatsCadence(u32, u32),
    Stats,
    Rss,
    Migrate,
    MigrateStart(u64),
    MigrateStatus,
    MigrateWait(u64),
    Reset,
    Wait(u64),
    Pause(u64),
    WakeAfterSuspend,
    WakeIdle(u64),
    WakeStatus,
    Unplug,
    Plug,
}

pub fn parse(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = || -> Result<i64, String> {
        match words[..] {
            [cmd, n] => n.parse::<i64>().map_err(|e| format!("'{cmd}': {e}")),
            [cmd, ..] => Err(format!("'{cmd}' takes one number")),
            [] => Err("empty request".into()),
        }
    };
    let plain = |r: Request| {
        if words.len() == 1 {
            Ok(r)
        } else {
            Err(format!("'{}' takes no argument", words[0]))
        }
    };
    match words.first().copied().unwrap_or("") {
        "ram" => plain(Request::Ram),
        "actual" => plain(Request::Actual),
        "device" => plain(Request::Device),
        "stats" => plain(Request::Stats),
        "rss" => plain(Request::Rss),
        "migrate" => plain(Request::Migrate),
        "migrate-status" => plain(Request::MigrateStatus),
        "migrate-start" => match num()? {
            n if n > 0 => Ok(Request::MigrateStart(n as u64)),
            n => Err(format!("migrate-start {n}: must be a positive bandwidth")),
        },
        "migrate-wait" => match num()? {
            n if n >= 0 => Ok(Request::MigrateWait(n as u64)),
            n => Err(format!("migrate-wait {n}: bandwidth must not be negative")),
        },
        "reset" => plain(Request::Reset),
        "pause" => match num()? {
            n if (1..=PAUSE_MAX_MS as i64).contains(&n) => Ok(Request::Pause(n as u64)),
            n => Err(format!("pause {n}: 1 to {PAUSE_MAX_MS} ms")),
        },
        "wake-after-suspend" => plain(Request::WakeAfterSuspend),
        "wake-idle" => match num()? {
            n if (100..=WAKE_TIMEOUT.as_millis() as i64).contains(&n) => {
                Ok(Request::WakeIdle(n as u64))
            }
            n => Err(format!(
                "wake-idle {n}: 100 to {} ms",
                WAKE_TIMEOUT.as_millis()
            )),
        },
        "wake-status" => plain(Request::WakeStatus),
        "unplug" => plain(Request::Unplug),
        "plug" => plain(Request::Plug),
        "target" => match num()? {
            n if n > 0 => Ok(Request::Target(n)),
            n => Err(format!("target {n}: must be a positive number of bytes")),
        },
        "bench-target" => match num()? {
            n if n > 0 => Ok(Request::BenchTarget(n)),
            n => Err(format!(
                "bench-target {n}: must be a positive number of bytes"
            )),
        },
        "wait" => Ok(Request::Wait(num()?.max(0) as u64)),
        "set" => match num()? {
            n if n > 0 => Ok(Request::Set(n)),
            n => Err(format!("set {n}: must be a positive number of bytes")),
        },
        "stats-cadence" => match words[..] {
            [_, i, s] => match (i.parse::<u32>(), s.parse::<u32>()) {
                (Ok(i), Ok(s)) if i > 0 && s > 0 => Ok(Request::StatsCadence(i, s)),
                _ => Err("stats-cadence takes two positive numbers".into()),
            },
            _ => Err("stats-cadence takes INTERVAL SECONDS".into()),
        },
        _ => Err(format!("unknown request '{}'", line.trim())),
    }
}

struct Agent {
    qmp: Arc<Mutex<Monitor>>,
    ram: u64,
    device: Device,
    qemu_pid: u32,
    /// The balloon size over each `bench-target` change.
    traces: Traces,
    /// max-bandwidth before `migrate-start` changed it, put back by `migrate-wait`.
    saved_bandwidth: Cell<Option<u64>>,
    /// The thread that resumes the VM when the started migration ends.
    migration: Cell<Option<JoinHandle<io::Result<Value>>>>,
    /// The thread that wakes a suspended guest.
    wake: Cell<Option<Waker>>,
}

/// A wake thread and the flag that stops it.
struct Waker {
    thread: JoinHandle<io::Result<Woken>>,
    stop: Arc<AtomicBool>,
}

/// What a wake thread did.
#[derive(Debug, Default, PartialEq)]
pub struct Woken {
    /// From the request to `system_wakeup` or the first button press.
    pub ms: Option<u128>,
    /// Power button presses (suspend-to-idle).
    pub presses: u32,
}

/// The `wake-status` answer.
pub fn woken_line(w: &Woken) -> String {
    format!(
        "woke={} ms={} presses={}",
        w.ms.is_some() as u8,
        w.ms.map_or(-1, |m| m as i64),
        w.presses
    )
}

/// Sleeps `d` unless `stop` is set first; returns whether it was.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
    stop.load(Ordering::Relaxed)
}

/// Waits for the VM to enter ACPI S3 (run state `suspended`), then wakes it. The guest
/// cannot ask while it sleeps. Takes the monitor per command.
fn wake_after_suspend(qmp: Arc<Mutex<Monitor>>, stop: Arc<AtomicBool>) -> io::Result<Woken> {
    let start = Instant::now();
    while start.elapsed() < WAKE_TIMEOUT {
        if lock(&qmp).status()? == "suspended" {
            lock(&qmp).system_wakeup()?;
            return Ok(Woken {
                ms: Some(start.elapsed().as_millis()),
                presses: 0,
            });
        }
        if sleep_unless(&stop, Duration::from_millis(20)) {
            break;
        }
    }
    Ok(Woken::default())
}

/// Presses the power button every `every` until stopped: QEMU cannot tell when the guest
/// is in suspend-to-idle (it keeps running), and a press before that is an input event
/// nobody in the test guest listens to.
fn wake_idle(
    qmp: Arc<Mutex<Monitor>>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> io::Result<Woken> {
    let start = Instant::now();
    let mut w = Woken::default();
    while !sleep_unless(&stop, every) && start.elapsed() < WAKE_TIMEOUT {
        lock(&qmp).system_powerdown()?;
        w.ms.get_or_insert(start.elapsed().as_millis());
        w.presses += 1;
    }
    Ok(w)
}

/// Polls a running migration until it ends; resumes the VM when it completed (the guest
/// is paused then and could not ask for it) and returns the final `query-migrate`. Takes
/// the monitor per command, so the guest's other requests go on meanwhile.
fn watch_migration(qmp: Arc<Mutex<Monitor>>) -> io::Result<Value> {
    let start = Instant::now();
    loop {
        let v = lock(&qmp).query_migrate()?;
        match v.get("status").and_then(Value::as_str) {
            Some("completed") => {
                lock(&qmp).cont()?;
                return Ok(v);
            }
            Some(s @ ("failed" | "cancelled")) => {
                let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("");
                return Err(io::Error::other(format!("migration {s}: {why}")));
            }
            _ if start.elapsed() > MIGRATE_TIMEOUT => {
                let _ = lock(&qmp).migrate_cancel();
                return Err(io::Error::other("migration timed out; cancelled"));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn lock(qmp: &Arc<Mutex<Monitor>>) -> std::sync::MutexGuard<'_, Monitor> {
    qmp.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident set size of process `pid`, in bytes.
pub fn rss(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// `updates=N min-gap=G max-gap=H` for the `last-update` values seen. The first value seen
/// may be from before the polling interval changed, so gaps count from the second.
pub fn cadence_line(seen: &[i64]) -> String {
    let gaps: Vec<i64> = seen.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    format!(
        "updates={} min-gap={} max-gap={}",
        seen.len().saturating_sub(1),
        gaps.iter().min().unwrap_or(&0),
        gaps.iter().max().unwrap_or(&0)
    )
}

/// `status=S transferred=N normal=N normal-bytes=N duplicate=N remaining=N` from a
/// `query-migrate` answer; a missing number is -1.
pub fn migration_line(v: &Value) -> String {
    let status = v.get("status").and_then(Value::as_str).unwrap_or("none");
    let ram = |k: &str| {
        v.pointer(&format!("/ram/{k}"))
            .and_then(Value::as_i64)
            .unwrap_or(-1)
    };
    format!(
        "status={status} transferred={} normal={} normal-bytes={} duplicate={} remaining={}",
        ram("transferred"),
        ram("normal"),
        ram("normal-bytes"),
        ram("duplicate"),
        ram("remaining")
    )
}

/// `stats` object as `stat-name=value` pairs, sorted by name.
pub fn stats_line(stats: &Value) -> String {
    let mut v: Vec<String> = stats
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    v.sort();
    v.join(" ")
}

impl Agent {
    fn target(&self, bytes: i64) -> io::Result<String> {
        lock(&self.qmp).set_target(bytes)?;
        let start = Instant::now();
        loop {
            let actual = lock(&self.qmp).actual()?;
            if actual == bytes {
                return Ok(format!("{actual} ms={}", start.elapsed().as_millis()));
            }
            if start.elapsed() > TARGET_TIMEOUT {
                return Err(io::Error::other(format!(
                    "timeout after {}s: actual={actual} target={bytes}",
                    TARGET_TIMEOUT.as_secs()
                )));
            }
            // Poll often: `bench` times targets with this loop.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for two updates after the request, so the values were computed
    /// by the guest after it asked (last-update has one-second resolution).
    /// Polling, turned on for this when the device has it off, goes off again: a stats
    /// request is a wakeup event in the guest, and polling every second would keep
    /// suspend (with the wakeup count checked) from ever going through.
    fn stats(&self) -> io::Result<String> {
        let off = self.device.stats_interval == 0;
        if off {
            lock(&self.qmp).qom_set("guest-stats-polling-interval", Value::from(1))?;
        }
        let r = self.fresh_stats();
        if off {
            lock(&self.qmp).qom_set("guest-stats-polling-interval", Value::from(0))?;
        }
        r
    }

    fn fresh_stats(&self) -> io::Result<String> {
        let (_, last0) = lock(&self.qmp).guest_stats()?;
        let start = Instant::now();
        loop {
            let (stats, last) = lock(&self.qmp).guest_stats()?;
            if last >= last0 + 2 {
                return Ok(stats_line(&stats));
            }
            if start.elapsed() > STATS_TIMEOUT {
                return Err(io::Error::other(format!(
                    "no fresh guest-stats (last-update {last})"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `guest-stats` with the device polling every `interval` s for `secs` s, and
    /// reports how often `last-update` moved. Puts the device's interval back afterwards.
    fn stats_cadence(&self, interval: u32, secs: u32) -> io::Result<String> {
        lock(&self.qmp).qom_set("guest-stats-polling-interval", Value::from(interval))?;
        let start = Instant::now();
        let mut seen: Vec<i64> = Vec::new();
        while start.elapsed() < Duration::from_secs(secs.into()) {
            let (_, last) = lock(&self.qmp).guest_stats()?;
            if seen.last() != Some(&last) {
                seen.push(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let back = self.device.stats_interval;
        lock(&self.qmp).qom_set("guest-stats-polling-interval", Value::from(back))?;
        Ok(cadence_line(&seen))
    }

    fn migrate_start(&self, bandwidth: u64) -> io::Result<String> {
        if let Some(h) = self.migration.take() {
            if !h.is_finished() {
                self.migration.set(Some(h));
                return Err(io::Error::other("a migration is running"));
            }
        }
        {
            let mut q = lock(&self.qmp);
            if self.saved_bandwidth.get().is_none() {
                self.saved_bandwidth.set(Some(q.max_bandwidth()?));
            }
            q.set_max_bandwidth(bandwidth)?;
            q.migrate_start(MIGRATE_SINK)?;
        }
        let qmp = self.qmp.clone();
        self.migration
            .set(Some(std::thread::spawn(move || watch_migration(qmp))));
        Ok(String::new())
    }

    /// Lets the started migration end (faster, if `bandwidth` > 0), and puts the
    /// bandwidth back, even when the migration failed.
    fn migrate_wait(&self, bandwidth: u64) -> io::Result<String> {
        let start = Instant::now();
        let h = self
            .migration
            .take()
            .ok_or_else(|| io::Error::other("no migration was started"))?;
        if bandwidth > 0 && !h.is_finished() {
            lock(&self.qmp).set_max_bandwidth(bandwidth)?;
        }
        let r = h
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("migration watcher panicked")));
        if let Some(b) = self.saved_bandwidth.take() {
            lock(&self.qmp).set_max_bandwidth(b)?;
        }
        Ok(format!(
            "{} ms={}",
            migration_line(&r?),
            start.elapsed().as_millis()
        ))
    }

    /// Stops the VM for `ms`; answers how long it was stopped. A guest left stopped could
    /// not even hear of the failure: `cont` is tried three times.
    fn pause(&self, ms: u64) -> io::Result<String> {
        lock(&self.qmp).stop()?;
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(ms));
        let mut r = lock(&self.qmp).cont();
        for _ in 0..2 {
            if r.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            r = lock(&self.qmp).cont();
        }
        r?;
        Ok(format!("ms={}", start.elapsed().as_millis()))
    }

    fn start_wake(&self, idle: Option<Duration>) -> io::Result<String> {
        if let Some(w) = self.wake.take() {
            w.stop.store(true, Ordering::Relaxed);
            let _ = w.thread.join();
        }
        let qmp = self.qmp.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || match idle {
            Some(every) => wake_idle(qmp, flag, every),
            None => wake_after_suspend(qmp, flag),
        });
        self.wake.set(Some(Waker { thread, stop }));
        Ok(String::new())
    }

    fn wake_status(&self) -> io::Result<String> {
        let waker = self
            .wake
            .take()
            .ok_or_else(|| io::Error::other("no wake was requested"))?;
        waker.stop.store(true, Ordering::Relaxed);
        let w = waker
            .thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("wake thread panicked")))?;
        Ok(woken_line(&w))
    }

    /// Unplugs the balloon and waits until the guest released it.
    fn unplug(&self) -> io::Result<String> {
        let start = Instant::now();
        let ours = |e: &Value| {
            e["event"] == "DEVICE_DELETED" && e.pointer("/data/device") == Some(&BALLOON_ID.into())
        };
        {
            let mut q = lock(&self.qmp);
            while q.take_event(ours)?.is_some() {}
            q.device_del(BALLOON_ID)?;
        }
        loop {
            if lock(&self.qmp).take_event(ours)?.is_some() {
                return Ok(format!("ms={}", start.elapsed().as_millis()));
            }
            if start.elapsed() > UNPLUG_TIMEOUT {
                return Err(io::Error::other(format!(
                    "no DEVICE_DELETED for {BALLOON_ID} in {}s: the guest did not release it",
                    UNPLUG_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Plugs in a balloon like the boot's.
    fn plug(&self) -> io::Result<String> {
        let start = Instant::now();
        let props = self
            .device
            .props()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.json()))
            .collect();
        lock(&self.qmp).device_add(BALLOON_DRIVER, BALLOON_ID, props)?;
        Ok(format!("ms={}", start.elapsed().as_millis()))
    }

    fn answer(&self, req: Request) -> io::Result<String> {
        Ok(match req {
            Request::Ram => self.ram.to_string(),
            Request::Actual => lock(&self.qmp).actual()?.to_string(),
            Request::Device => {
                let d = &self.device;
                format!(
                    "deflate-on-oom={} free-page-reporting={} free-page-hint={} page-poison={} \
                     stats-interval={}",
                    d.deflate_on_oom as u8,
                    d.free_page_reporting as u8,
                    d.free_page_hint as u8,
                    d.page_poison as u8,
                    d.stats_interval
                )
            }
            Request::Target(b) => self.target(b)?,
            Request::BenchTarget(b) => {
                bench::target(&self.qmp, self.ram, b, self.qemu_pid, &self.traces)?
            }
            Request::Set(b) => {
                lock(&self.qmp).set_target(b)?;
                String::new()
            }
            Request::StatsCadence(i, s) => self.stats_cadence(i, s)?,
            Request::Stats => self.stats()?,
            Request::Rss => rss(self.qemu_pid)?.to_string(),
            Request::Migrate => lock(&self.qmp)
                .migrate(MIGRATE_SINK, MIGRATE_TIMEOUT)?
                .to_string(),
            Request::MigrateStart(b) => self.migrate_start(b)?,
            Request::MigrateStatus => migration_line(&lock(&self.qmp).query_migrate()?),
            Request::MigrateWait(b) => self.migrate_wait(b)?,
            Request::Pause(ms) => self.pause(ms)?,
            Request::WakeAfterSuspend => self.start_wake(None)?,
            Request::WakeIdle(ms) => self.start_wake(Some(Duration::from_millis(ms)))?,
            Request::WakeStatus => self.wake_status()?,
            Request::Unplug => self.unplug()?,
            Request::Plug => self.plug()?,
            Request::Reset | Request::Wait(_) => String::new(),
        })
    }
}

/// Splits a request line into its optional `#id ` prefix and the request.
pub fn split_id(line: &str) -> (&str, &str) {
    match line.strip_prefix('#').and_then(|r| r.split_once(' ')) {
        Some((id, rest)) => (&line[..id.len() + 2], rest),
        None => ("", line),
    }
}

/// Serves requests on `port` until the VM goes away.
pub fn spawn(
    port: UnixStream,
    qmp: Arc<Mutex<Monitor>>,
    ram: u64,
    device: Device,
    qemu_pid: u32,
    traces: Traces,
) {
    let agent = Agent {
        qmp,
        ram,
        device,
        qemu_pid,
        traces,
        saved_bandwidth: Cell::new(None),
        migration: Cell::new(None),
        wake: Cell::new(None),
    };
    std::thread::spawn(move || {
        let Ok(mut out) = port.try_clone() else {
            return;
        };
        for line in BufReader::new(port).lines() {
            let Ok(line) = line else { break };
            let (id, line) = split_id(&line);
            let req = parse(line);
            let reply = match req {
                Ok(Request::Wait(ms)) => {
                    std::thread::sleep(Duration::from_millis(ms));
                    "ok".to_string()
                }
                Ok(r) => {
                    let reset = r == Request::Reset;
                    let a = agent.answer(r);
                    if reset {
                        let _ = writeln!(out, "{id}ok");
                        let _ = lock(&agent.qmp).system_reset();
                        continue;
                    }
                    match a {
                        Ok(s) if s.is_empty() => "ok".to_string(),
                        Ok(s) => format!("ok {s}"),
                        Err(e) => format!("err {e}"),
                    }
                }
                Err(e) => format!("err {e}"),
            };
            if writeln!(out, "{id}{}", reply.replace('\n', " ")).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse("ram"), Ok(Request::Ram));
        assert_eq!(parse("target 1073741824\n"), Ok(Request::Target(1 << 30)));
        assert_eq!(parse("wait 5"), Ok(Request::Wait(5)));
        assert!(parse("target").is_err());
        assert!(parse("target -5").is_err());
        assert!(parse("target 12x").is_err());
        assert!(parse("actual now").is_err());
        assert!(parse("fly").is_err());
        assert!(parse("").is_err());
        assert!(parse("target 1 2").is_err());
    }

    #[test]
    fn new_requests() {
        assert_eq!(parse("set 4096"), Ok(Request::Set(4096)));
        assert!(parse("set 0").is_err());
        assert_eq!(parse("stats-cadence 2 8"), Ok(Request::StatsCadence(2, 8)));
        assert!(parse("stats-cadence 0 8").is_err());
        assert!(parse("stats-cadence 2").is_err());
    }

    #[test]
    fn migration_requests() {
        assert_eq!(
            parse("migrate-start 16777216"),
            Ok(Request::MigrateStart(16 << 20))
        );
        assert!(parse("migrate-start 0").is_err());
        assert!(parse("migrate-start").is_err());
        assert_eq!(parse("migrate-wait 0"), Ok(Request::MigrateWait(0)));
        assert_eq!(
            parse("migrate-wait 1073741824"),
            Ok(Request::MigrateWait(1 << 30))
        );
        assert!(parse("migrate-wait -1").is_err());
        assert_eq!(parse("migrate-status"), Ok(Request::MigrateStatus));
        assert!(parse("migrate-status now").is_err());
    }

    #[test]
    fn lifecycle_requests() {
        assert_eq!(parse("pause 10000"), Ok(Request::Pause(10000)));
        assert!(parse("pause 0").is_err());
        assert!(parse("pause 300001").is_err());
        assert!(parse("pause").is_err());
        assert_eq!(parse("wake-after-suspend"), Ok(Request::WakeAfterSuspend));
        assert!(parse("wake-after-suspend 5").is_err());
        assert_eq!(parse("wake-idle 1500"), Ok(Request::WakeIdle(1500)));
        assert!(parse("wake-idle 99").is_err());
        assert!(parse("wake-idle 60001").is_err());
        assert!(parse("wake-idle").is_err());
        assert_eq!(parse("wake-status"), Ok(Request::WakeStatus));
        assert_eq!(parse("unplug"), Ok(Request::Unplug));
        assert_eq!(parse("plug"), Ok(Request::Plug));
        assert!(parse("plug balloon0").is_err());
    }

    #[test]
    fn wake_summary() {
        assert_eq!(woken_line(&Woken::default()), "woke=0 ms=-1 presses=0");
        let w = Woken {
            ms: Some(1502),
            presses: 2,
        };
        assert_eq!(woken_line(&w), "woke=1 ms=1502 presses=2");
    }

    #[test]
    fn wake_idle_stops_when_told() {
        let stop = AtomicBool::new(true);
        assert!(sleep_unless(&stop, Duration::from_secs(60)));
        let go = AtomicBool::new(false);
        assert!(!sleep_unless(&go, Duration::from_millis(1)));
    }

    #[test]
    fn migration_summary() {
        let v: Value = serde_json::from_str(
            r#"{"status": "active", "ram": {"transferred": 1000, "normal": 20,
                "normal-bytes": 81920, "duplicate": 5, "remaining": 4096, "total": 9}}"#,
        )
        .unwrap();
        assert_eq!(
            migration_line(&v),
            "status=active transferred=1000 normal=20 normal-bytes=81920 duplicate=5 remaining=4096"
        );
        let none: Value = serde_json::from_str("{}").unwrap();
        assert_eq!(
            migration_line(&none),
            "status=none transferred=-1 normal=-1 normal-bytes=-1 duplicate=-1 remaining=-1"
        );
    }

    #[test]
    fn cadence() {
        assert_eq!(
            cadence_line(&[100, 101, 103, 105]),
            "updates=3 min-gap=2 max-gap=2"
        );
        assert_eq!(cadence_line(&[100]), "updates=0 min-gap=0 max-gap=0");
    }

    #[test]
    fn request_ids() {
        assert_eq!(split_id("#12.3 target 5"), ("#12.3 ", "target 5"));
        assert_eq!(split_id("target 5"), ("", "target 5"));
        assert_eq!(split_id("#lonely"), ("", "#lonely"));
    }

    #[test]
    fn stats_are_flat_and_sorted() {
        let v: Value =
            serde_json::from_str(r#"{"stat-total-memory": 10, "stat-free-memory": -1}"#).unwrap();
        assert_eq!(stats_line(&v), "stat-free-memory=-1 stat-total-memory=10");
        assert_eq!(stats_line(&Value::Null), "");
    }

    #[test]
    fn rss_of_self() {
        assert!(rss(std::process::id()).unwrap() > 0);
    }
}
