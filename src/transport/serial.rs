//! Local serial ports through the `serialport` crate (built without libudev; Linux reads USB
//! details from sysfs).

use crate::link::{LineSettings, Link, LinkError, Parity};
use serialport::{ClearBuffer, DataBits, FlowControl, SerialPort, StopBits};
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

/// An open serial port.
pub struct SerialLink {
    port: Box<dyn SerialPort>,
    path: String,
    line: LineSettings,
    timeout: Duration,
}

fn parity(p: Parity) -> serialport::Parity {
    match p {
        Parity::Even => serialport::Parity::Even,
        Parity::None => serialport::Parity::None,
        Parity::Odd => serialport::Parity::Odd,
    }
}

impl SerialLink {
    /// Open `path` with 8 data bits, 1 stop bit, no flow control and the given baud and parity.
    pub fn open(path: &str, line: LineSettings) -> Result<SerialLink, LinkError> {
        let timeout = Duration::from_millis(500);
        let port = serialport::new(path, line.baud)
            .data_bits(DataBits::Eight)
            .parity(parity(line.parity))
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .timeout(timeout)
            .open()
            .map_err(|e| LinkError::Open {
                port: path.to_string(),
                reason: open_hint(&e),
            })?;
        Ok(SerialLink {
            port,
            path: path.to_string(),
            line,
            timeout,
        })
    }

    fn unsupported(&self, what: &str, e: serialport::Error) -> LinkError {
        LinkError::Unsupported {
            what: format!("{what} ({e})"),
            link: self.path.clone(),
        }
    }
}

fn open_hint(e: &serialport::Error) -> String {
    let base = e.to_string();
    match e.kind() {
        // serialport reports a port held under TIOCEXCL (by another stm32boot, a relay, a
        // terminal program) as NoDevice with this text.
        serialport::ErrorKind::NoDevice if base.contains("exclusive lock") => format!(
            "{base}: another program has this port open (a second stm32boot, a relay, a terminal \
             or ModemManager); close it and try again"
        ),
        serialport::ErrorKind::NoDevice => {
            format!("{base}: is the adapter plugged in? `stm32boot ports` lists ports")
        }
        serialport::ErrorKind::Io(ErrorKind::NotFound) => {
            format!("{base}: no such port; `stm32boot ports` lists ports")
        }
        serialport::ErrorKind::Io(ErrorKind::PermissionDenied) => format!(
            "{base}: permission denied; add yourself to the port's group (dialout on Debian)"
        ),
        _ => base,
    }
}

impl Link for SerialLink {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        self.port
            .write_all(data)
            .map_err(|e| LinkError::io(format!("writing to {}", self.path), e))
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        if timeout != self.timeout {
            self.port
                .set_timeout(timeout)
                .map_err(|e| LinkError::io("setting the read timeout", e.into()))?;
            self.timeout = timeout;
        }
        match self.port.read(buf) {
            Ok(0) => Err(LinkError::Timeout(timeout)),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                Err(LinkError::Timeout(timeout))
            }
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(LinkError::Closed),
            Err(e) => Err(LinkError::io(format!("reading from {}", self.path), e)),
        }
    }

    fn discard_input(&mut self) -> Result<(), LinkError> {
        self.port
            .clear(ClearBuffer::Input)
            .map_err(|e| LinkError::io("discarding input", e.into()))
    }

    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
        self.port
            .write_data_terminal_ready(level)
            .map_err(|e| self.unsupported("driving DTR", e))
    }

    fn set_rts(&mut self, level: bool) -> Result<(), LinkError> {
        self.port
            .write_request_to_send(level)
            .map_err(|e| self.unsupported("driving RTS", e))
    }

    fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
        let r = if on {
            self.port.set_break()
        } else {
            self.port.clear_break()
        };
        r.map_err(|e| self.unsupported("a break condition", e))
    }

    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        self.port
            .set_baud_rate(settings.baud)
            .map_err(|e| LinkError::io("setting the baud rate", e.into()))?;
        self.port
            .set_parity(parity(settings.parity))
            .map_err(|e| LinkError::io("setting the parity", e.into()))?;
        self.line = settings;
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.line
    }

    fn describe(&self) -> String {
        let p = match self.line.parity {
            Parity::Even => "8E1",
            Parity::None => "8N1",
            Parity::Odd => "8O1",
        };
        format!("{} at {} {}", self.path, self.line.baud, p)
    }
}

/// A serial port the system knows, with USB details where it is a USB adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PortInfo {
    /// Device path.
    pub path: String,
    /// USB vendor ID.
    pub vid: Option<u16>,
    /// USB product ID.
    pub pid: Option<u16>,
    /// USB serial number.
    pub serial: Option<String>,
    /// Manufacturer string.
    pub manufacturer: Option<String>,
    /// Product string.
    pub product: Option<String>,
}

/// Serial ports present on this machine.
pub fn list_ports() -> Result<Vec<PortInfo>, LinkError> {
    let ports = serialport::available_ports()
        .map_err(|e| LinkError::io("listing serial ports", e.into()))?;
    Ok(ports
        .into_iter()
        .map(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(u) => PortInfo {
                path: p.port_name,
                vid: Some(u.vid),
                pid: Some(u.pid),
                serial: u.serial_number,
                manufacturer: u.manufacturer,
                product: u.product,
            },
            _ => PortInfo {
                path: p.port_name,
                vid: None,
                pid: None,
                serial: None,
                manufacturer: None,
                product: None,
            },
        })
        .collect())
}
