//! `stm32boot run JOB.toml` against the simulated target: a whole job, its dry run, the JSON
//! Lines event stream (checked against tests/job_events.schema.json), a job cut off by a link
//! cut mid-write and resumed without writing any page twice (proved by the simulator's erase
//! counters, which it keeps per page in its state file), and job files refused before anything
//! reaches the chip.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use stm32boot::image::Image;

const FLASH: u32 = 0x0800_0000;

/// A simulated chip with a job directory (its temporary directory) and a state directory.
struct Station {
    chip: SimChip,
}

impl Station {
    fn new(part: &str, options: &str) -> Station {
        Station {
            chip: SimChip::with_options(part, options),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.chip.file("state")
    }

    /// Write `name` in the job directory.
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.chip.file(name);
        std::fs::write(&p, bytes).expect("test setup");
        p
    }

    fn job(&self, text: &str) -> PathBuf {
        self.put("job.toml", text.as_bytes())
    }

    /// `stm32boot run JOB --port PORT --state-dir STATE EXTRA…`
    fn run(&self, job: &Path, port: &str, extra: &[&str]) -> Output {
        let state = self.state_dir();
        let mut args = vec![
            "run",
            path_str(job),
            "--port",
            port,
            "--state-dir",
            path_str(&state),
        ];
        args.extend(extra);
        run(&args)
    }

    /// Per-page erase counts of the chip, by page index.
    fn erase_counts(&self) -> Vec<(u16, u32)> {
        let chip = self.chip.chip();
        chip.device()
            .pages
            .iter()
            .zip(chip.erase_counts())
            .map(|(p, c)| (p.index, *c))
            .collect()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every line of a `--json` stream, parsed and checked against the schema and the ordering
/// rules.
fn events(out: &Output) -> Vec<Value> {
    let text = stdout(out);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/job_events.schema.json"),
        )
        .expect("the schema file"),
    )
    .expect("the schema parses");
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", i + 1));
        check_event(&schema, &v);
        list.push(v);
    }
    check_order(&list);
    list
}

/// One event against the schema: a known kind, every field present with its type, no others.
fn check_event(schema: &Value, v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let kind = obj
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no event name: {v}"));
    let fields = schema["events"][kind]
        .as_object()
        .unwrap_or_else(|| panic!("unknown event kind {kind}: {v}"));
    for key in obj.keys().filter(|k| *k != "event") {
        assert!(
            fields.contains_key(key),
            "{kind}: unexpected field {key}: {v}"
        );
    }
    for (key, ty) in fields {
        let value = obj
            .get(key)
            .unwrap_or_else(|| panic!("{kind}: missing field {key}: {v}"));
        let ty = ty.as_str().expect("schema types are strings");
        let ok = ty.split('|').any(|t| match t {
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            t => match t.strip_prefix("enum:") {
                Some(list) => value
                    .as_str()
                    .is_some_and(|s| list.split(',').any(|x| x == s)),
                None => panic!("schema type {t}"),
            },
        });
        assert!(ok, "{kind}.{key} should be {ty}: {v}");
    }
}

