//! The XML bodies of S3: what the server answers (errors, listings, multipart results), written
//! with quick-xml's writer, and the one body it reads (`CompleteMultipartUpload`), parsed with
//! quick-xml's reader under a size bound.
//!
//! Names and shapes follow the S3 API reference, so any S3 client library decodes them. Text is
//! escaped for XML; XML 1.0 cannot carry most control characters even as references, so a key
//! holding one is listed correctly only under `encoding-type=url` (which clients such as the
//! AWS SDKs ask for; keys then travel URL-encoded, see [`url_encode`]). Without it such a
//! character is replaced by U+FFFD rather than producing a document the client cannot parse.

use std::io;
use std::time::SystemTime;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::{Reader, Writer};

use super::date::iso8601;

/// The S3 namespace every answer's root element declares.
const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Largest XML request body read: a `CompleteMultipartUpload` naming 10,000 parts with quoted
/// 32-digit ETags is about 900 KB.
pub const BODY_MAX: usize = 1 << 20;

/// Largest number of parts a `CompleteMultipartUpload` may name (S3's limit).
pub const PARTS_MAX: usize = 10_000;

/// Text for an XML element: XML's five special characters escaped; characters XML 1.0 cannot
/// hold (controls other than tab, LF, CR) become U+FFFD.
fn text(s: &str) -> BytesText<'static> {
    let clean: String = s
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect();
    BytesText::from_escaped(quick_xml::escape::escape(clean.as_str()).into_owned())
}

/// `key` as S3 lists it under `encoding-type=url`: unreserved characters and `/` as they are,
/// a space as `+`, every other byte `%XX` (what a client decodes with form-URL unescaping).
pub fn url_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A document: the declaration, then a root element (with the S3 namespace) whose children
/// `body` writes.
fn document(root: &str, body: impl FnOnce(&mut Writer<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(512));
    // Writing into a Vec cannot fail; the io::Result is the writer's general signature.
    let written = w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|()| {
            w.create_element(root)
                .with_attribute(("xmlns", NS))
                .write_inner_content(body)
                .map(|_| ())
        });
    debug_assert!(written.is_ok());
    w.into_inner()
}

/// `<name>value</name>`.
fn el(w: &mut Writer<Vec<u8>>, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name).write_text_content(text(value))?;
    Ok(())
}

/// An `<Error>` body: S3's error `code`, a `message` for people, the `resource` asked for and
/// the request id (also in the `x-amz-request-id` header).
pub fn error(code: &str, message: &str, resource: &str, request_id: &str) -> Vec<u8> {
    // S3's error document has no namespace.
    let mut w = Writer::new(Vec::with_capacity(256));
    let written = w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|()| {
            w.create_element("Error")
                .write_inner_content(|w| {
                    el(w, "Code", code)?;
                    el(w, "Message", message)?;
                    el(w, "Resource", resource)?;
                    el(w, "RequestId", request_id)
                })
                .map(|_| ())
        });
    debug_assert!(written.is_ok());
    w.into_inner()
}

/// The request of a ListObjectsV2 as it is echoed in the answer, and the page's continuation.
#[derive(Debug, Clone, Default)]
pub struct ListV2<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// `prefix` as asked.
    pub prefix: &'a str,
    /// `delimiter` as asked.
    pub delimiter: Option<&'a str>,
    /// `start-after` as asked.
    pub start_after: Option<&'a str>,
    /// `continuation-token` as asked.
    pub continuation: Option<&'a str>,
    /// `max-keys` in effect.
    pub max_keys: u32,
    /// `encoding-type=url` was asked: keys and prefixes go URL-encoded.
    pub url: bool,
    /// More follow.
    pub truncated: bool,
    /// The token of the next page when truncated.
    pub next_continuation: Option<&'a str>,
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, quoted.
    pub etag: &'a str,
    /// When it was last written.
    pub mtime: SystemTime,
}

