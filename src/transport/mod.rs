//! Transports: serial ports, raw TCP relays, RFC 2217 bridges and the in-process simulated
//! target. Each implements [`crate::link::Link`] and knows nothing of AN3155. [`PortSpec`] parses
//! `--port` and opens the matching transport.

pub mod rfc2217;
pub mod serial;
pub mod sim;
pub mod tcp;

use crate::device::DeviceTable;
use crate::error::{Error, Result};
use crate::link::{LineSettings, Link};
use crate::sim::SimSpec;

/// Where to reach the bootloader, parsed from `--port`.
#[derive(Debug, Clone, PartialEq)]
pub enum PortSpec {
    /// A serial device path (`/dev/ttyUSB0`, `COM3`, a pseudo-terminal).
    Serial(String),
    /// The in-process simulated target (`sim:stm32f411?state=chip.sim`).
    Sim(Box<SimSpec>),
    /// A raw TCP byte pipe (`tcp://host:port`): `host:port`.
    Tcp(String),
    /// An RFC 2217 serial bridge (`rfc2217://host:port`): `host:port`.
    Rfc2217(String),
}

/// The schemes `--port` accepts, for messages.
const SUPPORTED: &str = "a serial device path (/dev/ttyUSB0, COM3), sim:PART (the simulator), \
                         tcp://HOST:PORT (a raw TCP relay) or rfc2217://HOST:PORT (an RFC 2217 \
                         bridge such as ser2net)";

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
        if let Some(rest) = port.strip_prefix("sim:") {
            return Ok(PortSpec::Sim(Box::new(SimSpec::parse(rest)?)));
        }
        if let Some((scheme, rest)) = port.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "tcp" => Ok(PortSpec::Tcp(host_port("tcp", rest)?)),
                "rfc2217" => Ok(PortSpec::Rfc2217(host_port("rfc2217", rest)?)),
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
            PortSpec::Sim(spec) => Ok(Box::new(sim::SimLink::new((**spec).clone(), table, line)?)),
            PortSpec::Tcp(addr) => Ok(Box::new(tcp::TcpLink::connect(addr, line)?)),
            PortSpec::Rfc2217(addr) => Ok(Box::new(rfc2217::Rfc2217Link::connect(addr, line)?)),
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
        for scheme in ["sim:", "tcp://", "rfc2217://", "serial device path"] {
            assert!(other.contains(scheme), "{other}");
        }
    }
}
