// SPDX-License-Identifier: GPL-2.0
//! KTAP/TAP13 as printed by the kselftest runner, with one level of
//! nesting: `run_kselftest.sh` prints a result per test program, and each
//! program's own KTAP (its subtests) indented by `# `.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// `program` or `program:subtest`.
    pub name: String,
    pub status: Status,
    /// Directive or reason (`SKIP why`, `TIMEOUT ...`), may be empty.
    pub note: String,
}

/// One result line (`ok 3 name # SKIP why`) without its `# ` prefixes.
pub fn parse_result(line: &str) -> Option<(bool, String, String)> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        return None;
    };
    let rest = rest
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    let (name, note) = match rest.find(" # ") {
        Some(i) => (&rest[..i], rest[i + 3..].trim()),
        None => (rest, ""),
    };
    let name = name.strip_prefix("- ").unwrap_or(name);
    Some((ok, name.trim().to_string(), note.to_string()))
}

fn status(ok: bool, note: &str) -> Status {
    let n = note.to_ascii_uppercase();
    if n.starts_with("SKIP") {
        Status::Skip
    } else if ok || n.starts_with("XFAIL") {
        Status::Pass
    } else {
        Status::Fail
    }
}

/// Depth of a line (number of leading `# ` prefixes) and its content.
fn depth(mut line: &str) -> (usize, &str) {
    let mut d = 0;
    while let Some(r) = line.strip_prefix("# ") {
        line = r;
        d += 1;
    }
    (d, line)
}

/// Leaf results of a kselftest run: each subtest of each program, and the
/// program itself when it has no subtests or failed with all of them passing
/// (a crash or a timeout). A test may print `@@NOTE FIXTURE.TEST text` before
/// its result: the text becomes the note of a result that has none (what a
/// soak did, for the table).
pub fn parse(lines: &[String]) -> Vec<TestResult> {
    let mut out = Vec::new();
    let mut subtests: Vec<TestResult> = Vec::new();
    let mut notes: Vec<(String, String)> = Vec::new();
    for raw in lines {
        let (d, line) = depth(raw.trim_end());
        if let Some((test, text)) = line.strip_prefix("@@NOTE ").and_then(|r| r.split_once(' ')) {
            notes.push((test.to_string(), text.to_string()));
            continue;
        }
        let Some((ok, name, mut note)) = parse_result(line) else {
            continue;
        };
        if note.is_empty() {
            if let Some(i) = notes.iter().position(|(t, _)| *t == name) {
                note = notes.remove(i).1;
            }
        }
        match d {
            0 => {
                // "selftests: drivers/virtio_balloon: balloon_test" -> "balloon_test"
                let prog = name.rsplit(": ").next().unwrap_or(&name).to_string();
                let st = status(ok, &note);
                let subtests_failed = subtests.iter().any(|t| t.status == Status::Fail);
                let empty = subtests.is_empty();
                for mut t in subtests.drain(..) {
                    t.name = format!("{prog}:{}", t.name);
                    out.push(t);
                }
                if empty || (st == Status::Fail && !subtests_failed) {
                    out.push(TestResult {
                        name: prog,
                        status: st,
                        note,
                    });
                }
            }
            1 => subtests.push(TestResult {
                name,
                status: status(ok, &note),
                note,
            }),
            _ => {}
        }
    }
    out
}

