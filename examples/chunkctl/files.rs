//! `put` and `get`: files stored as chunks, and their manifests.

use std::io::{Read, Seek, SeekFrom, Write};

use super::clients::call;
use crate::common::ClientSet;
use ustack::chunk::{ChunkOp, ClientError};
use ustack::host::signal;
use ustack::proto::{crc32c, ChunkId, Reply, Status};

/// First word of a manifest's header line.
const MANIFEST_MAGIC: &str = "ustack-manifest";

/// The manifest format `put` writes and `get` reads.
const MANIFEST_VERSION: u32 = 1;

/// One chunk of a file, as a manifest line names it.
pub(super) struct Piece {
    pub(super) id: ChunkId,
    offset: u64,
    len: u64,
    crc: u32,
}

impl Piece {
    fn line(&self) -> String {
        format!("{} {} {} {:08x}", self.id, self.offset, self.len, self.crc)
    }
}

/// Splits `file` into chunks of `chunk_size` bytes, writes each under a fresh random id, and
/// prints the manifest: a header `ustack-manifest 1 length=BYTES chunks=N`, then one line per
/// chunk, `ID OFFSET LENGTH CRC32C` (hex id and CRC). If it cannot finish (an error, SIGINT or
/// SIGTERM), it deletes the chunks it wrote; those it cannot delete are printed as a manifest
/// marked `partial`, which `get` refuses and `chunkctl delete` can work through.
pub(super) fn put(
    c: &mut dyn ClientSet,
    file: &std::path::Path,
    chunk_size: u64,
    payload_max: u64,
) -> Result<(), String> {
    if chunk_size == 0 || chunk_size > payload_max {
        return Err(format!(
            "--chunk-size {chunk_size} is out of range: 1 B ..= {payload_max} B (--payload-max; \
             the server's limit may be lower)"
        ));
    }
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    signal::install_stop_handlers().map_err(|e| format!("installing signal handlers: {e}"))?;
    let mut written: Vec<Piece> = Vec::new();
    let mut buf = vec![0u8; chunk_size.min(len) as usize];
    let mut offset = 0;
    let outcome = loop {
        if offset == len {
            break Ok(());
        }
        if signal::stop_requested() {
            break Err(format!("stopped by signal {}", signal::stop_signal()));
        }
        let n = (len - offset).min(chunk_size);
        let data = &mut buf[..n as usize];
        if let Err(e) = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(data))
        {
            break Err(format!("reading {} at {offset}: {e}", file.display()));
        }
        let id = match ustack::host::random::chunk_id() {
            Ok(id) => id,
            Err(e) => break Err(format!("no random chunk id from the kernel: {e}")),
        };
        let data = &buf[..n as usize];
        let crc = crc32c(data);
        match call(
            c,
            ChunkOp::Write {
                id,
                offset: 0,
                data,
            },
        ) {
            Ok(comp) => match comp.result {
                Ok(Reply::Write { .. }) => {}
                Err(e) => break Err(format!("writing chunk {id} (bytes {offset}..): {e}")),
                Ok(other) => {
                    break Err(format!(
                        "writing chunk {id} (bytes {offset}..): unexpected answer {other:?}"
                    ))
                }
            },
            Err(e) => break Err(format!("writing chunk {id} (bytes {offset}..): {e}")),
        }
        written.push(Piece {
            id,
            offset,
            len: n,
            crc,
        });
        offset += n;
    };
    if let Err(why) = outcome {
        // Leave no chunk that no manifest names.
        let mut left = Vec::new();
        for p in written {
            let gone = call(c, ChunkOp::Delete { id: p.id }).is_ok_and(|comp| {
                matches!(
                    comp.result,
                    Ok(_) | Err(ClientError::Status(Status::NotFound))
                )
            });
            if !gone {
                left.push(p);
            }
        }
        if left.is_empty() {
            return Err(format!(
                "put of {} failed: {why}; the chunks it wrote are deleted",
                file.display()
            ));
        }
        println!(
            "{MANIFEST_MAGIC} {MANIFEST_VERSION} partial chunks={}",
            left.len()
        );
        for p in &left {
            println!("{}", p.line());
        }
        return Err(format!(
            "put of {} failed: {why}; {} chunks it wrote could not be deleted: they are listed \
             on standard output (a manifest marked partial, which get refuses); remove each \
             with `chunkctl delete ID` once the server is back",
            file.display(),
            left.len()
        ));
    }
    println!(
        "{MANIFEST_MAGIC} {MANIFEST_VERSION} length={len} chunks={}",
        written.len()
    );
    for p in &written {
        println!("{}", p.line());
    }
    eprintln!(
        "chunkctl: put {len} bytes of {} as {} chunks",
        file.display(),
        written.len()
    );
    Ok(())
}

