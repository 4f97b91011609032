//! Boot sequences (`--before`, stm32flash's `-i` syntax and the presets): parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stm32boot::sequence::{Preset, Sequence};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (invert_reset, invert_boot0) = (flags & 1 != 0, flags & 2 != 0);
    if let Ok(seq) = Sequence::parse(text, invert_reset, invert_boot0) {
        let _ = format!("{seq:?}");
    }
    if let Some(p) = Preset::parse(text) {
        assert_eq!(Preset::parse(p.name()), Some(p));
        let _ = p.steps(flags & 4 != 0, invert_reset, invert_boot0);
    }
});