/// A `ListBucketResult` (ListObjectsV2): `objects` and `prefixes` (common prefixes) in order.
pub fn list_objects_v2(l: &ListV2<'_>, objects: &[Entry<'_>], prefixes: &[&str]) -> Vec<u8> {
    let enc = |s: &str| if l.url { url_encode(s) } else { s.to_string() };
    document("ListBucketResult", |w| {
        el(w, "Name", l.bucket)?;
        el(w, "Prefix", &enc(l.prefix))?;
        if let Some(d) = l.delimiter {
            el(w, "Delimiter", &enc(d))?;
        }
        if let Some(s) = l.start_after {
            el(w, "StartAfter", &enc(s))?;
        }
        if let Some(c) = l.continuation {
            el(w, "ContinuationToken", c)?;
        }
        if let Some(n) = l.next_continuation {
            el(w, "NextContinuationToken", n)?;
        }
        el(w, "KeyCount", &(objects.len() + prefixes.len()).to_string())?;
        el(w, "MaxKeys", &l.max_keys.to_string())?;
        if l.url {
            el(w, "EncodingType", "url")?;
        }
        el(w, "IsTruncated", if l.truncated { "true" } else { "false" })?;
        for o in objects {
            w.create_element("Contents").write_inner_content(|w| {
                el(w, "Key", &enc(o.key))?;
                el(w, "LastModified", &iso8601(o.mtime))?;
                el(w, "ETag", o.etag)?;
                el(w, "Size", &o.size.to_string())?;
                el(w, "StorageClass", "STANDARD")
            })?;
        }
        for p in prefixes {
            w.create_element("CommonPrefixes")
                .write_inner_content(|w| el(w, "Prefix", &enc(p)))?;
        }
        Ok(())
    })
}

/// A `ListAllMyBucketsResult`: every bucket with its creation time.
pub fn list_buckets(buckets: &[(String, SystemTime)], owner: &str) -> Vec<u8> {
    document("ListAllMyBucketsResult", |w| {
        w.create_element("Owner").write_inner_content(|w| {
            el(w, "ID", owner)?;
            el(w, "DisplayName", owner)
        })?;
        w.create_element("Buckets").write_inner_content(|w| {
            for (name, created) in buckets {
                w.create_element("Bucket").write_inner_content(|w| {
                    el(w, "Name", name)?;
                    el(w, "CreationDate", &iso8601(*created))
                })?;
            }
            Ok(())
        })?;
        Ok(())
    })
}

/// A `LocationConstraint` answer (GetBucketLocation): `region`, empty for us-east-1 as S3 does.
pub fn location(region: &str) -> Vec<u8> {
    let region = if region == "us-east-1" { "" } else { region };
    let mut w = Writer::new(Vec::with_capacity(128));
    let written = w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|()| {
            w.create_element("LocationConstraint")
                .with_attribute(("xmlns", NS))
                .write_text_content(text(region))
                .map(|_| ())
        });
    debug_assert!(written.is_ok());
    w.into_inner()
}

/// An `InitiateMultipartUploadResult`.
pub fn initiate_multipart(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    document("InitiateMultipartUploadResult", |w| {
        el(w, "Bucket", bucket)?;
        el(w, "Key", key)?;
        el(w, "UploadId", upload_id)
    })
}

/// A `CompleteMultipartUploadResult`.
pub fn complete_multipart(location: &str, bucket: &str, key: &str, etag: &str) -> Vec<u8> {
    document("CompleteMultipartUploadResult", |w| {
        el(w, "Location", location)?;
        el(w, "Bucket", bucket)?;
        el(w, "Key", key)?;
        el(w, "ETag", etag)
    })
}

/// A `CopyObjectResult`.
pub fn copy_object(etag: &str, mtime: SystemTime) -> Vec<u8> {
    document("CopyObjectResult", |w| {
        el(w, "LastModified", &iso8601(mtime))?;
        el(w, "ETag", etag)
    })
}

/// One uploaded part of a `ListPartsResult`.
#[derive(Debug, Clone)]
pub struct PartEntry<'a> {
    /// Its number, 1..=10,000.
    pub number: u32,
    /// Its ETag, quoted.
    pub etag: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// When it was uploaded.
    pub mtime: SystemTime,
}

/// The request of a ListParts as echoed, and the page's position.
#[derive(Debug, Clone, Default)]
pub struct PartsPage<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a str,
    /// The upload.
    pub upload_id: &'a str,
    /// `part-number-marker` as asked.
    pub marker: u32,
    /// Where the next page starts when truncated.
    pub next_marker: u32,
    /// `max-parts` in effect.
    pub max_parts: u32,
    /// More follow.
    pub truncated: bool,
}

/// A `ListPartsResult`.
pub fn list_parts(p: &PartsPage<'_>, parts: &[PartEntry<'_>]) -> Vec<u8> {
    document("ListPartsResult", |w| {
        el(w, "Bucket", p.bucket)?;
        el(w, "Key", p.key)?;
        el(w, "UploadId", p.upload_id)?;
        el(w, "PartNumberMarker", &p.marker.to_string())?;
        el(w, "NextPartNumberMarker", &p.next_marker.to_string())?;
        el(w, "MaxParts", &p.max_parts.to_string())?;
        el(w, "IsTruncated", if p.truncated { "true" } else { "false" })?;
        el(w, "StorageClass", "STANDARD")?;
        for part in parts {
            w.create_element("Part").write_inner_content(|w| {
                el(w, "PartNumber", &part.number.to_string())?;
                el(w, "LastModified", &iso8601(part.mtime))?;
                el(w, "ETag", part.etag)?;
                el(w, "Size", &part.size.to_string())
            })?;
        }
        Ok(())
    })
}

