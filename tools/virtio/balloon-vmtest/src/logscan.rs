// SPDX-License-Identifier: GPL-2.0
//! Finds kernel reports in a guest console log.

/// Console text that means the kernel found a bug: BUG/WARNING splats, KASAN,
/// lockdep, soft lockups, RCU stalls, hung tasks, panics, and a poisoned free
/// page whose pattern changed (with `page_poison=1`: e.g. a host that
/// discarded a reported page it should have kept).
const PATTERNS: &[&str] = &[
    "BUG:",
    "WARNING:",
    "KASAN:",
    "UBSAN:",
    "kernel BUG at",
    "Oops:",
    "general protection fault",
    "Kernel panic",
    "possible circular locking dependency",
    "inconsistent lock state",
    "possible recursive locking",
    "suspicious RCU usage",
    "soft lockup",
    "hard LOCKUP",
    "detected stalls on CPU",
    "self-detected stall",
    "blocked for more than",
    "list_add corruption",
    "list_del corruption",
    // mm/page_poison.c: "pagealloc: memory corruption", "pagealloc: single bit error"
    "pagealloc: ",
];

/// How many lines after a match belong to its report, at most.
const REPORT_LINES: usize = 60;

/// A kernel report: the first line and the lines that follow it.
#[derive(Debug, PartialEq)]
pub struct Report {
    pub line: usize,
    pub text: Vec<String>,
}

/// Reports in `lines`, each cut at the splat's end marker or after
/// `REPORT_LINES` lines. Lines inside one report are not matched again.
pub fn kernel_reports(lines: &[String]) -> Vec<Report> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if PATTERNS.iter().any(|p| lines[i].contains(p)) {
            let mut end = i + 1;
            while end < lines.len() && end - i < REPORT_LINES {
                end += 1;
                if lines[end - 1].contains("---[ end") || lines[end - 1].starts_with("@@") {
                    break;
                }
            }
            out.push(Report {
                line: i + 1,
                text: lines[i..end].to_vec(),
            });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Lines of the kmemleak report the guest printed between its markers.
/// Empty when kmemleak found nothing.
pub fn kmemleak(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in lines {
        if l.starts_with("@@KMEMLEAK-BEGIN") {
            inside = true;
        } else if l.starts_with("@@KMEMLEAK-END") {
            inside = false;
        } else if inside {
            out.push(l.clone());
        }
    }
    if out.iter().any(|l| l.contains("unreferenced object")) {
        out
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn clean_log_has_no_reports() {
        let log = v("Linux version 7.3\nvirtio_balloon virtio1: loaded\nok 1 test\n");
        assert!(kernel_reports(&log).is_empty());
    }

    #[test]
    fn warning_is_cut_at_end_marker() {
        let log = v(concat!(
            "a\n",
            "------------[ cut here ]------------\n",
            "WARNING: CPU: 0 PID: 1 at x.c:1\n",
            "Call Trace:\n",
            " f+0x1\n",
            "---[ end trace 0 ]---\n",
            "after\n",
        ));
        let r = kernel_reports(&log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].line, 3);
        assert_eq!(r[0].text.last().unwrap(), "---[ end trace 0 ]---");
    }

    #[test]
    fn kasan_lockdep_stall_all_found() {
        let log = v(concat!(
            "BUG: KASAN: use-after-free in f\n",
            "@@X\n",
            "WARNING: possible circular locking dependency detected\n",
            "@@Y\n",
            "rcu: INFO: rcu_preempt self-detected stall on CPU\n",
            "@@Z\n",
            "watchdog: BUG: soft lockup - CPU#0 stuck\n",
        ));
        assert_eq!(kernel_reports(&log).len(), 4);
    }

    #[test]
    fn poison_corruption_found() {
        let log = v(concat!(
            "pagealloc: memory corruption\n",
            "00000000: 00 00 00 00\n",
            "CPU: 1 PID: 80 Comm: t\n",
            "@@X\n",
            "pagealloc: single bit error\n",
        ));
        let r = kernel_reports(&log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].line, 1);
        // The OOM killer's report is not a kernel bug.
        let oom = v(concat!(
            "t invoked oom-killer: gfp_mask=0x140dca, order=0, oom_score_adj=1000\n",
            "Out of memory: Killed process 90 (t)\n",
        ));
        assert!(kernel_reports(&oom).is_empty());
    }

    #[test]
    fn kmemleak_block() {
        let none = v("@@KMEMLEAK-BEGIN\n@@KMEMLEAK-END\n");
        assert!(kmemleak(&none).is_empty());
        let some = v(concat!(
            "x\n",
            "@@KMEMLEAK-BEGIN\n",
            "unreferenced object 0xffff (size 64):\n",
            "  comm \"insmod\"\n",
            "@@KMEMLEAK-END\n",
        ));
        assert_eq!(kmemleak(&some).len(), 2);
    }
}
