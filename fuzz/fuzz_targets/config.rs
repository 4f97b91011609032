//! `stm32boot.toml` station settings: parsing never panics, whatever the text, and every error
//! names a line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use stm32boot::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Settings::parse(text, Path::new("/fuzz/station/stm32boot.toml")) {
        Ok(settings) => {
            let merged = settings.or(Settings::default());
            let _ = format!("{merged:?}");
        }
        Err(e) => {
            let _ = e.to_string();
            if let Some(line) = e.line {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "error at line {line} of a {lines}-line file: {e}"
                );
            }
        }
    }
});
