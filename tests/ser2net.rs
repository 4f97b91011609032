//! Our own client through Debian's ser2net, in front of the simulator's pseudo-terminal: the
//! RFC 2217 accepter (`rfc2217://`: Telnet negotiation, 0xFF doubled both ways, DTR/RTS requests
//! that ser2net never answers on a pty) and the raw TCP accepter (`tcp://`). Recipes from
//! links.md §3.1; ser2net runs unprivileged with -n -u and its own pidfile.

mod common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLASH: u32 = 0x0800_0000;

/// ser2net serving the simulator's pty on two ports; killed on drop.
struct Ser2net {
    child: Child,
    rfc2217: u16,
    raw: u16,
}

impl Drop for Ser2net {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    l.local_addr().expect("probe address").port()
}

fn ser2net_binary() -> std::path::PathBuf {
    for p in ["/usr/sbin/ser2net", "/usr/bin/ser2net"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    require_tool(
        "ser2net",
        "the Debian package: sudo apt-get install ser2net",
    )
}

fn start_ser2net(dir: &Path, tty: &Path) -> Ser2net {
    let exe = ser2net_binary();
    let (rfc2217, raw) = (free_port(), free_port());
    let config = dir.join("ser2net.yaml");
    let tty = path_str(tty);
    std::fs::write(
        &config,
        format!(
            "%YAML 1.1\n---\n\
             connection: &stm32rfc\n    accepter: telnet(rfc2217),tcp(nodelay),127.0.0.1,{rfc2217}\n    \
             connector: serialdev,{tty},115200e81,local\n    options:\n      kickolduser: true\n\
             connection: &stm32raw\n    accepter: tcp(nodelay),127.0.0.1,{raw}\n    \
             connector: serialdev,{tty},115200e81,local\n"
        ),
    )
    .expect("ser2net config");
    let child = Command::new(exe)
        .args(["-n", "-u", "-c"])
        .arg(&config)
        .arg("-P")
        .arg(dir.join("ser2net.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("ser2net.log")).expect("ser2net log"))
        .spawn()
        .expect("ser2net starts");
    let s = Ser2net {
        child,
        rfc2217,
        raw,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in [rfc2217, raw] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ser2net did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("ser2net.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    s
}

#[test]
fn our_client_writes_verifies_and_reads_through_ser2net() {
    let chip = SimChip::new("stm32l476");
    let sim = PtySim::start(&chip);
    let ser2net = start_ser2net(chip.dir.path(), &sim.link);
    let rfc = format!("rfc2217://127.0.0.1:{}", ser2net.rfc2217);

    let out = ok(&["info", "--port", &rfc]);
    assert!(out.contains("STM32L47x"), "{out}");

    // Random data holds plenty of 0xFF, which RFC 2217 doubles in both directions; the
    // read-back verify of erased flash after the image is all 0xFF.
    let mut image = pattern(40 * 1024, 11);
    image[100..400].fill(0xFF);
    let file = chip.file("fw.bin");
    std::fs::write(&file, &image).expect("image");
    ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &rfc,
    ]);

    let back = chip.file("back.bin");
    ok(&[
        "read",
        "0x08000000",
        "41K",
        "-o",
        path_str(&back),
        "--port",
        &rfc,
    ]);
    let got = std::fs::read(&back).expect("read-back file");
    assert_eq!(&got[..image.len()], &image[..]);
    assert!(got[image.len()..].iter().all(|&b| b == 0xFF));

    // The raw accepter: bytes only, no line control (our client warns if asked for DTR/RTS).
    let raw = format!("tcp://127.0.0.1:{}", ser2net.raw);
    let out = ok(&["checksum", "0x08000000", "40K", "--port", &raw]);
    let crc = stm32boot::protocol::crc::stm32_crc(&image);
    assert!(
        out.contains(&format!("{crc:08X}")),
        "{out}\nexpected {crc:08X}"
    );

    drop(ser2net);
    sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image);
}
