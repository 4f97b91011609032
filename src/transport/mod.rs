//! Transports: serial ports and the in-process simulated target. Each implements
//! [`crate::link::Link`] and knows nothing of AN3155.

pub mod serial;
pub mod sim;

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
    Sim(SimSpec),
}

impl PortSpec {
    /// Parse a `--port` value.
    pub fn parse(port: &str) -> Result<PortSpec> {
        if let Some(rest) = port.strip_prefix("sim:") {
            return Ok(PortSpec::Sim(SimSpec::parse(rest)?));
        }
        if let Some((scheme, _)) = port.split_once("://") {
            return Err(Error::InvalidRequest(format!(
                "'{scheme}://' ports are not supported by this build: use a serial device path \
                 or sim:PART (for a remote port, run ser2net or socat to give it a local \
                 pseudo-terminal)"
            )));
        }
        if port.is_empty() {
            return Err(Error::InvalidRequest(
                "no port given: pass --port /dev/ttyUSB0 (or sim:stm32f411 for the simulator); \
                 `stm32boot ports` lists serial ports"
                    .into(),
            ));
        }
        Ok(PortSpec::Serial(port.to_string()))
    }

    /// Open the link.
    pub fn open(&self, line: LineSettings, table: &DeviceTable) -> Result<Box<dyn Link>> {
        match self {
            PortSpec::Serial(path) => Ok(Box::new(serial::SerialLink::open(path, line)?)),
            PortSpec::Sim(spec) => Ok(Box::new(sim::SimLink::new(spec.clone(), table, line)?)),
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
        assert!(PortSpec::parse("tcp://host:1")
            .unwrap_err()
            .to_string()
            .contains("ser2net"));
    }
}
