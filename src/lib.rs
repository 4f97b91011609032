//! stm32boot: program STM32 microcontrollers through the ROM USART bootloader (AN3155).
//!
//! Layers, each depending only on those above it in this list:
//! - [`protocol`]: frames, checksums and the STM32 CRC (pure, no I/O);
//! - [`link`]: the byte-pipe trait that transports implement;
//! - [`session`]: one conversation with a bootloader over a link;
//! - [`device`]: device facts as data; [`image`]: firmware images;
//! - [`ops`]: flash plans, erase planning, write, verify, read;
//! - [`transport`]: serial ports, raw TCP, RFC 2217 bridges and the in-process simulator link;
//! - [`sim`]: the simulated target, which speaks AN3155 from the chip's side, on a wire that
//!   models line rate, overrun, latency, boot pins and faults, reachable in-process or over a
//!   pseudo-terminal, TCP and RFC 2217.
//! - [`config`]: `stm32boot.toml` files (station settings), found, checked and merged.
//!
//! Writing and verifying an image on the simulated target:
//!
//! ```
//! use stm32boot::device::DeviceTable;
//! use stm32boot::image::Image;
//! use stm32boot::link::LineSettings;
//! use stm32boot::ops::{connect, flash, ConnectOptions, NoProgress};
//! use stm32boot::session::{Session, Timeouts};
//! use stm32boot::transport::PortSpec;
//!
//! let table = DeviceTable::builtin()?;
//! let link = PortSpec::parse("sim:stm32f411")?.open(LineSettings::default(), table)?;
//! let session = Session::new(link, Timeouts::default());
//! let mut conn = connect(session, table, &ConnectOptions::default(), &mut NoProgress)?;
//! let image = Image::from_bin(&[0x12; 1024], 0x0800_0000)?;
//! let mut options = flash::WriteOptions::for_connection(&conn);
//! options.journal = None; // no page journal for this example
//! let report = flash::write_image(&mut conn, &image, &options, &mut NoProgress)?;
//! // A blank chip: the image goes into erased bytes, so nothing needs erasing.
//! assert_eq!(report.pages_erased, 0);
//! assert_eq!(report.pages_written_into_blank, 1);
//! assert_eq!(report.verified, Some(flash::VerifyMethod::ReadBack));
//! # Ok::<(), stm32boot::Error>(())
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod device;
pub mod error;
pub mod image;
pub mod link;
pub mod ops;
pub mod protocol;
pub mod relay;
pub mod sequence;
pub mod session;
pub mod sim;
pub mod transport;
pub mod units;

pub use error::{Error, Finding, Result};
