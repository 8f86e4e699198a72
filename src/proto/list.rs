//! LIST: the entries of a LIST answer's payload, and the bound on a page.
//!
//! A LIST request asks for up to `length` chunks that come after a cursor in the store's order
//! (or from the start); the answer's payload is a packed array of [`ListEntry`]s,
//! [`LIST_ENTRY_LEN`] bytes each:
//!
//! ```text
//! off len field
//!   0  16 chunk_id   u128, little-endian
//!  16   8 size       the chunk's size in bytes, u64 little-endian
//! ```
//!
//! The server answers at most [`Limits::list_entries_max`] entries, however many were asked, so
//! an answer is bounded by the payload limit and by [`LIST_PAGE_MAX`].

use super::request::ChunkId;
use super::Limits;

/// Bytes of one LIST entry: a 16-byte chunk id and an 8-byte size.
pub const LIST_ENTRY_LEN: usize = 24;

/// The most entries one LIST answer carries, whatever the request asks (48 KiB of entries: one
/// small staging buffer). The payload limit may lower it: see [`Limits::list_entries_max`].
pub const LIST_PAGE_MAX: u32 = 2048;

/// One chunk in a LIST answer: its id and size.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Its size in bytes when it was listed.
    pub size: u64,
}

impl ListEntry {
    /// The entry's wire bytes.
    pub fn to_bytes(&self) -> [u8; LIST_ENTRY_LEN] {
        let mut b = [0u8; LIST_ENTRY_LEN];
        b[..16].copy_from_slice(&self.id.0.to_le_bytes());
        b[16..].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// The entry in `b`.
    pub fn from_bytes(b: &[u8; LIST_ENTRY_LEN]) -> ListEntry {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[16..]);
        ListEntry {
            id: ChunkId(u128::from_le_bytes(id)),
            size: u64::from_le_bytes(size),
        }
    }
}

/// The entries packed in a LIST answer's payload, in order. A trailing piece shorter than an
/// entry is ignored (the parser rejects a LIST answer whose payload is not a whole number of
/// entries, so a verified payload has none).
pub fn list_entries(payload: &[u8]) -> impl Iterator<Item = ListEntry> + '_ {
    payload.chunks_exact(LIST_ENTRY_LEN).map(|b| {
        let b: &[u8; LIST_ENTRY_LEN] = b.try_into().expect("chunks_exact gives whole entries");
        ListEntry::from_bytes(b)
    })
}

impl Limits {
    /// The most entries a LIST answer may carry under these limits: [`LIST_PAGE_MAX`], or
    /// fewer if the payload limit holds fewer entries (0 when it is below one entry, 24 bytes:
    /// such a server answers every LIST that asks for entries with `TooLarge`).
    pub const fn list_entries_max(&self) -> u32 {
        let by_payload = self.payload_len_max / LIST_ENTRY_LEN as u32;
        if by_payload < LIST_PAGE_MAX {
            by_payload
        } else {
            LIST_PAGE_MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_pack() {
        let e = ListEntry {
            id: ChunkId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            size: 0x1122_3344_5566_7788,
        };
        let b = e.to_bytes();
        assert_eq!(b[..16], e.id.0.to_le_bytes());
        assert_eq!(b[16..], e.size.to_le_bytes());
        assert_eq!(ListEntry::from_bytes(&b), e);
        let f = ListEntry {
            id: ChunkId(9),
            size: 0,
        };
        let mut payload = [e.to_bytes(), f.to_bytes()].concat();
        assert_eq!(list_entries(&payload).collect::<Vec<_>>(), [e, f]);
        payload.push(0);
        assert_eq!(list_entries(&payload).count(), 2);
        assert_eq!(list_entries(&[]).count(), 0);
    }

    #[test]
    fn page_is_bounded_by_the_fixed_maximum_and_the_payload_limit() {
        assert_eq!(Limits::DEFAULT.list_entries_max(), LIST_PAGE_MAX);
        let small = |payload_len_max| Limits {
            payload_len_max,
            ..Limits::DEFAULT
        };
        assert_eq!(small(24 * 10 + 23).list_entries_max(), 10);
        assert_eq!(small(23).list_entries_max(), 0);
        assert_eq!(small(u32::MAX).list_entries_max(), LIST_PAGE_MAX);
        // A full page fits the payload limit and a default small staging buffer (64 KiB).
        assert!(LIST_PAGE_MAX as usize * LIST_ENTRY_LEN <= 64 << 10);
    }
}