/// Results of the KUnit suites the kernel ran at boot, as `kunit:SUITE.TEST`. Boot-time KUnit
/// prints each suite as a KTAP subtest indented by four spaces under `# Subtest: SUITE`.
pub fn parse_kunit(lines: &[String]) -> Vec<TestResult> {
    let mut out = Vec::new();
    let mut suite: Option<String> = None;
    for raw in lines {
        let l = raw.trim_end();
        let t = l.trim_start();
        if let Some(s) = t.strip_prefix("# Subtest: ") {
            suite = Some(s.trim().to_string());
            continue;
        }
        let Some(su) = &suite else { continue };
        let indent = l.len() - t.len();
        match (indent, parse_result(t)) {
            (4, Some((ok, name, note))) => out.push(TestResult {
                name: format!("kunit:{su}.{name}"),
                status: status(ok, &note),
                note,
            }),
            (0, Some(_)) => suite = None,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result("ok 1 a.b"),
            Some((true, "a.b".into(), "".into()))
        );
        assert_eq!(
            parse_result("not ok 12 - x # TIMEOUT 45 seconds"),
            Some((false, "x".into(), "TIMEOUT 45 seconds".into()))
        );
        assert_eq!(
            parse_result("ok 2 y # SKIP no device"),
            Some((true, "y".into(), "SKIP no device".into()))
        );
        assert_eq!(parse_result("# ok 1 y"), None);
        assert_eq!(parse_result("okay"), None);
    }

    #[test]
    fn notes_join_their_result() {
        let log = v(concat!(
            "# selftests: drivers/virtio_balloon: balloon_stress_test\n",
            "# # @@NOTE soak.a 40 changes\n",
            "# ok 1 soak.a\n",
            "# # @@NOTE soak.b ignored\n",
            "# ok 2 soak.b # SKIP no host\n",
            "# ok 3 soak.c\n",
            "ok 1 selftests: drivers/virtio_balloon: balloon_stress_test\n",
        ));
        let r = parse(&log);
        let notes: Vec<_> = r
            .iter()
            .map(|t| (t.name.as_str(), t.note.as_str()))
            .collect();
        assert_eq!(
            notes,
            [
                ("balloon_stress_test:soak.a", "40 changes"),
                ("balloon_stress_test:soak.b", "SKIP no host"),
                ("balloon_stress_test:soak.c", ""),
            ]
        );
    }

    #[test]
    fn nested_run() {
        let log = v(concat!(
            "TAP version 13\n",
            "1..2\n",
            "# selftests: drivers/virtio_balloon: balloon_test\n",
            "# TAP version 13\n",
            "# 1..3\n",
            "# #  RUN balloon.a ...\n",
            "# ok 1 balloon.a\n",
            "# not ok 2 balloon.b\n",
            "# ok 3 balloon.c # SKIP no host\n",
            "not ok 1 selftests: drivers/virtio_balloon: balloon_test # exit=1\n",
            "# selftests: drivers/virtio_balloon: balloon_bind.sh\n",
            "ok 2 selftests: drivers/virtio_balloon: balloon_bind.sh\n",
        ));
        let r = parse(&log);
        let names: Vec<_> = r.iter().map(|t| (t.name.as_str(), t.status)).collect();
        assert_eq!(
            names,
            vec![
                ("balloon_test:balloon.a", Status::Pass),
                ("balloon_test:balloon.b", Status::Fail),
                ("balloon_test:balloon.c", Status::Skip),
                ("balloon_bind.sh", Status::Pass),
            ]
        );
    }

    #[test]
    fn program_failing_with_passing_subtests_counts() {
        let log = v("# ok 1 t.a\nnot ok 1 selftests: d: prog # TIMEOUT 180 seconds\n");
        let r = parse(&log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "prog");
        assert_eq!(r[1].status, Status::Fail);
    }

    #[test]
    fn kunit_suites() {
        let log = v(concat!(
            "KTAP version 1\n",
            "1..1\n",
            "    KTAP version 1\n",
            "    # Subtest: rust_kernel_balloon\n",
            "    1..2\n",
            "    ok 1 empty\n",
            "    not ok 2 full\n",
            "# rust_kernel_balloon: pass:1 fail:1\n",
            "not ok 1 rust_kernel_balloon\n",
            "ok 1 selftests: d: p\n",
        ));
        let r = parse_kunit(&log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "kunit:rust_kernel_balloon.empty");
        assert_eq!(r[1].status, Status::Fail);
    }

    #[test]
    fn kernel_messages_in_between_are_ignored() {
        let log = v(concat!(
            "[   1.0] virtio_balloon virtio1: ok 1 is not a result\n",
            "# ok 1 t.a\r\n",
            "ok 1 selftests: d: p\n",
        ));
        assert_eq!(parse(&log).len(), 1);
    }
}
