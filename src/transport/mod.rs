//! Transports: serial ports, raw TCP relays, RFC 2217 bridges and the in-process simulated
//! target. Each implements [`crate::link::Link`] and knows nothing of AN3155. [`PortSpec`] parses
//! `--port` and opens the matching transport.

pub mod modem;
pub mod relay;
pub mod rfc2217;
pub mod serial;
pub mod sim;
pub mod tcp;
pub mod trace;
pub mod usb;

use crate::device::DeviceTable;
use crate::error::{Error, Result};
use crate::link::{LineSettings, Link};
use crate::sim::SimSpec;

/// Where to reach the bootloader, parsed from `--port`.
#[derive(Debug, Clone, PartialEq)]
pub enum PortSpec {
    /// A serial device path (`/dev/ttyUSB0`, `COM3`, a pseudo-terminal).
    Serial(String),
    /// The USB serial adapter with these IDs (`usb:0403:6001`, `usb:10c4:ea60:0001`), found
    /// among the serial ports when the link opens.
    Usb(usb::UsbFilter),
    /// The in-process simulated target (`sim:stm32f411?state=chip.sim`).
    Sim(Box<SimSpec>),
    /// A raw TCP byte pipe (`tcp://host:port`): `host:port`.
    Tcp(String),
    /// An RFC 2217 serial bridge (`rfc2217://host:port`): `host:port`.
    Rfc2217(String),
    /// An AT modem on a serial port, dialled into a transparent TCP connection
    /// (`modem:/dev/ttyUSB2?profile=telit&apn=…&host=…&port=…`).
    Modem(Box<modem::ModemSpec>),
    /// Wait for a device that dials out to us (`listen://addr:port[?wait=5m]`), then a raw
    /// TCP byte pipe.
    Listen {
        /// `addr:port` to listen on.
        addr: String,
        /// How long to wait for the device.
        wait: std::time::Duration,
    },
    /// A serial port shared by `stm32boot relay` (`relay://host:port[?key_file=PATH]`):
    /// authenticated with the pre-shared key, then RFC 2217.
    Relay(relay::RelayTarget),
    /// Wait for `stm32boot relay --connect` to dial in
    /// (`relay-listen://addr:port[?wait=DURATION&key_file=PATH]`), then as [`PortSpec::Relay`].
    RelayListen(relay::RelayTarget),
}

/// How long `listen://` waits for a device by default.
pub const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Split `scheme://rest` into `rest` and its `?key=value&…` query, keeping only `allowed`
/// keys.
fn with_query<'a>(
    scheme: &str,
    rest: &'a str,
    allowed: &[&str],
) -> Result<(&'a str, Vec<(&'a str, &'a str)>)> {
    let Some((base, query)) = rest.split_once('?') else {
        return Ok((rest, Vec::new()));
    };
    let mut pairs = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !allowed.contains(&k) {
            return Err(Error::InvalidRequest(format!(
                "'{scheme}://{rest}': unknown option '{k}'; {scheme}:// takes {}",
                allowed.join(", ")
            )));
        }
        pairs.push((k, v));
    }
    Ok((base, pairs))
}

/// The schemes `--port` accepts, for messages.
const SUPPORTED: &str = "a serial device path (/dev/ttyUSB0, COM3), usb:VID:PID[:SERIAL] (the \
                         USB serial adapter with these IDs), sim:PART (the simulator), \
                         modem:PATH?profile=… (an AT modem on a serial port, dialled into \
                         transparent mode), \
                         tcp://HOST:PORT (a raw TCP relay), rfc2217://HOST:PORT (an RFC 2217 \
                         bridge such as ser2net), relay://HOST:PORT (a port shared by `stm32boot \
                         relay`), relay-listen://ADDR:PORT (wait for a relay that dials out) \
                         or listen://ADDR:PORT (wait for a device that \
                         dials out)";

/// Check the `host:port` part of a `scheme://host:port` port and return it.
fn host_port(scheme: &str, rest: &str) -> Result<String> {
    let bad = |what: &str| {
        Error::InvalidRequest(format!(
            "'{scheme}://{rest}': {what}; write it as {scheme}://HOST:PORT, for example \
             {scheme}://192.168.1.50:7000"
        ))
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("no host and port"));
    }
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
        return Err(bad("only a host and a port may follow the scheme"));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(bad("write an IPv6 address in brackets, as [::1]:7000"));
    }
    if port.is_empty() {
        return Err(bad("no port"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("port 0 cannot be connected to")),
        Ok(_) => Ok(rest.to_string()),
        Err(_) => Err(bad(&format!("'{port}' is not a port number (1 to 65535)"))),
    }
}

