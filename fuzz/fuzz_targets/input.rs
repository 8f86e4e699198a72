//! The fuzz input as a stream of fields, shared by the targets that read scripts from it
//! (`stack_rx`, `memif_control`).

/// Reads fields from the input; past its end every read gives zeros.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

// Not every target reads every kind of field.
#[allow(dead_code)]
impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn i32(&mut self) -> i32 {
        self.u32() as i32
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = self.pos.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    /// Exactly `n` bytes, zeros past the end of the input.
    pub fn bytes_padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.bytes(n).to_vec();
        v.resize(n, 0);
        v
    }
}
