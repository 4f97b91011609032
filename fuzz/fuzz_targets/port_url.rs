//! `--port` values (serial paths, usb:, sim:, modem:, tcp://, rfc2217://, listen://, relay://,
//! relay-listen://), the simulator's `PART?key=value&…` spec and the number, size, range,
//! duration and escape parsers behind them: parse only, nothing is opened. No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stm32boot::sim::SimSpec;
use stm32boot::transport::PortSpec;
use stm32boot::units;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = PortSpec::parse(text) {
        let _ = format!("{spec:?}");
    }
    if let Ok(spec) = SimSpec::parse(text) {
        let _ = spec.realtime();
        let _ = format!("{spec:?}");
    }
    let _ = units::parse_u32(text);
    let _ = units::parse_small::<u8>(text);
    let _ = units::parse_small::<u16>(text);
    let _ = units::parse_size(text);
    let _ = units::parse_range(text);
    let _ = units::parse_escaped(text);
    let _ = units::parse_duration(text);
    let _ = units::parse_rate(text);
    let _ = units::line_of(text, text.len() / 2);
});