/// One upload in progress of a `ListMultipartUploadsResult`.
#[derive(Debug, Clone)]
pub struct UploadEntry<'a> {
    /// The key it will create.
    pub key: &'a str,
    /// Its id.
    pub upload_id: &'a str,
    /// When it was created.
    pub initiated: SystemTime,
}

/// A `ListMultipartUploadsResult` (one page; `truncated` when more follow).
pub fn list_uploads(
    bucket: &str,
    prefix: &str,
    max_uploads: u32,
    truncated: bool,
    uploads: &[UploadEntry<'_>],
) -> Vec<u8> {
    document("ListMultipartUploadsResult", |w| {
        el(w, "Bucket", bucket)?;
        el(w, "Prefix", prefix)?;
        el(w, "MaxUploads", &max_uploads.to_string())?;
        el(w, "IsTruncated", if truncated { "true" } else { "false" })?;
        for u in uploads {
            w.create_element("Upload").write_inner_content(|w| {
                el(w, "Key", u.key)?;
                el(w, "UploadId", u.upload_id)?;
                el(w, "StorageClass", "STANDARD")?;
                el(w, "Initiated", &iso8601(u.initiated))
            })?;
        }
        Ok(())
    })
}

/// Why a request body was not a `CompleteMultipartUpload` this server takes. S3 answers each
/// with `MalformedXML` (400), except [`XmlError::TooLarge`] (`MaxMessageLengthExceeded`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// More than [`BODY_MAX`] bytes.
    #[error("the XML body is over {BODY_MAX} bytes")]
    TooLarge,
    /// Not well-formed, or not the expected document.
    #[error("the XML body is malformed: {0}")]
    Malformed(String),
}

impl XmlError {
    /// S3's error code.
    pub fn s3_code(&self) -> &'static str {
        match self {
            XmlError::TooLarge => "MaxMessageLengthExceeded",
            XmlError::Malformed(_) => "MalformedXML",
        }
    }
}

