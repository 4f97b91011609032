//! Coefficient layouts and values: the input is a layout (TOML), a 0 byte, a format selector
//! byte and the values (TOML, JSON, one-row CSV or a per-unit CSV table). No input may panic;
//! values that pack give a block that is recognised as valid, unpacks to values that check, and
//! packs again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stm32boot::ops::coeffs::block::{self, SlotState};
use stm32boot::ops::coeffs::header::c_header;
use stm32boot::ops::coeffs::{Layout, Table, TableKey, Values};

fuzz_target!(|data: &[u8]| {
    let (layout_text, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(layout_text) = std::str::from_utf8(layout_text) else {
        return;
    };
    let layout = match Layout::from_toml(layout_text, "layout.toml") {
        Ok(layout) => layout,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // A validated layout is self-consistent.
    assert!(layout.size() >= 16, "block smaller than header + CRC");
    assert_eq!(
        layout.size() % layout.align,
        0,
        "size not a multiple of the alignment"
    );
    assert!(layout.slots.len() == 1 || layout.slots.len() == 2);
    for f in &layout.fields {
        assert!(
            f.offset + f.size() <= layout.crc_offset,
            "field '{}' overlaps the CRC",
            f.name
        );
        assert!(f.offset >= 12, "field '{}' overlaps the header", f.name);
        assert_eq!(
            f.offset % f.elem.align(),
            0,
            "field '{}' misaligned",
            f.name
        );
    }
    let _ = c_header(&layout);

    let (selector, values_bytes) = rest.split_first().map_or((0, rest), |(s, r)| (*s, r));
    // Whatever the values are, their bytes are also a slot to recognise.
    let state = block::inspect(&layout, values_bytes, 0xFF);
    let _ = state.describe(0xFF);
    let _ = block::next_write(&[state.clone(), SlotState::Blank]);
    let _ = block::unpack(&layout, values_bytes);

    let text = String::from_utf8_lossy(values_bytes);
    let values = match selector % 5 {
        0 => Values::from_toml(&layout, &text, "values.toml"),
        1 => Values::from_json(&layout, &text, "values.json"),
        2 => Values::from_csv(&layout, &text, "values.csv"),
        k => {
            let key = if k == 3 {
                TableKey::Uid
            } else {
                TableKey::parse("serial")
            };
            match Table::from_csv(&layout, &text, "table.csv", key) {
                Ok(table) => {
                    let _ = table.find("x");
                    let _ = table.find_uid(&[0; 12]);
                    table
                        .rows
                        .into_iter()
                        .next()
                        .map(|row| row.values)
                        .ok_or_else(|| stm32boot::Error::InvalidRequest("no rows".into()))
                }
                Err(e) => Err(e),
            }
        }
    };
    let values = match values {
        Ok(values) => values,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = values.to_json(&layout);
    for i in 0..layout.fields.len() {
        let _ = values.display(&layout, i);
    }
    let sequence = u32::from(selector).wrapping_mul(0x0101_0101);
    let packed = match block::pack(&layout, &values, sequence) {
        Ok(packed) => packed,
        Err(e) => panic!("values that loaded do not pack: {e}"),
    };
    assert_eq!(packed.len(), layout.size() as usize);
    match block::inspect(&layout, &packed, 0xFF) {
        SlotState::Valid {
            sequence: s,
            values: back,
            ..
        } => {
            assert_eq!(s, sequence);
            if let Err(e) = back.check(&layout) {
                panic!("unpacked values do not check: {e}");
            }
            let again = block::pack(&layout, &back, sequence).expect("unpacked values pack");
            assert_eq!(again, packed, "pack(unpack(block)) differs from the block");
        }
        // A block whose every byte is the erased value is indistinguishable from a blank slot.
        SlotState::Blank if packed.iter().all(|&b| b == 0xFF) => {}
        other => panic!("a freshly packed block is not valid: {other:?}"),
    }
});
