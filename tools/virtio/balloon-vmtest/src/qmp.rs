// SPDX-License-Identifier: GPL-2.0
//! Typed QMP client for the commands the balloon tests use.

use qapi::{qmp, Qmp, Stream};
use serde_json::{Map, Value};
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// QOM path of the balloon device the harness creates.
pub const BALLOON_PATH: &str = "/machine/peripheral/balloon0";

type Conn = Qmp<Stream<BufReader<UnixStream>, UnixStream>>;

/// Events kept for [`Monitor::take_event`]; older ones are dropped.
const RECENT_EVENTS: usize = 256;

pub struct Monitor {
    qmp: Conn,
    /// Where QMP events (BALLOON_CHANGE, RESET, SHUTDOWN, ...) go, one JSON line each.
    events: std::fs::File,
    /// Events not yet taken, oldest first. QEMU sends them between answers; whichever
    /// command reads one keeps it here, so a thread waiting for an event sees it whoever
    /// held the monitor at the time.
    recent: std::collections::VecDeque<Value>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Monitor {
    /// Speaks QMP on `sock`; events seen along the way are appended to `events`.
    pub fn new(sock: UnixStream, events: std::fs::File) -> io::Result<Self> {
        let reader = BufReader::new(sock.try_clone()?);
        let mut qmp = Qmp::new(Stream::new(reader, sock));
        qmp.handshake().map_err(err)?;
        Ok(Monitor {
            qmp,
            events,
            recent: Default::default(),
        })
    }

    fn run<C: qapi::Command>(&mut self, cmd: &C) -> io::Result<C::Ok> {
        let r = self.qmp.execute(cmd).map_err(err);
        for ev in self.qmp.events() {
            let v = serde_json::to_value(&ev).unwrap_or(Value::Null);
            let _ = writeln!(self.events, "{v}");
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(v);
        }
        r
    }

    /// Reads the events QEMU sent so far (a cheap command brings them in), then removes
    /// and returns the first one `matches` accepts.
    pub fn take_event(&mut self, matches: impl Fn(&Value) -> bool) -> io::Result<Option<Value>> {
        self.status()?;
        Ok(self
            .recent
            .iter()
            .position(matches)
            .and_then(|i| self.recent.remove(i)))
    }

    /// The run state: `running`, `paused`, `suspended` (the guest is in ACPI S3), ...
    pub fn status(&mut self) -> io::Result<String> {
        let s = self.run(&qmp::query_status {})?;
        match serde_json::to_value(s.status).map_err(err)? {
            Value::String(s) => Ok(s),
            v => Err(err(format!("query-status: status {v}"))),
        }
    }

    /// Pauses the VM (QMP `stop`).
    pub fn stop(&mut self) -> io::Result<()> {
        self.run(&qmp::stop {}).map(|_| ())
    }

    /// Wakes a guest suspended to RAM (ACPI S3).
    pub fn system_wakeup(&mut self) -> io::Result<()> {
        self.run(&qmp::system_wakeup {}).map(|_| ())
    }

    /// Presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> io::Result<()> {
        self.run(&qmp::system_powerdown {}).map(|_| ())
    }

    /// Asks the guest to release device `id` (ACPI PCI hotplug); QEMU sends
    /// `DEVICE_DELETED` once the guest ejected it.
    pub fn device_del(&mut self, id: &str) -> io::Result<()> {
        self.run(&qmp::device_del { id: id.into() }).map(|_| ())
    }

    /// Hot-plugs a `driver` device named `id` with properties `props` (typed JSON:
    /// QEMU 10 rejects `"on"` for a boolean here).
    pub fn device_add(
        &mut self,
        driver: &str,
        id: &str,
        props: Map<String, Value>,
    ) -> io::Result<()> {
        let cmd = qmp::device_add {
            driver: driver.into(),
            id: Some(id.into()),
            bus: None,
            arguments: props,
        };
        self.run(&cmd).map(|_| ())
    }

    /// The balloon's size as the host sees it: guest RAM minus what the
    /// driver reported in `actual`, in bytes.
    pub fn actual(&mut self) -> io::Result<i64> {
        Ok(self.run(&qmp::query_balloon {})?.actual)
    }

