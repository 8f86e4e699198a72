/*
 * ustack's C shim over DPDK 22.11: real, linkable functions for what DPDK only offers as
 * static-inline functions or macros (burst RX/TX, mbuf alloc/free/append/adj/trim, headroom,
 * tailroom, mtod, rte_errno, the lcore id). Rust cannot call those directly; bindgen sees the
 * declarations below and src/sys/dpdk.rs calls them.
 *
 * Every function is a thin forwarder: no state, no allocation, no error translation. The
 * caller (src/sys/dpdk.rs) owns the safety contract of each one; it is written next to each
 * declaration here.
 */
#ifndef USTACK_DPDK_SHIM_H
#define USTACK_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/*
 * Bit values of DPDK's offload macros, which are function-like (RTE_BIT64) and so invisible
 * to bindgen. dpdk_shim.c checks each against the system headers at compile time.
 */
#define USTACK_TX_OFFLOAD_IPV4_CKSUM (1ULL << 1)
#define USTACK_TX_OFFLOAD_UDP_CKSUM (1ULL << 2)
#define USTACK_TX_OFFLOAD_TCP_CKSUM (1ULL << 3)
#define USTACK_TX_OFFLOAD_MBUF_FAST_FREE (1ULL << 16)
#define USTACK_RX_OFFLOAD_IPV4_CKSUM (1ULL << 1)
#define USTACK_RX_OFFLOAD_TCP_CKSUM (1ULL << 3)
#define USTACK_MBUF_F_TX_TCP_CKSUM (1ULL << 52)
#define USTACK_MBUF_F_TX_IP_CKSUM (1ULL << 54)
#define USTACK_MBUF_F_TX_IPV4 (1ULL << 55)
/* Headroom DPDK reserves in front of every packet mbuf (RTE_PKTMBUF_HEADROOM). */
#define USTACK_PKTMBUF_HEADROOM 128
/* rte_lcore_id() of a thread that is not an EAL lcore (LCORE_ID_ANY). */
#define USTACK_LCORE_ID_ANY 0xffffffffu

/* rte_eth_rx_burst: port and queue configured and started; pkts has room for n pointers. */
uint16_t ustack_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts,
                         uint16_t n);
/* rte_eth_tx_burst: the first (returned) count of mbufs now belong to the driver. */
uint16_t ustack_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts,
                         uint16_t n);

/* rte_pktmbuf_alloc: one packet mbuf from a pktmbuf pool, or NULL when the pool is empty. */
struct rte_mbuf *ustack_pktmbuf_alloc(struct rte_mempool *mp);
/* rte_pktmbuf_free: the whole chain back to its pool(s). */
void ustack_pktmbuf_free(struct rte_mbuf *m);

/* rte_pktmbuf_mtod: pointer to the first data byte of the first segment. */
uint8_t *ustack_pktmbuf_mtod(struct rte_mbuf *m);
/* rte_pktmbuf_data_len / pkt_len / nb_segs. */
uint16_t ustack_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t ustack_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t ustack_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* rte_pktmbuf_headroom / rte_pktmbuf_tailroom (of the first / last segment). */
uint16_t ustack_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t ustack_pktmbuf_tailroom(const struct rte_mbuf *m);
/* rte_pktmbuf_append / prepend / adj: pointer to the new (or remaining) data, NULL if no room. */
uint8_t *ustack_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint8_t *ustack_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
uint8_t *ustack_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_trim: 0, or -1 if len exceeds the last segment's data. */
int ustack_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
/*
 * Sets the length of a one-segment mbuf with append/trim: 0, or -1 (nothing changed) if len
 * does not fit before the end of the buffer or the mbuf has more than one segment.
 */
int ustack_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len);

/* Requests transmit checksum offload: sets ol_flags, l2_len and l3_len of the mbuf. */
void ustack_pktmbuf_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint8_t l2_len,
                               uint16_t l3_len);
/* The mbuf's ol_flags. */
uint64_t ustack_pktmbuf_ol_flags(const struct rte_mbuf *m);

/*
 * rte_ipv4_phdr_cksum over the IPv4 header at ip_hdr (at least 20 readable bytes): the
 * non-complemented pseudo-header sum an offloading driver expects in the TCP/UDP checksum
 * field. For cross-checking ustack's own computation.
 */
uint16_t ustack_ipv4_phdr_cksum(const uint8_t *ip_hdr, uint64_t ol_flags);

/*
 * sizeof of the DPDK structures ustack passes by pointer (rte_eth_conf, rte_eth_dev_info,
 * rte_eth_stats, rte_eth_link), as the C compiler sees them with the installed headers; the
 * Rust side compares them with its bindings before the first call.
 */
struct ustack_abi_sizes {
    uint32_t eth_conf;
    uint32_t eth_dev_info;
    uint32_t eth_stats;
    uint32_t eth_link;
};
void ustack_abi_sizes(struct ustack_abi_sizes *out);

/* rte_errno of the calling thread. */
int ustack_errno(void);
/* rte_lcore_id of the calling thread (USTACK_LCORE_ID_ANY for non-EAL threads). */
unsigned ustack_lcore_id(void);

#endif
