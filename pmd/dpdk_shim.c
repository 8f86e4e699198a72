/*
 * ustack's C shim over DPDK 22.11: see dpdk_shim.h. Built by build.rs with the cc crate and the
 * compiler flags pkg-config gives for libdpdk, only when the `dpdk` Cargo feature is on.
 */
#include <string.h>

#include <rte_config.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include "dpdk_shim.h"

/* The values dpdk_shim.h (and so the Rust bindings) hard-code must match the installed DPDK. */
_Static_assert(USTACK_TX_OFFLOAD_IPV4_CKSUM == RTE_ETH_TX_OFFLOAD_IPV4_CKSUM, "IPV4_CKSUM");
_Static_assert(USTACK_TX_OFFLOAD_UDP_CKSUM == RTE_ETH_TX_OFFLOAD_UDP_CKSUM, "UDP_CKSUM");
_Static_assert(USTACK_TX_OFFLOAD_TCP_CKSUM == RTE_ETH_TX_OFFLOAD_TCP_CKSUM, "TCP_CKSUM");
_Static_assert(USTACK_TX_OFFLOAD_MBUF_FAST_FREE == RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE,
               "MBUF_FAST_FREE");
_Static_assert(USTACK_RX_OFFLOAD_IPV4_CKSUM == RTE_ETH_RX_OFFLOAD_IPV4_CKSUM, "RX IPV4_CKSUM");
_Static_assert(USTACK_RX_OFFLOAD_TCP_CKSUM == RTE_ETH_RX_OFFLOAD_TCP_CKSUM, "RX TCP_CKSUM");
_Static_assert(USTACK_MBUF_F_TX_TCP_CKSUM == RTE_MBUF_F_TX_TCP_CKSUM, "F_TX_TCP_CKSUM");
_Static_assert(USTACK_MBUF_F_TX_IP_CKSUM == RTE_MBUF_F_TX_IP_CKSUM, "F_TX_IP_CKSUM");
_Static_assert(USTACK_MBUF_F_TX_IPV4 == RTE_MBUF_F_TX_IPV4, "F_TX_IPV4");
_Static_assert(USTACK_PKTMBUF_HEADROOM == RTE_PKTMBUF_HEADROOM, "RTE_PKTMBUF_HEADROOM");
_Static_assert(USTACK_LCORE_ID_ANY == LCORE_ID_ANY, "LCORE_ID_ANY");

uint16_t ustack_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts,
                         uint16_t n)
{
    return rte_eth_rx_burst(port_id, queue_id, pkts, n);
}

uint16_t ustack_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **pkts,
                         uint16_t n)
{
    return rte_eth_tx_burst(port_id, queue_id, pkts, n);
}

struct rte_mbuf *ustack_pktmbuf_alloc(struct rte_mempool *mp)
{
    return rte_pktmbuf_alloc(mp);
}

void ustack_pktmbuf_free(struct rte_mbuf *m)
{
    rte_pktmbuf_free(m);
}

uint8_t *ustack_pktmbuf_mtod(struct rte_mbuf *m)
{
    return rte_pktmbuf_mtod(m, uint8_t *);
}

uint16_t ustack_pktmbuf_data_len(const struct rte_mbuf *m)
{
    return rte_pktmbuf_data_len(m);
}

uint32_t ustack_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
    return rte_pktmbuf_pkt_len(m);
}

uint16_t ustack_pktmbuf_nb_segs(const struct rte_mbuf *m)
{
    return m->nb_segs;
}

uint16_t ustack_pktmbuf_headroom(const struct rte_mbuf *m)
{
    return rte_pktmbuf_headroom(m);
}

uint16_t ustack_pktmbuf_tailroom(const struct rte_mbuf *m)
{
    return rte_pktmbuf_tailroom(m);
}

uint8_t *ustack_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
    return (uint8_t *)rte_pktmbuf_append(m, len);
}

uint8_t *ustack_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
    return (uint8_t *)rte_pktmbuf_prepend(m, len);
}

uint8_t *ustack_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
    return (uint8_t *)rte_pktmbuf_adj(m, len);
}

int ustack_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
    return rte_pktmbuf_trim(m, len);
}

int ustack_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len)
{
    uint16_t cur;

    if (m->nb_segs != 1)
        return -1;
    cur = rte_pktmbuf_data_len(m);
    if (len > cur)
        return rte_pktmbuf_append(m, (uint16_t)(len - cur)) == NULL ? -1 : 0;
    if (len < cur)
        return rte_pktmbuf_trim(m, (uint16_t)(cur - len));
    return 0;
}

void ustack_pktmbuf_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint8_t l2_len,
                               uint16_t l3_len)
{
    m->ol_flags = (m->ol_flags & ~RTE_MBUF_F_TX_OFFLOAD_MASK) | ol_flags;
    m->l2_len = l2_len;
    m->l3_len = l3_len;
}

uint64_t ustack_pktmbuf_ol_flags(const struct rte_mbuf *m)
{
    return m->ol_flags;
}

uint16_t ustack_ipv4_phdr_cksum(const uint8_t *ip_hdr, uint64_t ol_flags)
{
    struct rte_ipv4_hdr hdr;

    /* The frame may sit at any alignment: copy the fixed header out first. */
    memcpy(&hdr, ip_hdr, sizeof(hdr));
    return rte_ipv4_phdr_cksum(&hdr, ol_flags);
}

void ustack_abi_sizes(struct ustack_abi_sizes *out)
{
    out->eth_conf = sizeof(struct rte_eth_conf);
    out->eth_dev_info = sizeof(struct rte_eth_dev_info);
    out->eth_stats = sizeof(struct rte_eth_stats);
    out->eth_link = sizeof(struct rte_eth_link);
}

int ustack_errno(void)
{
    return rte_errno;
}

unsigned ustack_lcore_id(void)
{
    return rte_lcore_id();
}
