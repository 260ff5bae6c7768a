// SPDX-License-Identifier: GPL-2.0
//! `bench`: the host's half of the balloon benchmark.
//!
//! The guest (init's `bench`) loads each driver in turn and asks the host for
//! balloon targets with `bench-target BYTES`. The host times each change from
//! its QMP `balloon` command to `query-balloon` showing the target and to the
//! `BALLOON_CHANGE` event that reported it, counts QEMU's CPU time meanwhile
//! (vCPU threads apart from the rest: the device model, which does the
//! discards), and keeps the balloon size over time for the plot. The guest
//! adds its own CPU time and prints one `@@BENCH key=value ...` line per
//! change; [`report`] turns those into the table, the data files and the plot.

use crate::qmp::Monitor;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often `bench-target` asks `query-balloon`. Each query costs QEMU's main loop, which
/// also runs the balloon device, a few microseconds.
const POLL: Duration = Duration::from_millis(2);
/// How long a single change may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// QEMU sends at most one `BALLOON_CHANGE` a second and holds back the last one (with the
/// time it was raised) until the second is over.
const EVENT_WAIT: Duration = Duration::from_millis(1500);

/// The balloon size over one change, as the host saw it.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Milliseconds since the `balloon` command, and the balloon size in bytes then.
    pub samples: Vec<(f64, i64)>,
}

/// Traces of the boot, indexed by the `trace=N` of the answers.
pub type Traces = Arc<Mutex<Vec<Trace>>>;

/// CPU time QEMU's threads used so far, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QemuCpu {
    /// Threads that run guest code (`CPU n/TCG`, `CPU n/KVM`).
    pub vcpu: u64,
    /// All others: the main loop (device emulation, QMP), I/O threads, RCU.
    pub other: u64,
}

/// Sums the CPU time of QEMU's threads (from `schedstat`, in nanoseconds).
pub fn qemu_cpu(pid: u32) -> io::Result<QemuCpu> {
    let mut cpu = QemuCpu::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        // A thread may end between the listing and the read.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if is_vcpu_thread(comm.trim()) {
            cpu.vcpu += ns;
        } else {
            cpu.other += ns;
        }
    }
    Ok(cpu)
}

fn is_vcpu_thread(comm: &str) -> bool {
    comm.starts_with("CPU ") && (comm.ends_with("/TCG") || comm.ends_with("/KVM"))
}

fn is_balloon_change(ev: &Value, actual: Option<i64>) -> bool {
    ev["event"] == "BALLOON_CHANGE" && actual.is_none_or(|a| ev["data"]["actual"] == a)
}