impl PortSpec {
    /// Parse a `--port` value.
    pub fn parse(port: &str) -> Result<PortSpec> {
        if let Some(rest) = port.strip_prefix("usb:") {
            return Ok(PortSpec::Usb(usb::UsbFilter::parse(rest)?));
        }
        if let Some(rest) = port.strip_prefix("sim:") {
            return Ok(PortSpec::Sim(Box::new(SimSpec::parse(rest)?)));
        }
        if let Some(rest) = port.strip_prefix("modem:") {
            return Ok(PortSpec::Modem(Box::new(modem::ModemSpec::parse(rest)?)));
        }
        if let Some((scheme, rest)) = port.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "tcp" => Ok(PortSpec::Tcp(host_port("tcp", rest)?)),
                "rfc2217" => Ok(PortSpec::Rfc2217(host_port("rfc2217", rest)?)),
                "relay" => Ok(PortSpec::Relay(relay::RelayTarget::parse("relay", rest)?)),
                "relay-listen" => Ok(PortSpec::RelayListen(relay::RelayTarget::parse(
                    "relay-listen",
                    rest,
                )?)),
                "listen" => {
                    let (base, query) = with_query("listen", rest, &["wait"])?;
                    let mut wait = LISTEN_WAIT;
                    for (_, v) in query {
                        wait = crate::units::parse_duration(v).map_err(|e| {
                            Error::InvalidRequest(format!("listen://{rest}: wait={v}: {e}"))
                        })?;
                    }
                    Ok(PortSpec::Listen {
                        addr: host_port("listen", base)?,
                        wait,
                    })
                }
                _ => Err(Error::InvalidRequest(format!(
                    "'{scheme}://' ports are not supported: use {SUPPORTED}"
                ))),
            };
        }
        if port.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "no port given: pass --port with {SUPPORTED}; `stm32boot ports` lists serial \
                 ports"
            )));
        }
        Ok(PortSpec::Serial(port.to_string()))
    }

    /// Open the link.
    pub fn open(&self, line: LineSettings, table: &DeviceTable) -> Result<Box<dyn Link>> {
        match self {
            PortSpec::Serial(path) => Ok(Box::new(serial::SerialLink::open(path, line)?)),
            PortSpec::Usb(filter) => {
                let port = usb::resolve(filter)?;
                Ok(Box::new(serial::SerialLink::open(&port.path, line)?))
            }
            PortSpec::Sim(spec) => Ok(Box::new(sim::SimLink::new((**spec).clone(), table, line)?)),
            PortSpec::Tcp(addr) => Ok(Box::new(tcp::TcpLink::connect(addr, line)?)),
            PortSpec::Rfc2217(addr) => Ok(Box::new(rfc2217::Rfc2217Link::connect(addr, line)?)),
            PortSpec::Modem(spec) => Ok(Box::new(modem::ModemLink::open(spec, line)?)),
            PortSpec::Relay(target) => Ok(Box::new(relay::RelayLink::connect(target, line)?)),
            PortSpec::RelayListen(target) => Ok(Box::new(relay::RelayLink::listen(target, line)?)),
            PortSpec::Listen { addr, wait } => {
                Ok(Box::new(tcp::TcpLink::accept(addr, *wait, line)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert!(matches!(
            PortSpec::parse("sim:stm32f411").expect("test setup"),
            PortSpec::Sim(_)
        ));
        assert_eq!(
            PortSpec::parse("/dev/ttyUSB0").expect("test setup"),
            PortSpec::Serial("/dev/ttyUSB0".into())
        );
        assert!(PortSpec::parse("").is_err());
        assert_eq!(
            PortSpec::parse("usb:0403:6001").expect("test setup"),
            PortSpec::Usb(usb::UsbFilter {
                vid: 0x0403,
                pid: 0x6001,
                serial: None
            })
        );
        assert!(parse_error("usb:0403").contains("usb:VID:PID"));
        assert_eq!(
            PortSpec::parse("tcp://host:1").expect("test setup"),
            PortSpec::Tcp("host:1".into())
        );
        assert_eq!(
            PortSpec::parse("rfc2217://192.168.1.50:7000/").expect("test setup"),
            PortSpec::Rfc2217("192.168.1.50:7000".into())
        );
        assert_eq!(
            PortSpec::parse("RFC2217://[::1]:2217").expect("test setup"),
            PortSpec::Rfc2217("[::1]:2217".into())
        );
    }

    fn parse_error(port: &str) -> String {
        match PortSpec::parse(port) {
            Ok(spec) => panic!("{port} parsed as {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn listen_ports() {
        assert_eq!(
            PortSpec::parse("listen://0.0.0.0:5000").expect("test setup"),
            PortSpec::Listen {
                addr: "0.0.0.0:5000".into(),
                wait: LISTEN_WAIT
            }
        );
        assert_eq!(
            PortSpec::parse("listen://127.0.0.1:5000?wait=20s").expect("test setup"),
            PortSpec::Listen {
                addr: "127.0.0.1:5000".into(),
                wait: std::time::Duration::from_secs(20)
            }
        );
        assert!(parse_error("listen://127.0.0.1:5000?timeout=1s").contains("unknown option"));
        assert!(parse_error("listen://127.0.0.1:5000?wait=soon").contains("wait=soon"));
        assert!(parse_error("listen://127.0.0.1").contains("no port"));
    }

    #[test]
    fn modem_ports() {
        match PortSpec::parse("modem:/dev/ttyUSB2?profile=telit&apn=internet&host=h&port=7000")
            .expect("test setup")
        {
            PortSpec::Modem(spec) => {
                assert_eq!(spec.path, "/dev/ttyUSB2");
                assert_eq!(spec.profile, modem::Profile::Telit);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse_error("modem:/dev/ttyUSB2").contains("profile="));
        assert!(parse_error("telnet://host:23").contains("modem:PATH?profile="));
    }

    #[test]
    fn relay_ports() {
        let target = |addr: &str, key_file: Option<&str>, wait: Option<u64>| relay::RelayTarget {
            addr: addr.into(),
            key_file: key_file.map(Into::into),
            wait: wait.map(std::time::Duration::from_secs),
        };
        assert_eq!(
            PortSpec::parse("relay://gw.example:7000").expect("test setup"),
            PortSpec::Relay(target("gw.example:7000", None, None))
        );
        assert_eq!(
            PortSpec::parse("relay://[::1]:7000?key_file=/etc/relay.key").expect("test setup"),
            PortSpec::Relay(target("[::1]:7000", Some("/etc/relay.key"), None))
        );
        assert_eq!(
            PortSpec::parse("relay-listen://0.0.0.0:7001?wait=90s").expect("test setup"),
            PortSpec::RelayListen(target("0.0.0.0:7001", None, Some(90)))
        );
        let secret = parse_error("relay://h:7000?key=0123456789abcdef");
        assert!(secret.contains("key_file"), "{secret}");
        assert!(!secret.contains("0123456789abcdef"), "{secret}");
        assert!(parse_error("relay://h:7000?wait=5s").contains("unknown"));
        assert!(parse_error("relay://h").contains("no port"));
        assert!(parse_error("relay-listen://h:0").contains("port 0"));
        let other = parse_error("telnet://host:23");
        assert!(
            other.contains("relay://") && other.contains("relay-listen://"),
            "{other}"
        );
    }

    #[test]
    fn network_port_errors() {
        assert!(parse_error("tcp://").contains("no host and port"));
        assert!(parse_error("tcp://host").contains("no port"));
        assert!(parse_error("tcp://host:").contains("no port"));
        assert!(parse_error("tcp://:7000").contains("no host"));
        assert!(parse_error("rfc2217://host:http").contains("not a port number"));
        assert!(parse_error("rfc2217://host:70000").contains("not a port number"));
        assert!(parse_error("tcp://host:0").contains("port 0"));
        assert!(parse_error("tcp://::1:7000").contains("brackets"));
        assert!(parse_error("tcp://host:7000/path").contains("only a host and a port"));
        let other = parse_error("telnet://host:23");
        for scheme in [
            "sim:",
            "tcp://",
            "rfc2217://",
            "listen://",
            "serial device path",
        ] {
            assert!(other.contains(scheme), "{other}");
        }
    }
}
