//! `ls` and `gc`: listing chunks, and deleting those no manifest names.

use std::collections::HashSet;
use std::io::Write;

use super::clients::call;
use super::files::read_manifest;
use crate::common::ClientSet;
use ustack::chunk::{ChunkOp, ClientError};
use ustack::proto::{ChunkId, ListEntry, Reply, Status, LIST_PAGE_MAX};

/// The chunk ids the manifests name, or every manifest that does not parse (each error names
/// its file, and the line where it is about one).
fn manifest_ids(manifests: &[std::path::PathBuf]) -> Result<HashSet<ChunkId>, String> {
    let mut ids = HashSet::new();
    let mut errors = Vec::new();
    for m in manifests {
        match read_manifest(m) {
            Ok((_, pieces)) => ids.extend(pieces.iter().map(|p| p.id)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(errors.join("; "))
    }
}

/// Every chunk on the server, page by page (LIST from the start, each page after the last id
/// of the one before), handed to `page` as it comes.
fn list_pages(
    c: &mut dyn ClientSet,
    mut page: impl FnMut(&[ListEntry]) -> Result<(), String>,
) -> Result<(), String> {
    let mut after = None;
    let mut entries: Vec<ListEntry> = Vec::with_capacity(LIST_PAGE_MAX as usize);
    loop {
        let at = after.map_or_else(|| "from the start".to_string(), |a| format!("after {a}"));
        let comp = call(
            c,
            ChunkOp::List {
                after,
                max: LIST_PAGE_MAX,
            },
        )
        .map_err(|e| format!("LIST {at}: {e}"))?;
        let more = match comp.result {
            Ok(Reply::List { more, .. }) => more,
            Err(ClientError::Status(Status::Unsupported)) => {
                return Err("this server's store cannot list its chunks (LIST: Unsupported)".into())
            }
            Err(ClientError::Status(Status::UnknownOp)) => {
                return Err(
                    "this server does not know LIST (an older server): it cannot list chunks"
                        .into(),
                )
            }
            Err(e) => return Err(format!("LIST {at}: {e}")),
            Ok(other) => return Err(format!("LIST {at}: unexpected answer {other:?}")),
        };
        entries.clear();
        entries.extend(comp.list_entries());
        page(&entries)?;
        if !more {
            return Ok(());
        }
        match entries.last() {
            Some(last) => after = Some(last.id),
            None => {
                return Err(format!(
                    "LIST {at}: the server says more chunks follow but sent none"
                ))
            }
        }
    }
}

/// `ls`: every chunk (or, given manifests, every chunk none of them names) as `ID SIZE` lines.
pub(super) fn ls(c: &mut dyn ClientSet, orphans_of: &[std::path::PathBuf]) -> Result<(), String> {
    let keep = if orphans_of.is_empty() {
        None
    } else {
        Some(manifest_ids(orphans_of)?)
    };
    let (mut total, mut shown, mut bytes) = (0u64, 0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    list_pages(c, |page| {
        for e in page {
            total += 1;
            if keep.as_ref().is_some_and(|k| k.contains(&e.id)) {
                continue;
            }
            shown += 1;
            bytes += e.size;
            writeln!(out, "{} {}", e.id, e.size).map_err(|e| format!("standard output: {e}"))?;
        }
        Ok(())
    })?;
    out.flush().map_err(|e| format!("standard output: {e}"))?;
    if keep.is_some() {
        eprintln!("chunkctl: {shown} orphan chunks ({bytes} bytes) of {total} on the server");
    } else {
        eprintln!("chunkctl: {total} chunks, {bytes} bytes");
    }
    Ok(())
}

/// `gc`: deletes every chunk no manifest in `keep` names; with `dry_run`, only says which.
pub(super) fn gc(
    c: &mut dyn ClientSet,
    keep: &[std::path::PathBuf],
    dry_run: bool,
) -> Result<(), String> {
    let kept_ids = manifest_ids(keep).map_err(|e| format!("{e}; gc deleted nothing"))?;
    let mut orphans = Vec::new();
    let mut kept = 0u64;
    list_pages(c, |page| {
        for e in page {
            if kept_ids.contains(&e.id) {
                kept += 1;
            } else {
                orphans.push(*e);
            }
        }
        Ok(())
    })
    .map_err(|e| format!("{e}; gc deleted nothing"))?;
    let missing = kept_ids.len() as u64 - kept;
    if missing > 0 {
        eprintln!(
            "chunkctl: warning: {missing} chunks the manifests name are not on this server              (`get` of those files will fail)"
        );
    }
    if dry_run {
        let bytes: u64 = orphans.iter().map(|e| e.size).sum();
        for e in &orphans {
            println!("would delete {} {}", e.id, e.size);
        }
        println!(
            "gc (dry run): kept {kept} chunks, would delete {} chunks, {bytes} bytes",
            orphans.len()
        );
        return Ok(());
    }
    let (mut deleted, mut freed, mut gone, mut failed) = (0u64, 0u64, 0u64, 0u64);
    for e in &orphans {
        let result = call(c, ChunkOp::Delete { id: e.id }).map(|comp| comp.result);
        match result {
            Ok(Ok(_)) => {
                deleted += 1;
                freed += e.size;
                println!("deleted {} {}", e.id, e.size);
            }
            // Deleted by someone else since it was listed.
            Ok(Err(ClientError::Status(Status::NotFound))) => gone += 1,
            Ok(Err(err)) => {
                failed += 1;
                eprintln!("chunkctl: deleting chunk {}: {err}", e.id);
            }
            Err(err) => {
                return Err(format!(
                    "deleting chunk {}: {err}; {deleted} of {} orphan chunks were deleted \
                     before that",
                    e.id,
                    orphans.len()
                ))
            }
        }
    }
    let mut summary =
        format!("gc: kept {kept} chunks, deleted {deleted} chunks, {freed} bytes freed");
    if gone > 0 {
        summary += &format!(", {gone} already gone");
    }
    println!("{summary}");
    if failed > 0 {
        return Err(format!("{failed} chunks could not be deleted (see above)"));
    }
    Ok(())
}