    /// Asks the guest to shrink (or grow) to `bytes` of RAM.
    pub fn set_target(&mut self, bytes: i64) -> io::Result<()> {
        self.run(&qmp::balloon { value: bytes }).map(|_| ())
    }

    pub fn qom_get(&mut self, property: &str) -> io::Result<Value> {
        let v = self.run(&qmp::qom_get {
            path: BALLOON_PATH.into(),
            property: property.into(),
        })?;
        serde_json::to_value(v).map_err(err)
    }

    pub fn qom_set(&mut self, property: &str, value: Value) -> io::Result<()> {
        let cmd = qmp::qom_set {
            path: BALLOON_PATH.into(),
            property: property.into(),
            value,
        };
        self.run(&cmd).map(|_| ())
    }

    /// `guest-stats` of the balloon device: the `stats` object and `last-update`.
    pub fn guest_stats(&mut self) -> io::Result<(Value, i64)> {
        let v = self.qom_get("guest-stats")?;
        let last = v.get("last-update").and_then(Value::as_i64).unwrap_or(0);
        Ok((v.get("stats").cloned().unwrap_or(Value::Null), last))
    }

    /// Migrates the VM into `uri`, waits for the end and resumes it.
    /// Returns the RAM bytes transferred.
    pub fn migrate(&mut self, uri: &str, timeout: Duration) -> io::Result<i64> {
        self.migrate_start(uri)?;
        let v = self.migrate_wait(timeout)?;
        Ok(v.pointer("/ram/transferred")
            .and_then(Value::as_i64)
            .unwrap_or(0))
    }

    /// Starts a migration into `uri` and returns at once (QMP `migrate` does
    /// not wait).
    pub fn migrate_start(&mut self, uri: &str) -> io::Result<()> {
        let cmd = qmp::migrate {
            uri: Some(uri.into()),
            channels: None,
            detach: None,
            resume: None,
        };
        self.run(&cmd).map(|_| ())
    }

    /// `query-migrate` as JSON.
    pub fn query_migrate(&mut self) -> io::Result<Value> {
        let info = self.run(&qmp::query_migrate {})?;
        serde_json::to_value(&info).map_err(err)
    }

    /// Waits until the running migration completes, resumes the VM and
    /// returns the final `query-migrate`.
    pub fn migrate_wait(&mut self, timeout: Duration) -> io::Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.query_migrate()?;
            match v.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    self.run(&qmp::cont {})?;
                    return Ok(v);
                }
                Some(s @ ("failed" | "cancelled")) => {
                    let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(err(format!("migration {s}: {why}")));
                }
                _ if start.elapsed() > timeout => return Err(err("migration timed out")),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Resumes a paused VM (after a completed migration).
    pub fn cont(&mut self) -> io::Result<()> {
        self.run(&qmp::cont {}).map(|_| ())
    }

    pub fn migrate_cancel(&mut self) -> io::Result<()> {
        self.run(&qmp::migrate_cancel {}).map(|_| ())
    }

    /// The migration's `max-bandwidth`, bytes per second.
    pub fn max_bandwidth(&mut self) -> io::Result<u64> {
        let p = self.run(&qmp::query_migrate_parameters {})?;
        p.max_bandwidth
            .ok_or_else(|| err("query-migrate-parameters: no max-bandwidth"))
    }

    /// Sets the migration's `max-bandwidth`, bytes per second; applies to a
    /// running migration too.
    pub fn set_max_bandwidth(&mut self, bytes_per_s: u64) -> io::Result<()> {
        let p = qmp::MigrateSetParameters {
            max_bandwidth: Some(bytes_per_s),
            ..Default::default()
        };
        self.run(&qmp::migrate_set_parameters(p)).map(|_| ())
    }

    pub fn system_reset(&mut self) -> io::Result<()> {
        self.run(&qmp::system_reset {}).map(|_| ())
    }

    pub fn quit(&mut self) {
        let _ = self.qmp.write_command(&qmp::quit {});
    }
}
