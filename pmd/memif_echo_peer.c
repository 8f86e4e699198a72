// SPDX-License-Identifier: MIT OR Apache-2.0
//
// A DPDK application on net_memif that echoes every frame back: the foreign peer of ustack's
// memif interop tests (tests/memif_interop.rs). Not part of ustack's build: the tests compile
// it with the system's DPDK (libdpdk-dev) when they run,
//   cc -O2 -o peer pmd/memif_echo_peer.c $(pkg-config --cflags --libs libdpdk)
// or take a binary from USTACK_MEMIF_DPDK_PEER.
//
// usage: peer <vdev-args> <seconds> [extra EAL args...]
// Prints "peer: started" once its port runs, "peer: link up|down" on changes, and
// "peer: echoed N frames M bytes" when it stops after <seconds>.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: peer <vdev-args> <seconds>\n"); return 2; }
    char vdev[600], prefix[64];
    snprintf(vdev, sizeof vdev, "--vdev=%s", argv[1]);
    snprintf(prefix, sizeof prefix, "--file-prefix=ustmemif%d", (int)getpid());
    char *eal[32] = {"peer", "-l", "0", "--no-pci", "--no-huge", "-m", "256", "--no-shconf",
                     prefix, vdev, "--log-level=pmd.net.memif:info"};
    int n = 11;
    for (int i = 3; i < argc && n < 31; i++) eal[n++] = argv[i];
    if (rte_eal_init(n, eal) < 0) { fprintf(stderr, "peer: EAL init failed\n"); return 1; }
    uint16_t port;
    const char *name = argv[1];
    char devname[64];
    snprintf(devname, sizeof devname, "%.*s", (int)strcspn(name, ","), name);
    if (rte_eth_dev_get_port_by_name(devname, &port) != 0) { fprintf(stderr, "peer: no port %s\n", devname); return 1; }
    struct rte_mempool *pool = rte_pktmbuf_pool_create("mb", 8191, 256, 0,
        RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
    if (!pool) { fprintf(stderr, "peer: no mempool\n"); return 1; }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    if (rte_eth_dev_configure(port, 1, 1, &conf) < 0 ||
        rte_eth_rx_queue_setup(port, 0, 1024, rte_eth_dev_socket_id(port), NULL, pool) < 0 ||
        rte_eth_tx_queue_setup(port, 0, 1024, rte_eth_dev_socket_id(port), NULL) < 0) {
        fprintf(stderr, "peer: port setup failed\n"); return 1;
    }
    if (rte_eth_dev_start(port) < 0) { fprintf(stderr, "peer: start failed\n"); return 1; }
    printf("peer: started\n"); fflush(stdout);
    double end = now_s() + atof(argv[2]);
    unsigned long frames = 0, bytes = 0;
    int up = 0;
    struct rte_mbuf *b[32];
    while (now_s() < end) {
        struct rte_eth_link link;
        rte_eth_link_get_nowait(port, &link);
        if (link.link_status != up) {
            up = link.link_status;
            printf("peer: link %s\n", up ? "up" : "down"); fflush(stdout);
        }
        uint16_t got = rte_eth_rx_burst(port, 0, b, 32);
        for (uint16_t i = 0; i < got; i++) { frames++; bytes += rte_pktmbuf_pkt_len(b[i]); }
        uint16_t sent = 0;
        while (sent < got) {
            uint16_t k = rte_eth_tx_burst(port, 0, b + sent, got - sent);
            if (k == 0 && now_s() > end) break;
            sent += k;
        }
        for (uint16_t i = sent; i < got; i++) rte_pktmbuf_free(b[i]);
    }
    printf("peer: echoed %lu frames %lu bytes\n", frames, bytes); fflush(stdout);
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    rte_eal_cleanup();
    return 0;
}
