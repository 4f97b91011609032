//! stm32boot: program STM32 microcontrollers through the ROM USART bootloader (AN3155).
//!
//! Layers, each depending only on those above it in this list:
//! - [`protocol`]: frames, checksums and the STM32 CRC (pure, no I/O);
//! - [`link`]: the byte-pipe trait that transports implement;
//! - [`session`]: one conversation with a bootloader over a link;
//! - [`device`]: device facts as data; [`image`]: firmware images;
//! - [`ops`]: flash plans, erase planning, write, verify, read;
//! - [`transport`]: serial ports and the in-process simulator link;
//! - [`sim`]: the simulated target, which speaks AN3155 from the chip's side.
#![deny(missing_docs)]

pub mod device;
pub mod error;
pub mod image;
pub mod link;
pub mod ops;
pub mod protocol;
pub mod session;
pub mod sim;
pub mod transport;

pub use error::{Error, Result};
