//! Choosing a USB serial adapter: `--port usb:VID:PID[:SERIAL]`, and the only adapter present
//! when no port is given. The matching is pure ([`pick`]) and works on any port list, so that it
//! is tested without hardware; [`resolve`] lists this machine's ports and applies it.

use super::serial::{list_ports, PortInfo};
use crate::error::{Error, Result};
use crate::link::LinkError;
use std::fmt;

/// Which adapter `usb:VID:PID[:SERIAL]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbFilter {
    /// USB vendor ID.
    pub vid: u16,
    /// USB product ID.
    pub pid: u16,
    /// USB serial number (compared without regard to case).
    pub serial: Option<String>,
}

impl fmt::Display for UsbFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "usb:{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(s) = &self.serial {
            write!(f, ":{s}")?;
        }
        Ok(())
    }
}

impl UsbFilter {
    /// Parse what follows `usb:`: `VID:PID[:SERIAL]`, with VID and PID in hex (`0403:6001`,
    /// `0x10c4:0xea60:0001`).
    pub fn parse(rest: &str) -> Result<UsbFilter> {
        let bad = |why: String| {
            Error::InvalidRequest(format!(
                "'usb:{rest}': {why}; write usb:VID:PID or usb:VID:PID:SERIAL with the IDs in hex, \
                 e.g. usb:0403:6001 or usb:10c4:ea60:0001 (`stm32boot ports` shows them)"
            ))
        };
        let mut parts = rest.splitn(3, ':');
        let mut id = |what: &str| -> Result<u16> {
            let text = parts.next().unwrap_or("").trim();
            let digits = text
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))
                .unwrap_or(text);
            if digits.is_empty() {
                return Err(bad(format!("no {what}")));
            }
            if digits.len() > 4 {
                return Err(bad(format!("{what} '{text}' has more than 4 hex digits")));
            }
            u16::from_str_radix(digits, 16)
                .map_err(|_| bad(format!("{what} '{text}' is not a hex number")))
        };
        let vid = id("vendor ID")?;
        let pid = id("product ID")?;
        let serial = match parts.next() {
            None => None,
            Some(s) if s.trim().is_empty() => return Err(bad("the serial number is empty".into())),
            Some(s) => Some(s.trim().to_string()),
        };
        Ok(UsbFilter { vid, pid, serial })
    }

    /// Whether `port` is the adapter asked for.
    pub fn matches(&self, port: &PortInfo) -> bool {
        port.vid == Some(self.vid)
            && port.pid == Some(self.pid)
            && self.serial.as_deref().is_none_or(|want| {
                port.serial
                    .as_deref()
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case(want))
            })
    }
}

/// What [`pick`] found.
#[derive(Debug)]
pub enum Pick<'a> {
    /// Exactly one adapter fits.
    One(&'a PortInfo),
    /// None fits; these are the USB adapters that are present.
    None(Vec<&'a PortInfo>),
    /// Several fit.
    Several(Vec<&'a PortInfo>),
}

/// The USB serial adapters in `ports` (ports with a USB vendor and product ID).
pub fn adapters(ports: &[PortInfo]) -> Vec<&PortInfo> {
    ports
        .iter()
        .filter(|p| p.vid.is_some() && p.pid.is_some())
        .collect()
}

/// The adapter `filter` asks for among `ports`, or with no filter the only USB serial adapter.
pub fn pick<'a>(ports: &'a [PortInfo], filter: Option<&UsbFilter>) -> Pick<'a> {
    let usb = adapters(ports);
    let fits: Vec<&PortInfo> = usb
        .iter()
        .copied()
        .filter(|p| filter.is_none_or(|f| f.matches(p)))
        .collect();
    match fits.as_slice() {
        [one] => Pick::One(one),
        [] => Pick::None(usb),
        _ => Pick::Several(fits),
    }
}