/// Microseconds since the epoch of a QMP event's `timestamp`.
fn event_time_us(ev: &Value) -> Option<i64> {
    let t = &ev["timestamp"];
    Some(t["seconds"].as_i64()? * 1_000_000 + t["microseconds"].as_i64()?)
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Sets the balloon so that the guest has `bytes` and times the change; keeps the trace.
/// Answers `ms=QUERY event_ms=EVENT vcpu_ms=V qemu_ms=Q trace=N` (`event_ms=-1`: no event
/// seen).
pub fn target(
    qmp: &Mutex<Monitor>,
    ram: u64,
    bytes: i64,
    qemu_pid: u32,
    traces: &Traces,
) -> io::Result<String> {
    let lock = || qmp.lock().unwrap_or_else(|e| e.into_inner());
    // Events of earlier changes must not answer for this one.
    while lock().take_event(|e| is_balloon_change(e, None))?.is_some() {}
    let cpu0 = qemu_cpu(qemu_pid)?;
    let wall0 = unix_us(SystemTime::now());
    let t0 = Instant::now();
    lock().set_target(bytes)?;
    let mut trace = Trace::default();
    loop {
        let actual = lock().actual()?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        trace.samples.push((ms, ram as i64 - actual));
        if actual == bytes {
            break;
        }
        if t0.elapsed() > TIMEOUT {
            return Err(io::Error::other(format!(
                "timeout after {}s: actual={actual} target={bytes}",
                TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
    let ms = trace.samples.last().map_or(0.0, |s| s.0);
    let cpu1 = qemu_cpu(qemu_pid)?;
    let until = Instant::now() + EVENT_WAIT;
    let event_ms = loop {
        if let Some(ev) = lock().take_event(|e| is_balloon_change(e, Some(bytes)))? {
            break event_time_us(&ev).map_or(-1.0, |t| (t - wall0) as f64 / 1000.0);
        }
        if Instant::now() > until {
            break -1.0;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut all = traces.lock().unwrap_or_else(|e| e.into_inner());
    all.push(trace);
    Ok(format!(
        "ms={ms:.1} event_ms={event_ms:.1} vcpu_ms={:.1} qemu_ms={:.1} trace={}",
        (cpu1.vcpu - cpu0.vcpu) as f64 / 1e6,
        (cpu1.other - cpu0.other) as f64 / 1e6,
        all.len() - 1
    ))
}

/// The host's discard rates in MiB/s, untouched and touched memory, from the
/// `discard-limit` program's `untouched_mib_s=U touched_mib_s=T` line.
pub fn discard_limit(prog: &Path, mib: u64) -> Result<(f64, f64), String> {
    let out = std::process::Command::new(prog)
        .arg(mib.to_string())
        .output()
        .map_err(|e| format!("{}: {e}", prog.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    match (
        out.status.success(),
        get("untouched_mib_s"),
        get("touched_mib_s"),
    ) {
        (true, Some(u), Some(t)) => Ok((u, t)),
        _ => Err(format!(
            "{}: {}{}",
            prog.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// One `@@BENCH key=value ...` line of the guest.
pub type Run = BTreeMap<String, String>;

pub fn parse_line(l: &str) -> Option<Run> {
    let rest = l.strip_prefix("@@BENCH ")?;
    let run: Run = rest
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (run.contains_key("drv") && run.contains_key("op")).then_some(run)
}

fn num(r: &Run, k: &str) -> Option<f64> {
    r.get(k)?.parse().ok()
}

/// Median, smallest and largest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn spread(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite() && *x >= 0.0);
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Values of a figure from the runs of one driver.
type Extract = Box<dyn Fn(&[&Run]) -> Vec<f64>>;

/// A figure of the table: how it is computed from the runs of one driver.
struct Figure {
    name: String,
    unit: &'static str,
    /// Higher is better (a rate) rather than lower (a time).
    higher_better: bool,
    values: Extract,
}

fn runs_of<'a>(runs: &'a [Run], drv: &str, op: &str, mib: u64) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| {
            r["drv"] == drv
                && r["op"] == op
                && r.get("mib").and_then(|m| m.parse::<u64>().ok()) == Some(mib)
        })
        .collect()
}

fn figures() -> Vec<(String, u64, Figure)> {
    let mut f = Vec::new();
    let field = |k: &'static str| move |rs: &[&Run]| rs.iter().filter_map(|r| num(r, k)).collect();
    for mib in [256u64, 1024, 3072] {
        for op in ["inflate", "deflate"] {
            f.push((
                op.to_string(),
                mib,
                Figure {
                    name: format!("{op} {mib} MiB, rate to query-balloon"),
                    unit: "MiB/s",
                    higher_better: true,
                    values: Box::new(move |rs: &[&Run]| {
                        rs.iter()
                            .filter_map(|r| num(r, "ms"))
                            .map(|ms| mib as f64 * 1000.0 / ms.max(0.001))
                            .collect()
                    }),
                },
            ));
            f.push((
                op.to_string(),
                mib,
                Figure {
                    name: format!("{op} {mib} MiB, time to query-balloon"),
                    unit: "ms",
                    higher_better: false,
                    values: Box::new(field("ms")),
                },
            ));
            f.push((
                op.to_string(),
                mib,
                Figure {
                    name: format!("{op} {mib} MiB, time to BALLOON_CHANGE"),
                    unit: "ms",
                    higher_better: false,
                    values: Box::new(field("event_ms")),
                },
            ));
        }
    }
    for op in ["inflate", "deflate"] {
        for (k, what) in [
            ("guest_cpu_ms", "guest CPU"),
            ("vcpu_ms", "QEMU vCPU threads"),
            ("qemu_ms", "QEMU other threads"),
        ] {
            f.push((
                op.to_string(),
                3072,
                Figure {
                    name: format!("{op} 3 GiB, {what} per GiB"),
                    unit: "ms",
                    higher_better: false,
                    values: Box::new(move |rs: &[&Run]| {
                        rs.iter()
                            .filter_map(|r| num(r, k))
                            .map(|v| v / 3.0)
                            .collect()
                    }),
                },
            ));
        }
    }
    for op in ["inflate", "deflate"] {
        f.push((
            format!("small-{op}"),
            16,
            Figure {
                name: format!("{op} 16 MiB, time to query-balloon"),
                unit: "ms",
                higher_better: false,
                values: Box::new(field("ms")),
            },
        ));
    }
    for (op, what) in [
        ("latency-idle", "idle"),
        ("latency", "during a 3 GiB inflate"),
    ] {
        for (k, stat) in [("p99_us", "p99"), ("max_us", "max")] {
            f.push((
                op.to_string(),
                3072,
                Figure {
                    name: format!("1 ms sleep overshoot {stat}, {what}"),
                    unit: "us",
                    higher_better: false,
                    values: Box::new(field(k)),
                },
            ));
        }
    }
    f
}

/// The rows of the report: per figure, each driver's spread.
pub struct Table {
    pub drivers: Vec<String>,
    pub rows: Vec<(String, &'static str, bool, Vec<Option<Spread>>)>,
}

pub fn table(runs: &[Run], drivers: &[String]) -> Table {
    let rows = figures()
        .into_iter()
        .map(|(op, mib, fig)| {
            let per = drivers
                .iter()
                .map(|d| spread((fig.values)(&runs_of(runs, d, &op, mib))))
                .collect();
            (fig.name, fig.unit, fig.higher_better, per)
        })
        .collect();
    Table {
        drivers: drivers.to_vec(),
        rows,
    }
}

fn cell(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.median >= 100.0 => {
            format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max)
        }
        Some(s) => format!("{:.1} [{:.1}-{:.1}]", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// `ours/C` of the medians, for each driver after the first.
fn ratio(first: &Option<Spread>, other: &Option<Spread>) -> String {
    match (first, other) {
        (Some(a), Some(b)) if a.median > 0.0 => format!("{:.2}", b.median / a.median),
        _ => "-".into(),
    }
}

impl Table {
    pub fn print(&self, limit: Option<(f64, f64)>) -> String {
        let mut out = String::new();
        let w0 = self
            .rows
            .iter()
            .map(|r| r.0.len() + r.1.len() + 3)
            .max()
            .unwrap_or(10);
        let wd = 24;
        out += &format!("{:w0$}", "figure (median [min-max])");
        for d in &self.drivers {
            out += &format!("  {d:>wd$}");
        }
        for d in self.drivers.iter().skip(1) {
            out += &format!(
                "  {:>12}",
                format!("{}/{}", short(d), short(&self.drivers[0]))
            );
        }
        out += "\n";
        for (name, unit, higher, per) in &self.rows {
            out += &format!("{:w0$}", format!("{name} ({unit})"));
            for s in per {
                out += &format!("  {:>wd$}", cell(s));
            }
            for s in per.iter().skip(1) {
                let better = if *higher { "" } else { " " };
                out += &format!("  {:>12}", format!("{}{better}", ratio(&per[0], s)));
            }
            out += "\n";
        }
        if let Some((untouched, touched)) = limit {
            out += &format!(
                "host discard limit (4 KiB madvise): {untouched:.0} MiB/s untouched, \
                 {touched:.0} MiB/s touched\n"
            );
            for (name, _, _, per) in &self.rows {
                if !name.starts_with("inflate 3072 MiB, rate") {
                    continue;
                }
                let shares: Vec<String> = self
                    .drivers
                    .iter()
                    .zip(per)
                    .filter_map(|(d, s)| {
                        s.map(|s| format!("{d} {:.0} %", 100.0 * s.median / untouched))
                    })
                    .collect();
                out += &format!(
                    "3 GiB inflate rate as a share of it: {}\n",
                    shares.join(", ")
                );
            }
        }
        out += "(ratios: the later driver's median over the first's; for MiB/s higher is better, \
                for times lower)\n";
        out
    }

    pub fn json(&self, runs: &[Run], limit: Option<(f64, f64)>) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(name, unit, higher, per)| {
                let drivers: serde_json::Map<String, Value> =
                    self.drivers
                        .iter()
                        .zip(per)
                        .map(|(d, s)| {
                            let v = s.map_or(Value::Null, |s| {
                            json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n})
                        });
                            (d.clone(), v)
                        })
                        .collect();
                json!({"figure": name, "unit": unit, "higher_is_better": higher,
                       "drivers": drivers})
            })
            .collect();
        json!({
            "drivers": self.drivers,
            "discard_limit_mib_s": limit.map(|(u, t)| json!({"untouched": u, "touched": t})),
            "figures": rows,
            "runs": runs,
        })
    }
}

fn short(d: &str) -> &str {
    match d {
        "virtio_balloon" => "C",
        "virtio_balloon_rust" => "Rust",
        d => d,
    }
}

/// Every run as CSV: one column per key seen.
pub fn csv(runs: &[Run]) -> String {
    let mut keys: Vec<&String> = runs.iter().flat_map(|r| r.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = keys
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for r in runs {
        let row: Vec<&str> = keys
            .iter()
            .map(|k| r.get(*k).map_or("", String::as_str))
            .collect();
        out += &(row.join(",") + "\n");
    }
    out
}

/// Plots the balloon size over time for the 3 GiB inflate and deflate of each driver (the
/// run with the median time) into an SVG file.
pub fn plot(path: &Path, runs: &[Run], drivers: &[String], traces: &[Trace]) -> Result<(), String> {
    use plotters::prelude::*;
    let mut series = Vec::new();
    for d in drivers {
        for op in ["inflate", "deflate"] {
            let mut rs = runs_of(runs, d, op, 3072);
            rs.sort_by(|a, b| {
                num(a, "ms")
                    .unwrap_or(0.0)
                    .total_cmp(&num(b, "ms").unwrap_or(0.0))
            });
            let Some(r) = rs.get(rs.len() / 2) else {
                continue;
            };
            let Some(t) = r.get("trace").and_then(|t| t.parse::<usize>().ok()) else {
                continue;
            };
            if let Some(tr) = traces.get(t) {
                series.push((format!("{} {op}", short(d)), tr.clone()));
            }
        }
    }
    if series.is_empty() {
        return Err("no 3 GiB traces to plot".into());
    }
    let xmax = series
        .iter()
        .flat_map(|(_, t)| t.samples.iter().map(|s| s.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, t)| t.samples.iter().map(|s| s.1 as f64 / 1048576.0))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Balloon size as the host sees it (query-balloon), 3 GiB",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax * 1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms since the host's balloon command")
        .y_desc("balloon MiB")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, MAGENTA, CYAN, GREEN, BLACK];
    for (i, (name, tr)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                tr.samples.iter().map(|s| (s.0, s.1 as f64 / 1048576.0)),
                c.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let r = parse_line("@@BENCH drv=a round=1 op=inflate mib=256 ms=12.5 trace=0").unwrap();
        assert_eq!(r["op"], "inflate");
        assert_eq!(num(&r, "ms"), Some(12.5));
        assert!(parse_line("@@BENCH round=1").is_none());
        assert!(parse_line("other").is_none());
    }

    #[test]
    fn spreads() {
        assert_eq!(spread(vec![]), None);
        let s = spread(vec![5.0, 1.0, 3.0, -1.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 3));
        assert_eq!(spread(vec![1.0, 2.0]).unwrap().median, 1.5);
    }

    #[test]
    fn table_and_ratio() {
        let mk = |d: &str, ms: &str| {
            parse_line(&format!(
                "@@BENCH drv={d} round=1 op=inflate mib=1024 ms={ms}"
            ))
            .unwrap()
        };
        let runs = vec![mk("c", "400"), mk("c", "500"), mk("r", "200")];
        let t = table(&runs, &["c".into(), "r".into()]);
        let row = t
            .rows
            .iter()
            .find(|r| r.0 == "inflate 1024 MiB, time to query-balloon");
        let per = &row.unwrap().3;
        assert_eq!(per[0].unwrap().median, 450.0);
        assert_eq!(ratio(&per[0], &per[1]), "0.44");
        assert!(t.print(None).contains("r/c"));
        assert!(csv(&runs).starts_with("drv,mib,ms,op,round\n"));
    }

    #[test]
    fn vcpu_threads() {
        assert!(is_vcpu_thread("CPU 0/TCG"));
        assert!(is_vcpu_thread("CPU 11/KVM"));
        assert!(!is_vcpu_thread("qemu-system-x86"));
    }

    #[test]
    fn own_cpu_time() {
        assert!(qemu_cpu(std::process::id()).is_ok());
    }

    #[test]
    fn discard_program_output() {
        assert!(discard_limit(Path::new("/nonexistent"), 1).is_err());
        // Runs, but says nothing of rates.
        assert!(discard_limit(Path::new("/bin/echo"), 1).is_err());
    }
}
