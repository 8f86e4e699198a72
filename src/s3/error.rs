//! Why an object operation failed, and how S3 answers each failure.

use crate::chunk::StoreError;

/// Why an object operation failed; [`ObjError::s3_code`] and [`ObjError::status`] say how S3
/// answers it.
#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    /// The bucket does not exist.
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    /// The key does not exist.
    #[error("the specified key does not exist")]
    NoSuchKey,
    /// The upload does not exist (never created, completed or aborted).
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    /// Creating a bucket that exists.
    #[error("the bucket already exists")]
    BucketAlreadyOwnedByYou,
    /// Deleting a bucket that holds objects.
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    /// A bucket name against the naming rules.
    #[error("the bucket name is not valid")]
    InvalidBucketName,
    /// A key against the key rules (empty, a NUL byte, a "." or ".." segment).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A key longer than 1024 bytes.
    #[error("the key is longer than 1024 bytes")]
    KeyTooLong,
    /// An object or part larger than allowed.
    #[error("the object exceeds the maximum allowed size")]
    EntityTooLarge,
    /// A part other than the last smaller than the minimum.
    #[error("a part other than the last is smaller than the minimum allowed")]
    EntityTooSmall,
    /// A listed part that was not uploaded, or whose ETag differs.
    #[error("a listed part was not uploaded, or its ETag does not match")]
    InvalidPart,
    /// Parts not listed in ascending order.
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    /// The bytes do not match the Content-MD5.
    #[error("the Content-MD5 does not match the bytes received")]
    BadDigest,
    /// Fewer or more bytes than the Content-Length.
    #[error("the body does not have the length announced")]
    IncompleteBody,
    /// Any other bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The chunk store failed.
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    /// The index (redb) failed, or holds a damaged record.
    #[error("index: {0}")]
    Index(String),
    /// A chunk holds fewer bytes than the index says (damage underneath the service).
    #[error("object data damaged: {0}")]
    Damaged(String),
    /// A bad [`ObjectsConfig`](super::config::ObjectsConfig), or the index directory cannot be made.
    #[error("configuration: {0}")]
    Config(String),
}

impl ObjError {
    /// The S3 error code.
    pub fn s3_code(&self) -> &'static str {
        match self {
            ObjError::NoSuchBucket => "NoSuchBucket",
            ObjError::NoSuchKey => "NoSuchKey",
            ObjError::NoSuchUpload => "NoSuchUpload",
            ObjError::BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            ObjError::BucketNotEmpty => "BucketNotEmpty",
            ObjError::InvalidBucketName => "InvalidBucketName",
            ObjError::InvalidKey(_) | ObjError::InvalidArgument(_) => "InvalidArgument",
            ObjError::KeyTooLong => "KeyTooLongError",
            ObjError::EntityTooLarge => "EntityTooLarge",
            ObjError::EntityTooSmall => "EntityTooSmall",
            ObjError::InvalidPart => "InvalidPart",
            ObjError::InvalidPartOrder => "InvalidPartOrder",
            ObjError::BadDigest => "BadDigest",
            ObjError::IncompleteBody => "IncompleteBody",
            // A full store is an InternalError too (S3 has no "no space" answer; clients retry
            // a 500 with backoff), with the store's message.
            ObjError::Store(_)
            | ObjError::Index(_)
            | ObjError::Damaged(_)
            | ObjError::Config(_) => "InternalError",
        }
    }

    /// The HTTP status: 404 for the NoSuch* codes, 409 for the bucket conflicts, 500 for
    /// failures of the service, 400 for every other client error.
    pub fn status(&self) -> u16 {
        match self {
            ObjError::NoSuchBucket | ObjError::NoSuchKey | ObjError::NoSuchUpload => 404,
            ObjError::BucketAlreadyOwnedByYou | ObjError::BucketNotEmpty => 409,
            ObjError::Store(_)
            | ObjError::Index(_)
            | ObjError::Damaged(_)
            | ObjError::Config(_) => 500,
            _ => 400,
        }
    }
}
