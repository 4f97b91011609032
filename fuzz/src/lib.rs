//! Helpers shared by the fuzz targets: image invariants and a reader of fuzz input.

use stm32boot::image::Image;

/// Reads numbers off the front of a fuzz input; past its end everything is zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte (zero once the input is used up).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `n` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8();
        }
        out
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// Up to `n` bytes (fewer if the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// What is left.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Checks the invariants an [`Image`] promises and that it survives a round trip through
/// Intel HEX.
pub fn check_image(image: &Image) {
    let segments: Vec<(u32, &[u8])> = image.segments().collect();
    assert_eq!(segments.len(), image.segment_count());
    let mut total = 0u64;
    let mut prev_end: Option<u64> = None;
    for &(addr, data) in &segments {
        assert!(!data.is_empty(), "empty segment at 0x{addr:08X}");
        let end = u64::from(addr) + data.len() as u64;
        assert!(end <= 1 << 32, "segment at 0x{addr:08X} runs past 4 GiB");
        if let Some(p) = prev_end {
            assert!(
                u64::from(addr) > p,
                "segments not sorted, overlapping or touching at 0x{addr:08X}"
            );
        }
        prev_end = Some(end);
        total += data.len() as u64;
        assert_eq!(image.get(addr), Some(data[0]));
        assert_eq!(
            image.get(addr + (data.len() as u32 - 1)),
            data.last().copied()
        );
    }
    assert_eq!(total, image.total_len());
    assert_eq!(image.is_empty(), segments.is_empty());
    assert_eq!(image.start(), segments.first().map(|s| s.0));
    assert_eq!(image.end(), prev_end);

    // The whole image as slices, and densely when small enough.
    if let (Some(start), Some(end)) = (image.start(), image.end()) {
        let span = end - u64::from(start);
        let len = u32::try_from(span).unwrap_or(u32::MAX);
        let pieces = image.slice(start, len);
        let sliced: u64 = pieces.iter().map(|(_, d)| d.len() as u64).sum();
        if span <= u64::from(u32::MAX) {
            assert_eq!(sliced, total, "slice of the whole span lost bytes");
        }
        if span <= 1 << 20 {
            let dense = image.to_dense(start, len, 0xFF);
            assert_eq!(dense.len() as u64, span);
        }
    }

    // Intel HEX round trip.
    let hex = image
        .to_ihex()
        .expect("an image always writes as Intel HEX");
    let back = Image::from_ihex(&hex).expect("written Intel HEX parses back");
    assert_eq!(&back, image, "Intel HEX round trip changed the image");

    // Relocation by zero is the identity; moving up and back is too, where it fits.
    assert_eq!(image.relocate(0).as_ref().ok(), Some(image));
    if let Ok(up) = image.relocate(0x100) {
        assert_eq!(up.relocate(-0x100).as_ref().ok(), Some(image));
    }
}