/// What an adapter is, for messages: "FTDI FT232R USB UART, 0403:6001, serial A50285BI".
pub fn describe(port: &PortInfo) -> String {
    let mut parts = Vec::new();
    let name = match (port.manufacturer.as_deref(), port.product.as_deref()) {
        (Some(m), Some(p)) if p.to_ascii_lowercase().starts_with(&m.to_ascii_lowercase()) => {
            Some(p.to_string())
        }
        (Some(m), Some(p)) => Some(format!("{m} {p}")),
        (m, p) => m.or(p).map(str::to_string),
    };
    parts.extend(name);
    if let (Some(v), Some(p)) = (port.vid, port.pid) {
        parts.push(format!("{v:04x}:{p:04x}"));
    }
    if let Some(s) = &port.serial {
        parts.push(format!("serial {s}"));
    }
    parts.join(", ")
}

/// One line per adapter (path, VID:PID, serial, product), indented, for error messages.
pub fn candidates(ports: &[&PortInfo]) -> String {
    ports
        .iter()
        .map(|p| {
            let ids = match (p.vid, p.pid) {
                (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
                _ => "-".into(),
            };
            let product = match (p.manufacturer.as_deref(), p.product.as_deref()) {
                (_, Some(prod)) => prod,
                (Some(m), None) => m,
                (None, None) => "",
            };
            format!(
                "\n  {}  {ids}  serial {}  {product}",
                p.path,
                p.serial.as_deref().unwrap_or("-")
            )
            .trim_end()
            .to_string()
        })
        .collect()
}

/// The adapter `filter` names among `ports`: an error that lists the adapters present when none
/// fits (a link error, as for a device path that does not exist), or the ones that fit when
/// several do (add the serial number to choose).
pub fn select<'a>(ports: &'a [PortInfo], filter: &UsbFilter) -> Result<&'a PortInfo> {
    match pick(ports, Some(filter)) {
        Pick::One(p) => Ok(p),
        Pick::None(present) => Err(Error::Link(LinkError::Open {
            port: filter.to_string(),
            reason: if present.is_empty() {
                "no USB serial adapter is plugged in".into()
            } else {
                format!(
                    "no USB serial adapter matches; these are plugged in:{}",
                    candidates(&present)
                )
            },
        })),
        Pick::Several(fits) => Err(Error::InvalidRequest(format!(
            "{} USB serial adapters match {filter}:{}\nadd the serial number \
             (usb:{:04x}:{:04x}:SERIAL) or give the device path",
            fits.len(),
            candidates(&fits),
            filter.vid,
            filter.pid
        ))),
    }
}