/// Reads and checks a whole manifest: the header, then chunks that cover the file's length
/// exactly, in order, without gaps, overlaps or repeated ids. Errors name the line.
pub(super) fn read_manifest(path: &std::path::Path) -> Result<(u64, Vec<Piece>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |no: usize, what: String| format!("{} line {}: {what}", path.display(), no + 1);
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(format!("{}: empty, not a manifest", path.display()));
    };
    let h: Vec<&str> = header.split_whitespace().collect();
    if h.first() != Some(&MANIFEST_MAGIC) {
        return Err(at(
            0,
            format!(
                "not a ustack manifest: it must start with `{MANIFEST_MAGIC} {MANIFEST_VERSION}` \
                 (manifests without a header, from chunkctl before 0.2, are not read)"
            ),
        ));
    }
    if h.get(1) != Some(&"1") {
        return Err(at(
            0,
            format!(
                "manifest version {:?}; this chunkctl reads version {MANIFEST_VERSION}",
                h.get(1).copied().unwrap_or("")
            ),
        ));
    }
    if h.get(2) == Some(&"partial") {
        return Err(at(
            0,
            "a partial manifest (chunks an interrupted put could not delete): it does not \
             describe a whole file"
                .into(),
        ));
    }
    let field = |name: &str| -> Result<u64, String> {
        let v = h
            .iter()
            .skip(2)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| at(0, format!("the header has no {name}=")))?;
        v.parse()
            .map_err(|_| at(0, format!("{name}={v} is not a whole number")))
    };
    let (length, count) = (field("length")?, field("chunks")?);
    let mut pieces: Vec<Piece> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut next = 0u64;
    for (no, line) in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, off, len, crc] = parts[..] else {
            return Err(at(
                no,
                format!("expected `ID OFFSET LENGTH CRC32C`, got {line:?}"),
            ));
        };
        let bad = |what: &str, v: &str| at(no, format!("bad {what} {v:?}"));
        if id.len() != 32 {
            return Err(bad("chunk id (32 hex digits)", id));
        }
        let id = u128::from_str_radix(id, 16)
            .map(ChunkId)
            .map_err(|_| bad("chunk id (32 hex digits)", id))?;
        let offset: u64 = off.parse().map_err(|_| bad("offset", off))?;
        let len: u64 = len.parse().map_err(|_| bad("length", len))?;
        if crc.len() != 8 {
            return Err(bad("CRC32C (8 hex digits)", crc));
        }
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad("CRC32C (8 hex digits)", crc))?;
        if len == 0 {
            return Err(at(no, "a chunk of 0 bytes".into()));
        }
        if offset != next {
            return Err(at(
                no,
                format!(
                    "chunk at offset {offset}, but the chunks before it end at {next} (a chunk \
                     is missing, repeated or out of order)"
                ),
            ));
        }
        if !ids.insert(id) {
            return Err(at(no, format!("chunk {id} appears twice")));
        }
        next = offset
            .checked_add(len)
            .filter(|&e| e <= length)
            .ok_or_else(|| {
                at(
                    no,
                    format!("the chunk ends past the file's length {length}"),
                )
            })?;
        pieces.push(Piece {
            id,
            offset,
            len,
            crc,
        });
    }
    if pieces.len() as u64 != count || next != length {
        return Err(format!(
            "{}: the header says {count} chunks and {length} bytes, the lines give {} chunks \
             and {next} bytes (lines are missing or were added)",
            path.display(),
            pieces.len()
        ));
    }
    Ok((length, pieces))
}

/// Reads the chunks of a checked manifest into a temporary file next to `out`, checking each
/// CRC32C, then syncs it and renames it to `out`: a failed get leaves nothing under `out`.
pub(super) fn get(
    c: &mut dyn ClientSet,
    manifest: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), String> {
    let (length, pieces) = read_manifest(manifest)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", out.display()))?;
    let tmp = dir.join(format!(
        ".{}.chunkctl-get-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let fetch = |f: &mut std::fs::File, c: &mut dyn ClientSet| -> Result<(), String> {
        for p in &pieces {
            let len = u32::try_from(p.len).map_err(|_| format!("chunk {}: too long", p.id))?;
            let comp = call(
                c,
                ChunkOp::Read {
                    id: p.id,
                    offset: 0,
                    len,
                },
            )?;
            if let Err(e) = &comp.result {
                return Err(match e {
                    ClientError::Status(Status::NotFound) => {
                        format!(
                            "chunk {} (bytes {}..): not found on the server",
                            p.id, p.offset
                        )
                    }
                    e => format!("chunk {} (bytes {}..): {e}", p.id, p.offset),
                });
            }
            let got = crc32c(comp.data());
            if comp.data().len() as u64 != p.len || got != p.crc {
                return Err(format!(
                    "chunk {} (bytes {}..): the server sent {} bytes with CRC32C {got:08x}; the \
                     manifest says {} bytes, {:08x}",
                    p.id,
                    p.offset,
                    comp.data().len(),
                    p.len,
                    p.crc
                ));
            }
            f.write_all(comp.data())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))
    };
    let done = fetch(&mut f, c).and_then(|()| {
        std::fs::rename(&tmp, out).map_err(|e| format!("renaming to {}: {e}", out.display()))
    });
    if let Err(e) = done {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{e}; nothing was written to {}", out.display()));
    }
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    eprintln!(
        "chunkctl: wrote {length} bytes to {} from {} chunks, every CRC32C checked",
        out.display(),
        pieces.len()
    );
    Ok(())
}
