//! The modes an AF_XDP device is opened in: what [`XdpConfig`](super::XdpConfig) asks for
//! ([`XdpMode`], [`ZeroCopy`]) and what the kernel granted ([`AttachMode`], [`BindMode`]).

/// Where the XDP program runs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native if the driver has it, else generic (logged).
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (socket-buffer) XDP only: works on any interface, slower.
    Generic,
}

/// Whether the socket shares the UMEM with the NIC (zero-copy) or the kernel copies.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy if the driver has it, else copy (logged).
    #[default]
    Auto,
    /// Zero-copy only.
    On,
    /// Copy mode only.
    Off,
}

/// How the program was attached (the outcome of [`XdpMode`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// On socket buffers (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// How the socket was bound (the outcome of [`ZeroCopy`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_ZEROCOPY`.
    ZeroCopy,
    /// `XDP_COPY`.
    Copy,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        })
    }
}
