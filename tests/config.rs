//! stm32boot.toml: found in the working directory or a parent and in the user's config
//! directory, merged key by key under the environment and the command line; unknown keys and
//! bad values are refused with the file and line; `device` and `protect` guard a station.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Output;

/// A station: a working directory holding stm32boot.toml (and a subdirectory to run from), and
/// a separate user configuration directory.
struct Station {
    dir: tempfile::TempDir,
    xdg: tempfile::TempDir,
}

impl Station {
    fn new(local: &str) -> Station {
        let s = Station {
            dir: tempfile::tempdir().expect("test setup"),
            xdg: tempfile::tempdir().expect("test setup"),
        };
        std::fs::write(s.local_file(), local).expect("test setup");
        std::fs::create_dir_all(s.dir.path().join("work")).expect("test setup");
        s
    }

    fn local_file(&self) -> PathBuf {
        self.dir.path().join("stm32boot.toml")
    }

    fn user_file(&self, text: &str) -> PathBuf {
        let d = self.xdg.path().join("stm32boot");
        std::fs::create_dir_all(&d).expect("test setup");
        let f = d.join("stm32boot.toml");
        std::fs::write(&f, text).expect("test setup");
        f
    }

    /// Run in the `work` subdirectory (so the file is found in a parent), with `env`.
    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let xdg = path_str(self.xdg.path()).to_string();
        let mut all = vec![("XDG_CONFIG_HOME", xdg.as_str())];
        all.extend_from_slice(env);
        run_in(&self.dir.path().join("work"), &all, args)
    }

    fn ok(&self, env: &[(&str, &str)], args: &[&str]) -> (String, String) {
        let out = self.run(env, args);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "stm32boot {args:?} failed ({:?}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status.code()
        );
        (stdout, stderr)
    }

    fn fails(&self, env: &[(&str, &str)], args: &[&str], code: i32) -> String {
        let out = self.run(env, args);
        let (stdout, stderr) = texts(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stm32boot {args:?}: expected exit {code}\nstdout: {stdout}\nstderr: {stderr}"
        );
        stderr
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn device_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("device:"))
        .unwrap_or("")
}

#[test]
fn the_port_comes_from_the_local_file() {
    let st = Station::new("# test station\nport = \"sim:stm32f411\"\n");
    let (stdout, _) = st.ok(&[], &["info"]);
    assert!(device_line(&stdout).contains("STM32F411"), "{stdout}");
    // Subcommands nested one level further take it too.
    let (stdout, _) = st.ok(&[], &["ob", "show"]);
    assert!(stdout.contains("STM32F411"), "{stdout}");
}

#[test]
fn the_environment_beats_the_file_and_the_command_line_beats_both() {
    let st = Station::new("port = \"sim:stm32f411\"\n");
    let env = [("STM32BOOT_PORT", "sim:stm32l476")];
    let (stdout, _) = st.ok(&env, &["info"]);
    assert!(device_line(&stdout).contains("STM32L47x"), "{stdout}");
    let (stdout, _) = st.ok(&env, &["info", "--port", "sim:stm32f103xb"]);
    assert!(
        device_line(&stdout).contains("STM32F10x medium density"),
        "{stdout}"
    );
    // One level above the leaf subcommand (`protect --port P write off`).
    let (stdout, stderr) = st.ok(
        &[],
        &["protect", "--port", "sim:stm32l476", "-v", "write", "off"],
    );
    assert!(stdout.contains("write protection removed"), "{stdout}");
    assert!(
        stderr.contains("setting port = sim:stm32l476 (from command line)"),
        "{stderr}"
    );
}

