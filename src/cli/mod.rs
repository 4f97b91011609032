//! The `stm32boot` command line: argument definitions, output, and the commands.

pub mod args;
pub mod coeffs;
pub mod output;
pub mod run;