/// The order: `job_started` first (or a lone `error` when the job never started), steps in
/// order, each started step finished before the next, progress only inside a started step, and
/// `job_finished` or `error` last, exactly once.
fn check_order(list: &[Value]) {
    let kinds: Vec<&str> = list
        .iter()
        .map(|v| v["event"].as_str().unwrap_or(""))
        .collect();
    let last = *kinds.last().expect("at least one event");
    assert!(
        last == "job_finished" || last == "error",
        "last event: {last}"
    );
    let ends = kinds
        .iter()
        .filter(|k| **k == "job_finished" || **k == "error")
        .count();
    assert_eq!(ends, 1, "one end event: {kinds:?}");
    if kinds.len() == 1 {
        assert_eq!(last, "error");
        return;
    }
    let first_job = kinds
        .iter()
        .position(|k| *k == "job_started")
        .expect("job_started");
    assert!(
        kinds[..first_job]
            .iter()
            .all(|k| *k == "warning" || *k == "info"),
        "only notes before job_started: {kinds:?}"
    );
    let steps = list[first_job]["steps"].as_u64().expect("steps");
    let mut current: Option<u64> = None;
    let mut last_step = 0u64;
    for v in &list[first_job + 1..] {
        let step = v["step"].as_u64();
        match v["event"].as_str().unwrap_or("") {
            "step_started" => {
                let s = step.expect("step");
                assert!(current.is_none(), "step {s} started inside another");
                assert!(s > last_step && s <= steps, "step {s} out of order");
                current = Some(s);
                last_step = s;
            }
            "progress" => {
                assert_eq!(step, current, "progress outside its step: {v}");
                assert!(v["done"].as_u64() <= v["total"].as_u64(), "{v}");
            }
            "step_finished" => {
                assert_eq!(step, current, "{v}");
                current = None;
            }
            "step_skipped" | "step_planned" => {
                let s = step.expect("step");
                assert!(current.is_none() && s > last_step && s <= steps, "{v}");
                last_step = s;
            }
            "error" => {
                if let Some(s) = step {
                    assert_eq!(Some(s), current, "the error names the running step: {v}");
                }
            }
            "job_finished" => {
                assert!(current.is_none(), "job finished inside a step");
                assert_eq!(v["steps"].as_u64(), Some(steps));
            }
            _ => {}
        }
    }
}

fn of_kind<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|v| v["event"] == kind).collect()
}

/// The example F411 firmware, and a 24 KiB binary.
struct Images {
    hex: PathBuf,
    hex_image: Image,
    bin: Vec<u8>,
}

fn images(st: &Station) -> Images {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/blinky-f411.hex");
    let text = std::fs::read(&example).expect("the example image");
    let hex = st.put("app.hex", &text);
    let hex_image = Image::load(&hex, None, None).expect("the example loads");
    let bin = pattern(24 * 1024, 5);
    st.put("data.bin", &bin);
    Images {
        hex,
        hex_image,
        bin,
    }
}

/// Erase sector 5, write the example at the start of flash and 24 KiB at 0x08004000 (sector 1
/// and half of sector 2), verify both, start the application.
const FULL_JOB: &str = r#"
name = "full"

[[step]]
do = "erase"
pages = "5"

[[step]]
name = "application"
do = "write"
file = "app.hex"
verify = true

[[step]]
do = "write"
file = "data.bin"
address = 0x08004000

[[step]]
do = "verify"
file = "data.bin"
address = "0x08004000"

[[step]]
do = "verify"
file = "app.hex"

[[step]]
do = "go"
"#;

/// Fill sector 5 so that erasing it shows.
fn fill_sector_5(st: &Station) {
    let filler = st.put("filler.bin", &pattern(4096, 9));
    ok(&[
        "write",
        path_str(&filler),
        "-a",
        "0x08020000",
        "--no-journal",
        "--port",
        &st.chip.port(),
    ]);
}

