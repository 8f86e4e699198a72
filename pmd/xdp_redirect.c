// SPDX-License-Identifier: MIT OR Apache-2.0
//
// ustack's XDP program, in readable C. It is NOT compiled when ustack is built: the program that
// is loaded is the instruction array in src/dev/af_xdp/program.rs (`instructions()`), which is
// this file translated by hand, one C statement per commented group of instructions. Change the
// two together: every block below names the instruction indices it becomes (with the IPv4
// filter; without it only the REDIRECT block is loaded), and program.rs refers back here.
//
// What it does: frames that ustack owns go to the AF_XDP socket bound to the receiving queue
// (through the XSKMAP `xsks`, keyed by queue id); everything else goes to the kernel
// (XDP_PASS), so the host keeps its own addresses, ARP and other traffic on the same interface.
// "Owned" means, with a configured address (`USTACK_IPV4`, patched into the instructions as an
// immediate at load time):
//   - IPv4 packets whose destination is USTACK_IPV4, and
//   - ARP packets whose target protocol address is USTACK_IPV4 (requests for our address and
//     replies to our own requests): the kernel never answers ARP for an address it does not
//     have, so ustack answers ARP itself.
// Without a configured address every frame of the queue is redirected (the interface is then
// ustack's alone: the kernel sees nothing, not even ARP).
//
// If no socket is bound for the queue (the slot of the XSKMAP is empty, e.g. during start-up),
// bpf_redirect_map's flags argument makes it return XDP_PASS: the frame goes to the kernel
// instead of being dropped.
//
// For reference only, it builds with:
//   clang -O2 -target bpf -c pmd/xdp_redirect.c -o xdp_redirect.o -DUSTACK_IPV4=0x0300cd0a
// (USTACK_IPV4 as the 32-bit word the address's four bytes form in memory on a little-endian
// machine: 10.205.0.3 is 0x0300cd0a).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#ifndef USTACK_IPV4
#define USTACK_IPV4 0
#endif

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1); // ustack sizes it queue_id + 1 at load time
} xsks SEC(".maps");

#define ETH_HLEN_ 14
#define IPV4_DST_OFF (ETH_HLEN_ + 16) // 30: destination address in the IPv4 header
#define ARP_TPA_OFF (ETH_HLEN_ + 24)  // 38: target protocol address of an Ethernet/IPv4 ARP
#define ETHERTYPE_IPV4_LE 0x0008      // htons(ETH_P_IP) read as a little-endian u16
#define ETHERTYPE_ARP_LE 0x0608       // htons(ETH_P_ARP)

SEC("xdp")
int ustack_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;          // insn 0
	void *data_end = (void *)(long)ctx->data_end;  // insn 1
	__u32 dst;

	if (USTACK_IPV4 != 0) {
		// insns 2-4: the Ethernet header and a minimal IPv4 header must be there.
		if (data + ETH_HLEN_ + 20 > data_end)
			return XDP_PASS;
		__u16 proto = *(__u16 *)(data + 12);        // insn 5
		if (proto == ETHERTYPE_ARP_LE) {            // insn 6 (jumps to 11)
			// insns 11-13: the whole 28-byte ARP body must be there.
			if (data + ETH_HLEN_ + 28 > data_end)
				return XDP_PASS;
			dst = *(__u32 *)(data + ARP_TPA_OFF);   // insn 14
			if (dst != USTACK_IPV4)                 // insn 15
				return XDP_PASS;
			goto redirect;
		}
		if (proto != ETHERTYPE_IPV4_LE)             // insn 7
			return XDP_PASS;
		dst = *(__u32 *)(data + IPV4_DST_OFF);      // insn 8
		if (dst != USTACK_IPV4)                     // insn 9
			return XDP_PASS;
		goto redirect;                              // insn 10
	}
redirect:
	// insns 16-21: bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS).
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	// insns 22-23: the shared `return XDP_PASS`.
}

char _license[] SEC("license") = "Dual MIT/GPL";