/// The parts a `CompleteMultipartUpload` body names, as (part number, ETag) in document order
/// (the caller checks the order). ETags are returned as given, quotes included.
pub fn parse_complete(body: &[u8]) -> Result<Vec<(u32, String)>, XmlError> {
    if body.len() > BODY_MAX {
        return Err(XmlError::TooLarge);
    }
    let bad = |m: &str| XmlError::Malformed(m.to_string());
    let mut r = Reader::from_reader(body);
    r.config_mut().trim_text(true);
    // The path of open elements, and the part being read.
    let mut path: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let (mut number, mut etag): (Option<u32>, Option<String>) = (None, None);
    let mut value = String::new();
    let mut root_seen = false;
    loop {
        let ev = r
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match ev {
            Event::Start(s) => {
                let name = s.local_name().as_ref().to_string();
                match (path.len(), name.as_str()) {
                    (0, "CompleteMultipartUpload") => root_seen = true,
                    (0, _) => return Err(bad("the root element is not CompleteMultipartUpload")),
                    (1, "Part") => (number, etag) = (None, None),
                    _ => {}
                }
                value.clear();
                path.push(name);
                if path.len() > 8 {
                    return Err(bad("elements nested too deep"));
                }
            }
            Event::Text(t) => value.push_str(&t.xml10_content()),
            Event::GeneralRef(g) => match g.resolve_char_ref() {
                Ok(Some(c)) => value.push(c),
                Ok(None) => match quick_xml::escape::resolve_predefined_entity(&g) {
                    Some(s) => value.push_str(s),
                    None => return Err(bad("an unknown entity")),
                },
                Err(e) => return Err(XmlError::Malformed(e.to_string())),
            },
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                match (path.len(), name.as_str()) {
                    (2, "PartNumber") if path[1] == "Part" => {
                        let n: u32 = value
                            .trim()
                            .parse()
                            .map_err(|_| bad("a PartNumber that is not a number"))?;
                        number = Some(n);
                    }
                    (2, "ETag") if path[1] == "Part" => etag = Some(value.trim().to_string()),
                    (1, "Part") => {
                        let (Some(n), Some(e)) = (number.take(), etag.take()) else {
                            return Err(bad("a Part without PartNumber or ETag"));
                        };
                        if parts.len() == PARTS_MAX {
                            return Err(bad("more than 10000 parts"));
                        }
                        parts.push((n, e));
                    }
                    _ => {}
                }
                value.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen || !path.is_empty() {
        return Err(bad("no complete CompleteMultipartUpload element"));
    }
    if parts.is_empty() {
        return Err(bad("no parts"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn error_document() {
        let x = s(error(
            "NoSuchKey",
            "The key <a&b> does not exist",
            "/b/k",
            "r1",
        ));
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code>\
             <Message>The key &lt;a&amp;b&gt; does not exist</Message><Resource>/b/k</Resource>\
             <RequestId>r1</RequestId></Error>"
        );
    }

    #[test]
    fn listing_url_encodes_when_asked_and_never_emits_control_characters() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_657_004);
        let key = "d/\u{6d4b}\u{1f}%uFF08 a+b.jpg";
        let objects = [Entry {
            key,
            size: 5,
            etag: "\"x\"",
            mtime: t,
        }];
        let l = ListV2 {
            bucket: "bkt",
            prefix: "d/",
            max_keys: 1000,
            url: true,
            ..ListV2::default()
        };
        let x = s(list_objects_v2(&l, &objects, &["d/sub/"]));
        assert!(
            x.contains("<Key>d/%E6%B5%8B%1F%25uFF08+a%2Bb.jpg</Key>"),
            "{x}"
        );
        assert!(x.contains("<EncodingType>url</EncodingType>"));
        assert!(x.contains("<CommonPrefixes><Prefix>d/sub/</Prefix></CommonPrefixes>"));
        assert!(x.contains("<KeyCount>2</KeyCount>"));
        assert!(x.contains("<LastModified>2026-12-07T15:23:24.000Z</LastModified>"));
        let plain = s(list_objects_v2(&ListV2 { url: false, ..l }, &objects, &[]));
        assert!(
            plain.contains("<Key>d/\u{6d4b}\u{fffd}%uFF08 a+b.jpg</Key>"),
            "{plain}"
        );
        assert!(!plain.bytes().any(|b| b < 0x20));
    }

    #[test]
    fn complete_body_as_the_go_sdk_writes_it() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>&#34;a1&#34;</ETag><PartNumber>1</PartNumber></Part><Part><ETag>"b2"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(body).unwrap(),
            vec![(1, "\"a1\"".to_string()), (2, "\"b2\"".to_string())]
        );
        let spaced = b"<?xml version=\"1.0\"?>\n<CompleteMultipartUpload>\n <Part>\n  <PartNumber> 3 </PartNumber>\n  <ETag>&quot;c&quot;</ETag>\n </Part>\n</CompleteMultipartUpload>\n";
        assert_eq!(
            parse_complete(spaced).unwrap(),
            vec![(3, "\"c\"".to_string())]
        );
    }

    #[test]
    fn complete_body_rejections() {
        let cases: &[&[u8]] = &[
            b"",
            b"<Other/>",
            b"<CompleteMultipartUpload></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>e</ETag></Part>",
            b"<CompleteMultipartUpload><Part><ETag>&bogus;</ETag></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part></CompleteMultipartUpload>",
        ];
        for c in cases {
            assert!(
                matches!(parse_complete(c), Err(XmlError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        let huge = vec![b' '; BODY_MAX + 1];
        assert_eq!(parse_complete(&huge), Err(XmlError::TooLarge));
    }

    #[test]
    fn other_documents() {
        let t = UNIX_EPOCH;
        assert!(s(initiate_multipart("b", "k", "u1")).contains("<UploadId>u1</UploadId>"));
        assert!(s(complete_multipart("/b/k", "b", "k", "\"e-2\""))
            .contains("<ETag>&quot;e-2&quot;</ETag>"));
        assert!(s(copy_object("\"e\"", t)).contains("<LastModified>1970-01-01T00:00:00.000Z"));
        assert!(s(list_buckets(&[("b".into(), t)], "ustack")).contains("<Bucket><Name>b</Name>"));
        assert!(s(location("us-east-1")).contains("<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></LocationConstraint>"));
        let parts = [PartEntry {
            number: 2,
            etag: "\"p\"",
            size: 9,
            mtime: t,
        }];
        let page = PartsPage {
            bucket: "b",
            key: "k",
            upload_id: "u",
            max_parts: 1000,
            ..PartsPage::default()
        };
        assert!(s(list_parts(&page, &parts)).contains("<Part><PartNumber>2</PartNumber>"));
        let ups = [UploadEntry {
            key: "k",
            upload_id: "u",
            initiated: t,
        }];
        assert!(s(list_uploads("b", "", 1000, false, &ups)).contains("<Upload><Key>k</Key>"));
    }
}
