//! [`MemifFrame`]: the frame of a memif device that builds frames in place
//! ([`MemifDevice::open_in_place`](super::MemifDevice::open_in_place)), and its side of the
//! small trait (`Carry`, in `ring.rs` beside the ring code generic over it) that lets the
//! device's code serve both frame types.

use crate::dev::Frame;
use crate::mem::PoolBuf;

use super::ring::{Carry, Parts, PendingCopy, SlotFrame};

/// A frame of an in-place memif device: a buffer of the device's own pool, or, for a server's
/// outgoing frames, the buffer(s) the client posted, lent to the stack until the frame is sent
/// (see the [module documentation](super) for the rules that keep this sound).
pub struct MemifFrame(Inner);

enum Inner {
    /// A pool buffer; with a [`PendingCopy`] when it stands in for a posted buffer that was
    /// not available, and is to be copied into one.
    Pool(PoolBuf, Option<PendingCopy>),
    /// Posted buffers of the client, lent.
    Slot(SlotFrame),
}

impl MemifFrame {
    /// True if the frame lives in buffers the peer posted (built in place, sent without copy).
    pub fn is_in_place(&self) -> bool {
        matches!(self.0, Inner::Slot(_))
    }
}

impl From<PoolBuf> for MemifFrame {
    fn from(buf: PoolBuf) -> MemifFrame {
        MemifFrame(Inner::Pool(buf, None))
    }
}

impl std::fmt::Debug for MemifFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Pool(b, p) => f
                .debug_struct("MemifFrame::Pool")
                .field("buf", b)
                .field("pending", &p.is_some())
                .finish(),
            Inner::Slot(s) => f.debug_tuple("MemifFrame::Slot").field(s).finish(),
        }
    }
}

impl Frame for MemifFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        match &self.0 {
            Inner::Pool(b, _) => b.as_slice(),
            Inner::Slot(s) => s.data(),
        }
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Inner::Pool(b, _) => b.as_mut_slice(),
            Inner::Slot(s) => s.data_mut(),
        }
    }
    #[inline]
    fn capacity(&self) -> usize {
        match &self.0 {
            Inner::Pool(b, _) => b.capacity(),
            Inner::Slot(s) => s.capacity(),
        }
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        match &mut self.0 {
            Inner::Pool(b, _) => b.set_len(len),
            Inner::Slot(s) => s.set_len(len),
        }
    }
}

impl Carry for MemifFrame {
    const IN_PLACE: bool = true;
    fn from_pool(buf: PoolBuf) -> Self {
        MemifFrame(Inner::Pool(buf, None))
    }
    fn pending(buf: PoolBuf, mark: PendingCopy) -> Self {
        MemifFrame(Inner::Pool(buf, Some(mark)))
    }
    fn from_slot(f: SlotFrame) -> Option<Self> {
        Some(MemifFrame(Inner::Slot(f)))
    }
    fn is_slot(&self) -> bool {
        self.is_in_place()
    }
    fn into_parts(self) -> Parts {
        match self.0 {
            Inner::Pool(b, _) => Parts::Pool(b),
            Inner::Slot(s) => Parts::Slot(s),
        }
    }
}