#[test]
fn the_local_file_beats_the_user_file_key_by_key() {
    let st = Station::new("port = \"sim:stm32f411\"\n");
    let user = st.user_file("port = \"sim:stm32l476\"\nbaud = 57600\n");
    let (stdout, stderr) = st.ok(&[], &["info", "-v"]);
    assert!(device_line(&stdout).contains("STM32F411"), "{stdout}");
    let local = st.local_file();
    assert!(
        stderr.contains(&format!(
            "setting port = sim:stm32f411 (from {}:1)",
            local.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("setting baud = 57600 (from {}:2)", user.display())),
        "{stderr}"
    );
    // --no-config reads neither.
    let err = st.fails(&[], &["info", "--no-config"], 2);
    assert!(err.contains("no port given"), "{err}");
}

#[test]
fn an_explicit_file_is_the_only_one_read() {
    let st = Station::new("port = \"sim:stm32f411\"\n");
    let other = st.dir.path().join("other.toml");
    std::fs::write(&other, "port = \"sim:stm32l476\"\n").expect("test setup");
    let (stdout, _) = st.ok(&[("STM32BOOT_CONFIG", path_str(&other))], &["info"]);
    assert!(device_line(&stdout).contains("STM32L47x"), "{stdout}");
    let (stdout, _) = st.ok(&[], &["info", "--config", "../other.toml"]);
    assert!(device_line(&stdout).contains("STM32L47x"), "{stdout}");
    let err = st.fails(&[], &["info", "--config", "missing.toml"], 2);
    assert!(err.contains("missing.toml: cannot read it"), "{err}");
}

#[test]
fn an_unknown_key_is_refused_with_file_and_line() {
    let st = Station::new("port = \"sim:stm32f411\"\nbaud = 115200\nprot = [\"0x0801F800:2K\"]\n");
    let err = st.fails(&[], &["info"], 2);
    let expected = format!(
        "{}:3: unknown key 'prot' (did you mean 'protect'?); known keys: port, baud,",
        st.local_file().display()
    );
    assert!(err.contains(&expected), "{err}");
    // Commands that do not connect do not read it.
    st.ok(&[], &["devices", "stm32f411"]);
}

#[test]
fn a_bad_value_is_refused_with_file_and_line() {
    let st = Station::new("port = \"sim:stm32f411\"\n\nbaud = 50\n");
    let err = st.fails(&[], &["info"], 2);
    assert!(
        err.contains(&format!(
            "{}:3: baud 50 is out of range",
            st.local_file().display()
        )),
        "{err}"
    );
    let st = Station::new("port = \"sim:stm32f411\"\nparity = \"mark\"\n");
    let err = st.fails(&[], &["info"], 2);
    assert!(err.contains("stm32boot.toml:2: parity = 'mark'"), "{err}");
}

#[test]
fn a_relative_device_file_is_relative_to_the_configuration_file() {
    let chip = SimChip::with_options("stm32f411", "pid=0x4FF");
    let st = Station::new(&format!(
        "port = '{}'\ndevice_file = \"parts/extra.toml\"\ndevice = \"stm32x999\"\n",
        chip.port()
    ));
    let parts = st.dir.path().join("parts");
    std::fs::create_dir_all(&parts).expect("test setup");
    std::fs::write(
        parts.join("extra.toml"),
        r#"
[[device]]
pid = 0x4FF
name = "STM32X999 (from a device file)"
parts = ["stm32x999"]
family = "F4"
flash_size = "512K"
sectors = ["16K", "16K", "16K", "16K", "64K", "128K"]
ram = { start = 0x20000000, end = 0x2001FFFF }
bootloader_ram_end = 0x20003000
system_memory = { start = 0x1FFF0000, end = 0x1FFF77FF }
option_bytes = [{ start = 0x1FFFC000, end = 0x1FFFC00F }]
bootloader = { version = 0x31, commands = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92] }
"#,
    )
    .expect("test setup");
    // Run from `work`: the path is relative to the file's directory, not the working one.
    let (stdout, _) = st.ok(&[], &["info"]);
    assert!(
        device_line(&stdout).contains("STM32X999 (from a device file)"),
        "{stdout}"
    );
}

#[test]
fn another_part_than_the_expected_device_is_refused_before_writing() {
    let chip = SimChip::new("stm32f411");
    let st = Station::new(&format!(
        "port = '{}'\ndevice = \"STM32L47x\"\n",
        chip.port()
    ));
    let image = chip.file("fw.bin");
    std::fs::write(&image, pattern(1024, 1)).expect("test setup");
    let err = st.fails(
        &[],
        &["write", path_str(&image), "--address", "0x08000000"],
        2,
    );
    assert!(
        err.contains("the chip is a STM32F411xC/xE")
            && err.contains("stm32boot.toml:2 expects device = \"STM32L47x\""),
        "{err}"
    );
    assert_eq!(chip.peek(0x0800_0000, 1024), vec![0xFF; 1024]);
    // The expected part is accepted.
    std::fs::write(
        st.local_file(),
        format!("port = '{}'\ndevice = \"STM32F411\"\n", chip.port()),
    )
    .expect("test setup");
    st.ok(&[], &["write", path_str(&image), "--address", "0x08000000"]);
    assert_eq!(chip.peek(0x0800_0000, 1024), pattern(1024, 1));
    // A name the device table does not know is refused before the port opens.
    std::fs::write(
        st.local_file(),
        format!("port = '{}'\ndevice = \"STM32F4x1\"\n", chip.port()),
    )
    .expect("test setup");
    let err = st.fails(&[], &["info"], 2);
    assert!(err.contains("names no part in the device table"), "{err}");
}

#[test]
fn a_protected_range_from_the_file_refuses_a_write_that_would_erase_it() {
    let chip = SimChip::new("stm32f411");
    let st = Station::new(&format!(
        "port = '{}'\nprotect = [\"0x08004000:2K\"]\n",
        chip.port()
    ));
    let image = chip.file("fw.bin");
    std::fs::write(&image, pattern(512, 2)).expect("test setup");
    // Sector 1 (0x08004000-0x08007FFF) holds the range.
    let err = st.fails(
        &[],
        &["write", path_str(&image), "--address", "0x08004400"],
        2,
    );
    assert!(err.contains("protected range 0x08004000"), "{err}");
    assert_eq!(chip.peek(0x0800_4400, 512), vec![0xFF; 512]);
    // Sector 0 is not protected, and --force overrides the file as it does --protect.
    st.ok(&[], &["write", path_str(&image), "--address", "0x08000000"]);
    st.ok(
        &[],
        &[
            "write",
            path_str(&image),
            "--address",
            "0x08004400",
            "--force",
        ],
    );
    assert_eq!(chip.peek(0x0800_4400, 512), pattern(512, 2));
}

#[test]
fn no_port_anywhere_says_where_to_put_one() {
    let usb = stm32boot::transport::serial::list_ports()
        .map(|p| stm32boot::transport::usb::adapters(&p).len())
        .unwrap_or(0);
    if usb > 0 {
        // With an adapter plugged in, the tool would pick it (one) or list them (several).
        return;
    }
    let st = Station::new("baud = 57600\n");
    let err = st.fails(&[], &["info"], 2);
    assert!(
        err.contains("no port given and no USB serial adapter found")
            && err.contains(&format!(
                "configuration read: {}",
                st.local_file().display()
            )),
        "{err}"
    );
    let err = st.fails(&[], &["info", "--port", "usb:0403:6001"], 3);
    assert!(
        err.contains("cannot open usb:0403:6001: no USB serial adapter is plugged in"),
        "{err}"
    );
}
