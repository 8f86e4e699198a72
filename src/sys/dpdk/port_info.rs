//! Finding ports (by name, all of them) and what a port is and can do ([`PortInfo`]).

use std::ffi::{c_char, CStr};

use super::eal::{port_id_by_name, Eal};
use super::error::CallError;
use super::{ffi, PORTS_MAX};

/// The port named `name` (a vdev's name, or a PCI address), if it exists.
pub fn port_by_name(_eal: &Eal, name: &str) -> Option<u16> {
    port_id_by_name(name)
}

/// The ids of the available ports, in order.
pub fn port_ids(_eal: &Eal) -> Vec<u16> {
    let mut ids = Vec::new();
    let mut next = 0u64;
    while (next as usize) < PORTS_MAX {
        // SAFETY: the EAL runs; the call only reads ethdev tables and returns
        // RTE_MAX_ETHPORTS when there is no further port.
        next = unsafe {
            ffi::rte_eth_find_next_owned_by(next as u16, u64::from(ffi::RTE_ETH_DEV_NO_OWNER))
        };
        if next as usize >= PORTS_MAX {
            break;
        }
        ids.push(next as u16);
        next += 1;
    }
    ids
}

/// The name of port `id`.
pub fn port_name(_eal: &Eal, id: u16) -> Option<String> {
    let mut buf = [0 as c_char; ffi::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: the EAL runs; buf has the RTE_ETH_NAME_MAX_LEN bytes the call may write.
    let rc = unsafe { ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: on success the name is NUL-terminated within buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// What a port is and can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Port id.
    pub id: u16,
    /// Port name.
    pub name: String,
    /// The driver (`net_memif`, `net_af_packet`, `net_ixgbe`...).
    pub driver: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Most RX queues.
    pub rx_queues_max: u16,
    /// Most TX queues.
    pub tx_queues_max: u16,
    /// Smallest and largest RX ring (descriptors).
    pub rx_desc_min: u16,
    /// Largest RX ring.
    pub rx_desc_max: u16,
    /// Smallest TX ring.
    pub tx_desc_min: u16,
    /// Largest TX ring.
    pub tx_desc_max: u16,
    /// Smallest MTU the port takes.
    pub mtu_min: u16,
    /// Largest MTU the port takes.
    pub mtu_max: u16,
    /// Largest frame the port receives, Ethernet header and FCS included (`max_rx_pktlen`;
    /// some drivers, such as net_memif in 22.11, report 1518 and a `max_mtu` far above it).
    pub frame_len_max: u32,
    /// `RTE_ETH_TX_OFFLOAD_*` bits the port offers (see `tx_offload`).
    pub tx_offload_capa: u64,
    /// `RTE_ETH_RX_OFFLOAD_*` bits the port offers.
    pub rx_offload_capa: u64,
    /// NUMA socket of the device, if known.
    pub socket: Option<u32>,
    /// RSS hash types the port can spread flows by (`RTE_ETH_RSS_*`; 0: no RSS).
    pub rss_offloads: u64,
    /// Bytes of the port's RSS key (0: unknown).
    pub rss_key_len: u8,
    /// Entries of the port's RSS indirection table (0: unknown).
    pub reta_size: u16,
}

/// Information on port `id`.
pub fn port_info(eal: &Eal, id: u16) -> Result<PortInfo, CallError> {
    // SAFETY: rte_eth_dev_info is a plain C struct of integers, pointers and nested structs
    // of those; all-zero is a valid value, and the call overwrites it.
    let mut info: ffi::rte_eth_dev_info = unsafe { std::mem::zeroed() };
    // SAFETY: the EAL runs; info is a valid, exclusively borrowed out-structure of the size
    // the library expects (checked against C by check_abi at start-up).
    let rc = unsafe { ffi::rte_eth_dev_info_get(id, &mut info) };
    if rc != 0 {
        return Err(CallError::from_ret("rte_eth_dev_info_get", rc));
    }
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: driver_name points to the driver's static NUL-terminated name.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    let mut mac = ffi::rte_ether_addr { addr_bytes: [0; 6] };
    // SAFETY: the EAL runs; mac is a valid out-structure.
    let rc = unsafe { ffi::rte_eth_macaddr_get(id, &mut mac) };
    if rc != 0 {
        return Err(CallError::from_ret("rte_eth_macaddr_get", rc));
    }
    // SAFETY: the EAL runs; a plain query.
    let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
    Ok(PortInfo {
        id,
        name: port_name(eal, id).unwrap_or_default(),
        driver,
        mac: mac.addr_bytes,
        rx_queues_max: info.max_rx_queues,
        tx_queues_max: info.max_tx_queues,
        rx_desc_min: info.rx_desc_lim.nb_min,
        rx_desc_max: info.rx_desc_lim.nb_max,
        tx_desc_min: info.tx_desc_lim.nb_min,
        tx_desc_max: info.tx_desc_lim.nb_max,
        mtu_min: info.min_mtu,
        mtu_max: info.max_mtu,
        frame_len_max: info.max_rx_pktlen,
        tx_offload_capa: info.tx_offload_capa,
        rx_offload_capa: info.rx_offload_capa,
        socket: u32::try_from(socket).ok(),
        rss_offloads: info.flow_type_rss_offloads,
        rss_key_len: info.hash_key_size,
        reta_size: info.reta_size,
    })
}
