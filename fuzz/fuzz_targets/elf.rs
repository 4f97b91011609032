//! ELF loading (and format detection): no input may panic; whatever loads keeps the image
//! invariants and survives a round trip through Intel HEX.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use stm32boot::image::{Image, ImageFormat};

fuzz_target!(|data: &[u8]| {
    for name in ["fw", "fw.elf", "fw.axf"] {
        let _ = ImageFormat::detect(Path::new(name), data);
    }
    match Image::from_elf(data) {
        Ok(image) => stm32boot_fuzz::check_image(&image),
        Err(e) => {
            let _ = (e.to_string(), e.line(), e.root_cause().to_string());
        }
    }
});