/// The adapter `filter` names among this machine's serial ports.
pub fn resolve(filter: &UsbFilter) -> Result<PortInfo> {
    let ports = list_ports()?;
    select(&ports, filter).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(path: &str, ids: Option<(u16, u16)>, serial: Option<&str>) -> PortInfo {
        PortInfo {
            path: path.into(),
            vid: ids.map(|i| i.0),
            pid: ids.map(|i| i.1),
            serial: serial.map(Into::into),
            manufacturer: ids.map(|_| "FTDI".into()),
            product: ids.map(|_| "FT232R USB UART".into()),
        }
    }

    fn fake() -> Vec<PortInfo> {
        vec![
            port("/dev/ttyS0", None, None),
            port("/dev/ttyUSB0", Some((0x0403, 0x6001)), Some("A50285BI")),
            port("/dev/ttyUSB1", Some((0x0403, 0x6001)), Some("A9XK1C2")),
            port("/dev/ttyUSB2", Some((0x10c4, 0xea60)), Some("0001")),
        ]
    }

    fn filter(s: &str) -> UsbFilter {
        UsbFilter::parse(s).expect("test setup")
    }

    #[test]
    fn parses_ids_and_serial() {
        assert_eq!(
            filter("0403:6001"),
            UsbFilter {
                vid: 0x0403,
                pid: 0x6001,
                serial: None
            }
        );
        assert_eq!(
            filter("0x10C4:EA60:0001"),
            UsbFilter {
                vid: 0x10c4,
                pid: 0xea60,
                serial: Some("0001".into())
            }
        );
        // A serial number may itself hold ':'.
        assert_eq!(filter("1:2:a:b").serial.as_deref(), Some("a:b"));
        assert_eq!(filter("10c4:ea60:0001").to_string(), "usb:10c4:ea60:0001");
        for (bad, why) in [
            ("", "no vendor ID"),
            ("0403", "no product ID"),
            ("0403:", "no product ID"),
            ("0403:60011", "more than 4 hex digits"),
            ("04g3:6001", "not a hex number"),
            ("0403:6001:", "serial number is empty"),
        ] {
            let e = UsbFilter::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("usb:VID:PID"), "{bad}: {e}");
        }
    }

    #[test]
    fn picks_the_adapter_asked_for() {
        let ports = fake();
        match pick(&ports, Some(&filter("10c4:ea60"))) {
            Pick::One(p) => assert_eq!(p.path, "/dev/ttyUSB2"),
            other => panic!("{other:?}"),
        }
        match pick(&ports, Some(&filter("0403:6001:a9xk1c2"))) {
            Pick::One(p) => assert_eq!(p.path, "/dev/ttyUSB1"),
            other => panic!("{other:?}"),
        }
        match pick(&ports, Some(&filter("0403:6001"))) {
            Pick::Several(fits) => assert_eq!(fits.len(), 2),
            other => panic!("{other:?}"),
        }
        match pick(&ports, Some(&filter("0483:5740"))) {
            Pick::None(present) => assert_eq!(present.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_filter_only_a_single_usb_adapter_is_picked() {
        let ports = fake();
        assert!(matches!(pick(&ports, None), Pick::Several(f) if f.len() == 3));
        let one = vec![ports[0].clone(), ports[3].clone()];
        assert!(matches!(pick(&one, None), Pick::One(p) if p.path == "/dev/ttyUSB2"));
        // A port without USB IDs is never picked.
        let none = vec![ports[0].clone()];
        assert!(matches!(pick(&none, None), Pick::None(v) if v.is_empty()));
        assert!(matches!(pick(&[], None), Pick::None(v) if v.is_empty()));
    }

    #[test]
    fn errors_list_the_candidates() {
        let ports = fake();
        let several = select(&ports, &filter("0403:6001"))
            .expect_err("two match")
            .to_string();
        assert!(
            several.contains("2 USB serial adapters match usb:0403:6001")
                && several.contains("/dev/ttyUSB0  0403:6001  serial A50285BI  FT232R USB UART")
                && several.contains("/dev/ttyUSB1")
                && !several.contains("/dev/ttyUSB2")
                && several.contains("usb:0403:6001:SERIAL"),
            "{several}"
        );
        let none = select(&ports, &filter("0483:5740")).expect_err("none match");
        assert!(
            matches!(none, Error::Link(LinkError::Open { .. })),
            "{none:?}"
        );
        let none = none.to_string();
        assert!(
            none.contains("usb:0483:5740")
                && none.contains("no USB serial adapter matches")
                && none.contains("/dev/ttyUSB2  10c4:ea60  serial 0001"),
            "{none}"
        );
        let empty = select(&[], &filter("0483:5740"))
            .expect_err("none")
            .to_string();
        assert!(
            empty.contains("no USB serial adapter is plugged in"),
            "{empty}"
        );
    }

    #[test]
    fn describes_an_adapter() {
        let ports = fake();
        assert_eq!(
            describe(&ports[1]),
            "FTDI FT232R USB UART, 0403:6001, serial A50285BI"
        );
        let mut bare = ports[3].clone();
        bare.manufacturer = None;
        bare.product = None;
        bare.serial = None;
        assert_eq!(describe(&bare), "10c4:ea60");
    }
}