#[test]
fn a_job_erases_writes_verifies_and_starts_the_application() {
    let st = Station::new("stm32f411", "");
    let img = images(&st);
    // An older firmware in sectors 0 to 4, so that the writes must erase.
    st.chip.fill(FLASH, &[0x00; 0x2_0000]);
    fill_sector_5(&st);
    let job = st.job(FULL_JOB);
    let out = st.run(&job, &st.chip.port(), &[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for line in [
        "[1/6] erased 1 page(s)",
        "[2/6] wrote",
        "verified",
        "[6/6] started the application at 0x08000000",
        "job done: 6 step(s)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(st.chip.peek(0x0802_0000, 4096).iter().all(|&b| b == 0xFF));
    assert_eq!(st.chip.peek(0x0800_4000, img.bin.len()), img.bin);
    for (addr, data) in img.hex_image.segments() {
        assert_eq!(st.chip.peek(addr, data.len()), data, "at 0x{addr:08X}");
    }
    let counts = st.erase_counts();
    for (page, count) in counts {
        // Sector 5's filler went into blank flash (no erase); the job's erase step erased it.
        let want = u32::from(matches!(page, 0 | 1 | 2 | 5));
        assert_eq!(count, want, "page {page}");
    }
    // The job finished: its progress is gone, so the next run does every step again.
    let jobs = st.state_dir().join("jobs");
    assert_eq!(
        std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0),
        0,
        "no saved progress is left"
    );
    assert!(img.hex.exists());
}

#[test]
fn dry_run_lists_every_page_and_changes_nothing() {
    let st = Station::new("stm32f411", "");
    images(&st);
    fill_sector_5(&st);
    let before = st.chip.peek(FLASH, 512 * 1024);
    let counts = st.erase_counts();
    let job = st.job(FULL_JOB);
    let out = st.run(&job, &st.chip.port(), &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "[1/6] erase pages 5: would erase 1 page(s)",
        "page    5 at 0x08020000 (128 KiB)",
        "page    0 at 0x08000000 (16 KiB)",
        "page    1 at 0x08004000 (16 KiB)",
        "page    2 at 0x08008000 (16 KiB)",
        "page 2 (0x08008000) is only partly covered",
        "[6/6] go: would start the application at 0x08000000",
        "(dry run: nothing was changed)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert_eq!(st.chip.peek(FLASH, 512 * 1024), before);
    assert_eq!(st.erase_counts(), counts);
    // The same plan as JSON Lines.
    let out = st.run(&job, &st.chip.port(), &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = events(&out);
    let planned = of_kind(&list, "step_planned");
    assert_eq!(planned.len(), 6);
    assert_eq!(planned[0]["plan"]["pages"], serde_json::json!([5]));
    assert_eq!(
        planned[2]["plan"]["pages_to_erase"],
        serde_json::json!([1, 2])
    );
    assert_eq!(list[0]["dry_run"], true);
    assert_eq!(st.chip.peek(FLASH, 512 * 1024), before);
}

#[test]
fn the_json_stream_follows_the_schema() {
    let st = Station::new("stm32f411", "");
    images(&st);
    let job = st.job(FULL_JOB);
    let out = st.run(&job, &st.chip.port(), &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = events(&out);
    assert_eq!(list[0]["event"], "job_started");
    assert_eq!(list[0]["name"], "full");
    assert_eq!(list[0]["steps"], 6);
    assert_eq!(list[0]["part"], "STM32F411xC/xE");
    assert_eq!(of_kind(&list, "step_started").len(), 6);
    let finished = of_kind(&list, "step_finished");
    assert_eq!(finished.len(), 6);
    assert_eq!(finished[1]["name"], "application");
    assert_eq!(finished[1]["do"], "write");
    assert!(finished[1]["result"]["report"]["blocks_written"].as_u64() > Some(0));
    assert_eq!(finished[5]["result"]["address"], 0x0800_0000);
    let progress = of_kind(&list, "progress");
    assert!(!progress.is_empty());
    // Rate-limited: far fewer events than 256-byte blocks.
    let writes = progress
        .iter()
        .filter(|v| v["phase"] == "write" && v["step"] == 3)
        .count();
    assert!((2..=101).contains(&writes), "{writes} progress events");
    let last = list.last().expect("events");
    assert_eq!(last["event"], "job_finished");
    assert_eq!(last["ok"], true);
    assert_eq!(last["skipped"], 0);
    // A failing connection: a lone error event with the code and exit code of `write`.
    let out = st.run(&job, &st.chip.port(), &["--json"]);
    assert_eq!(out.status.code(), Some(3), "the application runs now");
    let list = events(&out);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["code"], "no-sync");
    assert_eq!(list[0]["exit_code"], 3);
    assert!(list[0]["step"].is_null());
}

/// Erase a page away from the image, write 40 KiB (sector 2 only in part, so it is journalled)
/// with verify, verify again, start.
const RESUME_JOB: &str = r#"
[[step]]
do = "erase"
pages = "5"

[[step]]
name = "firmware"
do = "write"
file = "fw.bin"
address = 0x08000000
verify = true

[[step]]
do = "verify"
file = "fw.bin"
address = 0x08000000

[[step]]
do = "go"
"#;

/// What each page of the image holds after the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Done,
    Blank,
    Other,
}

fn held(st: &Station, fw: &[u8], pages: &[(u32, u32)]) -> Vec<Held> {
    pages
        .iter()
        .map(|&(addr, size)| {
            let now = st.chip.peek(addr, size as usize);
            let off = (addr - FLASH) as usize;
            let end = (off + size as usize).min(fw.len());
            let mut want = vec![0xFF; size as usize];
            want[..end - off].copy_from_slice(&fw[off..end]);
            if now == want {
                Held::Done
            } else if now.iter().all(|&b| b == 0xFF) {
                Held::Blank
            } else {
                Held::Other
            }
        })
        .collect()
}

/// Cut the link `cut` bytes into the job, run it again, and prove that nothing finished before
/// the cut was done twice. Returns the events of both runs.
fn cut_and_resume(
    part: &str,
    options: &str,
    fw_len: usize,
    cut: u64,
    erase_page: u16,
) -> (Vec<Value>, Vec<Value>) {
    let st = Station::new(part, options);
    let fw = pattern(fw_len, 77);
    st.put("fw.bin", &fw);
    // An older firmware under the new one, so that every page it touches must be erased.
    st.chip.fill(FLASH, &vec![0x00; fw_len]);
    let job = st.job(&RESUME_JOB.replace("pages = \"5\"", &format!("pages = \"{erase_page}\"")));
    let device = st.chip.chip().device().clone();
    let pages: Vec<(u16, u32, u32)> = device
        .pages_overlapping(FLASH, u64::from(FLASH) + fw_len as u64)
        .iter()
        .map(|p| (p.index, p.address, p.size))
        .collect();
    let spans: Vec<(u32, u32)> = pages.iter().map(|p| (p.1, p.2)).collect();

    let cut_port = format!("{}&cut_after={cut}", st.chip.port());
    let first = st.run(&job, &cut_port, &["--json"]);
    assert_eq!(
        first.status.code(),
        Some(6),
        "the cut is a link error: {}",
        stdout(&first)
    );
    let first = events(&first);
    let err = first.last().expect("events");
    assert_eq!(err["event"], "error");
    assert_eq!(err["code"], "link");
    assert_eq!(err["exit_code"], 6);
    assert_eq!(err["step"], 2, "cut mid-write: {err}");
    assert_eq!(
        of_kind(&first, "step_finished").len(),
        1,
        "the erase finished"
    );

    let after_cut = held(&st, &fw, &spans);
    let counts_at_cut = st.erase_counts();
    assert!(
        after_cut.contains(&Held::Done),
        "some pages were written before the cut: {after_cut:?}"
    );
    assert_eq!(
        after_cut.iter().filter(|h| **h == Held::Other).count(),
        1,
        "exactly one page was cut half-written: {after_cut:?}"
    );

    let second = st.run(&job, &st.chip.port(), &["--json"]);
    assert!(second.status.success(), "{}", stdout(&second));
    let second = events(&second);
    assert_eq!(second[0]["resumed"], true);
    let skipped = of_kind(&second, "step_skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["step"], 1);
    assert_eq!(skipped[0]["do"], "erase");
    let started = of_kind(&second, "step_started");
    assert_eq!(started[0]["step"], 2);
    assert_eq!(started[0]["resumed"], true);
    let done = second.last().expect("events");
    assert_eq!(done["event"], "job_finished");
    assert_eq!(done["skipped"], 1);
    let report = &of_kind(&second, "step_finished")[0]["result"]["report"];
    let unchanged = after_cut.iter().filter(|h| **h == Held::Done).count();
    // Pages done before the cut, and a journalled page the journal finished first.
    assert!(
        report["pages_unchanged"].as_u64() >= Some(unchanged as u64),
        "{report}"
    );
    assert_eq!(report["pages_erased"], 1, "only the cut page: {report}");

    // No page written before the cut was erased (or written) again: each page was erased once
    // over both runs, except the one the cut left half-written.
    let counts = st.erase_counts();
    for (page, count) in &counts {
        let at_cut = counts_at_cut
            .iter()
            .find(|(p, _)| p == page)
            .map_or(0, |(_, c)| *c);
        let i = pages.iter().position(|p| p.0 == *page);
        let want = match i.map(|i| after_cut[i]) {
            Some(Held::Other) => 2,
            Some(_) => 1,
            None if *page == erase_page => 1,
            None => 0,
        };
        assert_eq!(*count, want, "page {page}: erased {count} time(s)");
        if let Some(Held::Done) = i.map(|i| after_cut[i]) {
            assert_eq!(*count, at_cut, "page {page} was done before the cut");
        }
    }
    assert_eq!(
        st.chip.peek(FLASH, fw.len()),
        fw,
        "the chip holds the image"
    );
    assert_eq!(
        of_kind(&second, "step_finished")
            .iter()
            .filter(|v| v["do"] == "verify")
            .count(),
        1
    );
    let jobs = st.state_dir().join("jobs");
    assert_eq!(
        std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0),
        0,
        "the finished job's progress is removed"
    );
    (first, second)
}

#[test]
fn a_job_cut_mid_write_resumes_without_writing_any_page_twice() {
    // F411 (no Get Checksum: pages are compared by reading back), 16 KiB sectors: the cut falls
    // in sector 1, after sector 0 is written; sector 2 is partly covered and journalled.
    cut_and_resume("stm32f411", "", 40 * 1024, 40_000, 5);
    // L476 with bootloader 3.3 (Get Checksum: pages are compared by CRC), 2 KiB pages.
    let (_, second) = cut_and_resume("stm32l476", "version=0x33", 20 * 1024 + 512, 15_000, 40);
    assert!(
        second
            .iter()
            .any(|v| v["event"] == "progress" && v["phase"] == "check"),
        "the pages were checked"
    );
}

#[test]
fn a_changed_job_or_restart_does_not_resume_from_the_old_state() {
    for how in ["changed", "restart"] {
        let st = Station::new("stm32f411", "");
        st.put("fw.bin", &pattern(40 * 1024, 77));
        let job = st.job(RESUME_JOB);
        let cut_port = format!("{}&cut_after=40000", st.chip.port());
        assert_eq!(st.run(&job, &cut_port, &["--json"]).status.code(), Some(6));
        let extra: &[&str] = if how == "changed" {
            st.job(&format!("name = \"second edition\"\n{RESUME_JOB}"));
            &["--json"]
        } else {
            &["--json", "--restart"]
        };
        let out = st.run(&job, &st.chip.port(), extra);
        assert!(out.status.success(), "{how}: {}", stdout(&out));
        let list = events(&out);
        assert_eq!(list[0]["resumed"], false, "{how}");
        assert!(of_kind(&list, "step_skipped").is_empty(), "{how}");
        assert!(of_kind(&list, "step_started")
            .iter()
            .all(|v| v["resumed"] == false));
        // The erase step ran again.
        let counts = st.erase_counts();
        assert_eq!(
            counts.iter().find(|(p, _)| *p == 5).map(|(_, c)| *c),
            Some(2),
            "{how}"
        );
    }
}

#[test]
fn bad_job_files_are_refused_before_anything_reaches_the_chip() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown key",
            "[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\nverfy = true\n",
            &["job.toml:5:", "unknown key `verfy` in a write step", "verify"],
        ),
        (
            "missing image",
            "[[step]]\ndo = \"erase\"\nall = true\n\n[[step]]\ndo = \"write\"\nfile = \"missing.hex\"\n",
            &["job.toml:7:", "step 2 (write)", "missing.hex"],
        ),
        (
            "OTP without confirm_otp",
            "[[step]]\ndo = \"otp\"\nhex = \"DE AD BE EF\"\nblock = 0\n",
            &["job.toml:2:", "step 1 (otp)", "confirm_otp = true"],
        ),
        (
            "a key of another kind",
            "[[step]]\ndo = \"go\"\nverify = true\n",
            &["job.toml:3:", "not an option of go steps"],
        ),
        (
            "an unknown option name",
            "[[step]]\ndo = \"ob\"\nset = { BFB3 = 1 }\n",
            &["job.toml:2:", "BFB3"],
        ),
    ];
    for (what, text, expect) in cases {
        let st = Station::new("stm32f411", "");
        st.put("fw.bin", &[1; 64]);
        let job = st.job(text);
        let out = st.run(&job, &st.chip.port(), &[]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        for e in *expect {
            assert!(err.contains(e), "{what}: {e}: {err}");
        }
        assert!(
            !st.chip.state().exists(),
            "{what}: the port was opened (the simulator saved its state)"
        );
        let out = st.run(&job, &st.chip.port(), &["--json"]);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let list = events(&out);
        assert_eq!(list.len(), 1, "{what}");
        assert_eq!(list[0]["code"], "invalid-request", "{what}");
        assert_eq!(list[0]["exit_code"], 2, "{what}");
    }
}

#[test]
fn the_connect_table_gives_the_port_and_the_command_line_overrides_it() {
    let st = Station::new("stm32f411", "");
    let fw = pattern(1024, 3);
    st.put("fw.bin", &fw);
    let job = st.job(&format!(
        "[connect]\nport = \"{}\"\nbaud = 115200\n\n[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\nverify = true\n",
        st.chip.port()
    ));
    let state = st.state_dir();
    ok(&["run", path_str(&job), "--state-dir", path_str(&state)]);
    assert_eq!(st.chip.peek(FLASH, fw.len()), fw);
    // A port on the command line wins over the job's (which names a part that does not exist).
    let job = st.job(
        "[connect]\nport = \"sim:stm32nothing\"\n\n[[step]]\ndo = \"verify\"\nfile = \"fw.bin\"\naddress = 0x08000000\n",
    );
    let out = st.run(&job, &st.chip.port(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("matches the chip"));
    let out = run(&["run", path_str(&job), "--state-dir", path_str(&state)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("stm32nothing"), "{}", stderr(&out));
}

#[test]
fn provisioning_steps_run_again_safely() {
    // Coefficients, an option byte and OTP on an L476; the second run of the whole job finds
    // the option byte and the OTP as asked and writes the next coefficient slot.
    let st = Station::new("stm32l476", "");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/coeffs");
    let job = st.job(&format!(
        r#"
[[step]]
do = "coeffs"
layout = "{layout}"
values = "{values}"

[[step]]
do = "ob"
set = {{ nRST_STOP = 0 }}

[[step]]
do = "otp"
hex = "53 4E 2D 30 30 34 32 00"
block = 0
confirm_otp = true
"#,
        layout = path_str(&examples.join("sensor.toml")),
        values = path_str(&examples.join("values.toml")),
    ));
    let first = st.run(&job, &st.chip.port(), &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("to slot A"), "{text}");
    assert!(text.contains("nRST_STOP 1 -> 0"), "{text}");
    assert!(text.contains("wrote 8 OTP bytes"), "{text}");
    assert_eq!(st.chip.peek(0x1FFF_7000, 8), b"SN-0042\0");
    let second = st.run(&job, &st.chip.port(), &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = stdout(&second);
    assert!(text.contains("to slot B"), "{text}");
    assert!(text.contains("option bytes already as asked"), "{text}");
    assert!(text.contains("the OTP already holds"), "{text}");
    let read = ok(&[
        "coeffs",
        "read",
        path_str(&examples.join("sensor.toml")),
        "--port",
        &st.chip.port(),
    ]);
    assert!(read.contains("sequence 2"), "{read}");
}

#[test]
fn write_skip_unchanged_leaves_matching_pages_alone() {
    let st = Station::new("stm32f411", "");
    let mut fw = pattern(40 * 1024, 12);
    let file = st.put("fw.bin", &fw);
    // An older firmware under the new one, so that the first write erases every page.
    st.chip
        .fill(FLASH, &fw.iter().map(|b| !b).collect::<Vec<u8>>());
    let write = |extra: &[&str]| {
        let port = st.chip.port();
        let mut args = vec!["write", path_str(&file), "-a", "0x08000000", "--verify"];
        args.extend(extra);
        args.extend(["--port", port.as_str()]);
        ok(&args)
    };
    write(&[]);
    // One byte changes in sector 1.
    fw[0x4100] ^= 0xFF;
    std::fs::write(&file, &fw).expect("test setup");
    let out = write(&["--skip-unchanged"]);
    assert!(
        out.contains("1 page(s) erased") && out.contains("2 page(s) already held their content"),
        "{out}"
    );
    assert_eq!(st.chip.peek(FLASH, fw.len()), fw);
    let counts: Vec<u32> = st.erase_counts().iter().take(3).map(|(_, c)| *c).collect();
    assert_eq!(counts, vec![1, 2, 1]);
}
