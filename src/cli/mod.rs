//! The `stm32boot` command line: argument definitions, output, and the commands.

pub mod args;
pub mod bank;
pub mod coeffs;
pub mod docs;
pub mod doctor;
pub mod gang;
pub mod job;
pub mod ob;
pub mod otp;
pub mod output;
pub mod relay;
pub mod run;
pub mod settings;
pub mod sim_modem;
