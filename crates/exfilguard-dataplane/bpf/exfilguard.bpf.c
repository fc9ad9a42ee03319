// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* exfilguard kernel data plane.
 *
 * tc egress (tcx or clsact) / netfilter LOCAL_OUT: find DNS queries in any UDP or TCP packet
 * (plain, VLAN/QinQ, VXLAN, GENEVE; IPv4 with options, IPv6 with extension headers), then
 *   blocklisted suffix -> drop; plainly benign or allow-cached -> pass;
 *   suspicious -> the whole frame goes to the agent over the ring buffer and the original is
 *   dropped; the agent re-injects it unchanged (with a release mark + one-shot ticket) if benign.
 * xdp ingress: DNS responses; NXDOMAIN flood limiter; big answers from blocklisted domains.
 * cgroup sock_addr: who sends (pid, tgid, comm, cgroup) keyed by socket cookie; quarantine.
 *
 * All parsing copies bytes into per-CPU scratch with *_load_bytes and indexes with masked or
 * loop-bounded offsets, so every path is verifier-checked for bounds. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "exfilguard.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_HLEN_ 14
#define P_IP 0x0800
#define P_IPV6 0x86DD
#define P_8021Q 0x8100
#define P_8021AD 0x88A8
#define P_TEB 0x6558
#define VXLAN_PORT 4789
#define GENEVE_PORT 6081
#define EG_TC_NEXT -1 /* TCX_NEXT / TC_ACT_UNSPEC: let the next program or the stack decide */
#define EG_TC_DROP 2  /* TCX_DROP / TC_ACT_SHOT */
#define EG_NF_DROP 0
#define EG_NF_ACCEPT 1
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

enum ctx_kind { K_SKB = 0, K_XDP = 1, K_NF = 2 };

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* A held frame whose L4 checksum the device would have finished (CHECKSUM_PARTIAL) carries
 * where to finish it, so the agent re-injects what the wire would have carried. */
static __always_inline void csum_meta(struct eg_event *ev, struct sk_buff *k, __u16 base)
{
	if (BPF_CORE_READ_BITFIELD(k, ip_summed) == 3 /* CHECKSUM_PARTIAL */) {
		ev->csum_partial = 1;
		ev->csum_start = k->csum_start - base;
		ev->csum_offset = k->csum_offset;
	}
}

/* ---------------------------------------------------------------- maps */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eg_config);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EG_S_MAX);
	__type(key, __u32);
	__type(value, __u64);
} eg_stats SEC(".maps");

/* Suffix hash -> unix seconds when added. Written only by the agent (fleet + local verdicts). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, __u64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_blocklist SEC(".maps");

/* Full-name hash -> unix seconds when judged benign. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, __u64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct eg_proc);
} eg_socks SEC(".maps");

/* tgid -> unix seconds when convicted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_quarantine SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct eg_ticket);
	__type(value, __u64);
} eg_tickets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct eg_addr);
	__type(value, struct eg_rate);
} eg_nx_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct eg_rate);
} eg_nx_domains SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} eg_events SEC(".maps");

/* What the kernel passes on its own, for the behaviour analytics (low-and-slow leaks hide in
 * names no per-name test holds). A ring of its own, so observations never crowd out held
 * frames; when it is full an observation is lost and counted, the packet is unaffected. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} eg_observe SEC(".maps");

/* CLOCK_MONOTONIC ns of the agent's last ring poll (bpf_ktime_get_ns is the same clock). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_heartbeat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct eg_quiet_key);
	__type(value, struct eg_quiet);
} eg_quiet SEC(".maps");

/* Name bytes; one slot per hook so a softirq XDP run cannot clobber a
 * netfilter run it interrupted on the same CPU. */
struct scratch {
	__u8 name[EG_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct scratch);
} eg_scratch SEC(".maps");

/* Makes the event layout part of the skeleton's generated types. */
struct eg_event _eg_event_layout = {};
struct eg_proc _eg_proc_layout = {};
struct eg_config _eg_config_layout = {};
struct eg_ticket _eg_ticket_layout = {};
struct eg_rate _eg_rate_layout = {};

/* ---------------------------------------------------------------- helpers */

static __always_inline void stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&eg_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline int agent_alive(void)
{
	__u32 zero = 0;
	__u64 *hb = bpf_map_lookup_elem(&eg_heartbeat, &zero);
	return hb && *hb && bpf_ktime_get_ns() - *hb < EG_AGENT_TIMEOUT_NS;
}

static __always_inline struct eg_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&eg_config, &zero);
}

/* Reads len bytes at off from whichever context this program runs in. For netfilter the
 * "packet" starts at the network header of a linear skb. */
static __always_inline int ld(void *ctx, int kind, const void *nfbase, __u32 off, void *to,
			      __u32 len)
{
	if (kind == K_XDP)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	if (kind == K_NF)
		return bpf_probe_read_kernel(to, len, nfbase + off);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

struct dnshdr {
	__be16 id;
	__be16 flags;
	__be16 qd, an, ns, ar;
};

/* Where the DNS message is, and the flow around it. */
struct pkt {
	__u32 len;     /* bytes available in the context */
	__u32 l3;      /* input: 0 = starts with Ethernet, else the L3 ethertype (netfilter) */
	__u32 dns_off; /* offset of the DNS header */
	__u32 dns_len; /* bytes of DNS message available */
	__u16 sport, dport;
	__u8 l4, ipver, encap, tcp;
	__u8 saddr[16], daddr[16];
	struct dnshdr h;
};

/* Header sanity, not port numbers: QR as asked, opcode QUERY, one question; a query carries
 * no answers and at most OPT + TSIG. */
static __always_inline int dns_sane(struct pkt *p, int want_response)
{
	__u16 fl = bpf_ntohs(p->h.flags);
	if (((fl >> 15) & 1) != want_response || ((fl >> 11) & 0xf) != 0 ||
	    bpf_ntohs(p->h.qd) != 1)
		return 0;
	if (!want_response && (p->h.an || p->h.ns || bpf_ntohs(p->h.ar) > 2))
		return 0;
	return 1;
}

#define FAST_MISS 2

/* The common shapes (Ethernet + IPv4 without options, or + IPv6 without extension headers,
 * then UDP or TCP, no tunnel port) decided from one load of the first 54/74 bytes (two for
 * TCP with payload) instead of one load per header. Returns 0/1 like find_dns, or FAST_MISS
 * to take the general path. */
static __always_inline int find_dns_fast(void *ctx, int kind, const void *nfbase, struct pkt *p,
					 int want_response)
{
	__u8 b[74];
	__u32 l4, end, v6 = 0;
	__u8 proto;
	if (p->len >= 74) {
		if (ld(ctx, kind, nfbase, 0, b, 74))
			return FAST_MISS;
	} else if (p->len >= 54) {
		if (ld(ctx, kind, nfbase, 0, b, 54))
			return FAST_MISS;
		if (b[12] == 0x86 && b[13] == 0xdd)
			return FAST_MISS;
	} else {
		return FAST_MISS;
	}
	if (b[12] == 0x08 && b[13] == 0x00) {
		if (b[14] != 0x45 || ((b[20] & 0x1f) | b[21]))
			return FAST_MISS; /* options or fragment */
		proto = b[23];
		l4 = 34;
		end = 14 + ((b[16] << 8) | b[17]);
		p->ipver = 4;
		__builtin_memset(p->saddr, 0, 16);
		__builtin_memset(p->daddr, 0, 16);
		p->saddr[10] = p->saddr[11] = p->daddr[10] = p->daddr[11] = 0xff;
		__builtin_memcpy(&p->saddr[12], &b[26], 4);
		__builtin_memcpy(&p->daddr[12], &b[30], 4);
	} else if (b[12] == 0x86 && b[13] == 0xdd && p->len >= 74) {
		proto = b[20];
		if ((b[14] >> 4) != 6 || (proto != IPPROTO_UDP && proto != IPPROTO_TCP))
			return FAST_MISS;
		l4 = 54;
		end = 54 + ((b[18] << 8) | b[19]);
		p->ipver = 6;
		__builtin_memcpy(p->saddr, &b[22], 16);
		__builtin_memcpy(p->daddr, &b[38], 16);
		v6 = 1;
	} else {
		return FAST_MISS;
	}
	if (end > p->len)
		end = p->len;
	if (proto == IPPROTO_UDP) {
		__u8 *u = v6 ? &b[54] : &b[34];
		__u16 dport = (u[2] << 8) | u[3];
		if (dport == VXLAN_PORT || dport == GENEVE_PORT)
			return FAST_MISS;
		p->sport = (u[0] << 8) | u[1];
		p->dport = dport;
		p->l4 = IPPROTO_UDP;
		p->tcp = 0;
		p->dns_off = l4 + 8;
		p->dns_len = end > p->dns_off ? end - p->dns_off : 0;
		if (p->dns_len < 17)
			return 0;
		if (v6) {
			if (ld(ctx, kind, nfbase, p->dns_off, &p->h, sizeof(p->h)))
				return 0;
		} else {
			__builtin_memcpy(&p->h, &b[42], sizeof(p->h));
		}
		return dns_sane(p, want_response);
	}
	if (proto == IPPROTO_TCP) {
		__u8 *t = v6 ? &b[54] : &b[34];
		__u32 pay = l4 + (t[12] >> 4) * 4;
		if ((t[12] >> 4) < 5 || pay + 2 + 12 > end)
			return 0; /* pure ACK or too short for DNS */
		struct {
			__be16 mlen;
			struct dnshdr h;
		} __attribute__((packed)) m;
		if (ld(ctx, kind, nfbase, pay, &m, sizeof(m)))
			return 0;
		p->sport = (t[0] << 8) | t[1];
		p->dport = (t[2] << 8) | t[3];
		p->l4 = IPPROTO_TCP;
		p->tcp = 1;
		__u32 mlen = bpf_ntohs(m.mlen);
		p->dns_off = pay + 2;
		p->dns_len = end - p->dns_off;
		if (mlen < 17)
			return 0;
		if (mlen < p->dns_len)
			p->dns_len = mlen;
		__builtin_memcpy(&p->h, &m.h, sizeof(p->h));
		return dns_sane(p, want_response);
	}
	return 0;
}

/* Parses from an Ethernet (or, for netfilter, an IP) header to a DNS header. Returns 1 when a
 * plausible DNS message (query or response as asked) was found, 0 otherwise. */
static __always_inline int find_dns(void *ctx, int kind, const void *nfbase, struct pkt *p,
				    __u32 l2_off, __u16 proto, int want_response)
{
	__u32 off = l2_off;
	int depth;

	for (depth = 0; depth < 2; depth++) {
		if (proto == 0) {
			struct ethhdr eth;
			if (ld(ctx, kind, nfbase, off, &eth, sizeof(eth)))
				return 0;
			proto = bpf_ntohs(eth.h_proto);
			off += ETH_HLEN_;
			/* 802.1ad outer + 802.1Q inner, or one 802.1Q tag */
#pragma unroll
			for (int t = 0; t < 2; t++) {
				if (proto == P_8021Q || proto == P_8021AD) {
					__be16 tag[2];
					if (ld(ctx, kind, nfbase, off, tag, sizeof(tag)))
						return 0;
					proto = bpf_ntohs(tag[1]);
					off += 4;
				}
			}
		}

		__u8 nexthdr;
		__u32 l4_off, l4_end;
		if (proto == P_IP) {
			struct iphdr ip;
			if (ld(ctx, kind, nfbase, off, &ip, sizeof(ip)))
				return 0;
			__u32 ihl = ip.ihl * 4;
			if (ip.version != 4 || ihl < 20)
				return 0;
			/* non-first fragments carry no DNS header */
			if (bpf_ntohs(ip.frag_off) & 0x1fff)
				return 0;
			nexthdr = ip.protocol;
			l4_off = off + ihl;
			l4_end = off + bpf_ntohs(ip.tot_len);
			p->ipver = 4;
			__builtin_memset(p->saddr, 0, 16);
			__builtin_memset(p->daddr, 0, 16);
			p->saddr[10] = p->saddr[11] = 0xff;
			p->daddr[10] = p->daddr[11] = 0xff;
			__builtin_memcpy(&p->saddr[12], &ip.saddr, 4);
			__builtin_memcpy(&p->daddr[12], &ip.daddr, 4);
		} else if (proto == P_IPV6) {
			struct ipv6hdr ip6;
			if (ld(ctx, kind, nfbase, off, &ip6, sizeof(ip6)))
				return 0;
			if (ip6.version != 6)
				return 0;
			nexthdr = ip6.nexthdr;
			l4_off = off + 40;
			l4_end = l4_off + bpf_ntohs(ip6.payload_len);
			p->ipver = 6;
			__builtin_memcpy(p->saddr, &ip6.saddr, 16);
			__builtin_memcpy(p->daddr, &ip6.daddr, 16);
			/* bounded walk of extension headers */
#pragma unroll
			for (int e = 0; e < 6; e++) {
				if (nexthdr != 0 && nexthdr != 43 && nexthdr != 60 && nexthdr != 44 &&
				    nexthdr != 51)
					break;
				__u8 ext[8];
				if (ld(ctx, kind, nfbase, l4_off, ext, sizeof(ext)))
					return 0;
				if (nexthdr == 44) {
					/* fragment header: only the first fragment has the DNS header */
					if (((ext[2] << 8) | ext[3]) & 0xfff8)
						return 0;
					nexthdr = ext[0];
					l4_off += 8;
				} else if (nexthdr == 51) {
					nexthdr = ext[0];
					l4_off += ((__u32)ext[1] + 2) * 4;
				} else {
					nexthdr = ext[0];
					l4_off += ((__u32)ext[1] + 1) * 8;
				}
			}
			stat(EG_S_IPV6);
		} else {
			return 0;
		}
		if (l4_end > p->len)
			l4_end = p->len;

		if (nexthdr == IPPROTO_UDP) {
			struct udphdr udp;
			if (ld(ctx, kind, nfbase, l4_off, &udp, sizeof(udp)))
				return 0;
			p->sport = bpf_ntohs(udp.source);
			p->dport = bpf_ntohs(udp.dest);
			p->l4 = IPPROTO_UDP;
			p->tcp = 0;
			__u32 pay = l4_off + 8;
			/* tunnelled L2: parse the inner frame once */
			if (depth == 0 && p->dport == VXLAN_PORT) {
				off = pay + 8;
				proto = 0;
				p->encap = EG_ENCAP_VXLAN;
				continue;
			}
			if (depth == 0 && p->dport == GENEVE_PORT) {
				__u8 g[4];
				if (ld(ctx, kind, nfbase, pay, g, sizeof(g)))
					return 0;
				if (((g[2] << 8) | g[3]) != P_TEB)
					return 0;
				off = pay + 8 + (g[0] & 0x3f) * 4;
				proto = 0;
				p->encap = EG_ENCAP_GENEVE;
				continue;
			}
			p->dns_off = pay;
			p->dns_len = l4_end > pay ? l4_end - pay : 0;
		} else if (nexthdr == IPPROTO_TCP) {
			struct tcphdr tcp;
			if (ld(ctx, kind, nfbase, l4_off, &tcp, sizeof(tcp)))
				return 0;
			__u32 pay = l4_off + tcp.doff * 4;
			if (tcp.doff < 5 || pay + 2 + 12 > l4_end)
				return 0;
			__be16 mlen;
			if (ld(ctx, kind, nfbase, pay, &mlen, 2))
				return 0;
			p->sport = bpf_ntohs(tcp.source);
			p->dport = bpf_ntohs(tcp.dest);
			p->l4 = IPPROTO_TCP;
			p->tcp = 1;
			/* DNS over TCP: 2-byte length prefix; at least the first message of a segment */
			__u32 m = bpf_ntohs(mlen);
			p->dns_off = pay + 2;
			p->dns_len = l4_end - p->dns_off;
			if (m < 17)
				return 0;
			if (m < p->dns_len)
				p->dns_len = m;
		} else {
			return 0;
		}

		if (p->dns_len < 17) /* header + root name + qtype + qclass */
			return 0;
		if (ld(ctx, kind, nfbase, p->dns_off, &p->h, sizeof(p->h)))
			return 0;
		return dns_sane(p, want_response);
	}
	return 0;
}

struct name_info {
	__u64 full_hash;   /* FNV-1a of the whole lower-cased wire name, read right to left */
	__u64 parent_hash; /* same, without the first label */
	__u64 block_hash;  /* blocklisted suffix that matched, 0 if none */
	__u32 wire_len;    /* wire bytes before the root label */
	__u32 labels, max_label, digits, odd;
	__u16 qtype, qclass;
};

struct fwd_ctx {
	struct scratch *s;
	__u64 full;        /* FNV-1a of the whole lower-cased wire name, left to right */
	__u64 cur;         /* FNV-1a of the current label (length byte + bytes) */
	__u64 lh[EG_MAX_SUFFIXES]; /* hashes of the last EG_MAX_SUFFIXES labels (ring) */
	__u32 avail, next, end, labels, max_label, digits, odd;
	int done;
};

/* One byte of the walk: validates label lengths, lower-cases, counts character classes and
 * hashes. bpf_loop callbacks are verified once, whatever the name length, and the verifier
 * inlines bpf_loop into a plain loop. */
static long fwd_step(__u64 idx, void *data)
{
	struct fwd_ctx *f = data;
	__u32 i = idx & (EG_NAME_MAX - 1);
	if (idx >= f->avail)
		return 1;
	struct scratch *s = f->s;
	__u8 c = s->name[i];
	if (i == f->next) {
		if (f->labels)
			f->lh[(f->labels - 1) & (EG_MAX_SUFFIXES - 1)] = f->cur;
		if (c == 0) {
			f->end = i;
			f->done = 1;
			return 1;
		}
		if (c > 63) /* compression pointer or reserved label type: not in a query */
			return 1;
		f->labels++;
		if (c > f->max_label)
			f->max_label = c;
		f->next = i + c + 1;
		f->cur = FNV_OFFSET;
	} else if (c >= 'A' && c <= 'Z') {
		c += 32;
		s->name[i] = c;
	} else if (c >= '0' && c <= '9') {
		f->digits++;
	} else if (!(c >= 'a' && c <= 'z') && c != '-' && c != '_') {
		f->odd++;
	}
	f->cur = (f->cur ^ c) * FNV_PRIME;
	f->full = (f->full ^ c) * FNV_PRIME;
	return 0;
}

/* Suffix hash step: label hashes combined right to left (must match src/hash.rs). */
static __always_inline __u64 suffix_mix(__u64 h, __u64 label)
{
	h = (h ^ label) * FNV_PRIME;
	return h ^ (h >> 29);
}

/* Copies the question name into scratch, lower-cases it, validates labels, gathers cheap
 * features and hashes (one pass); then checks the last EG_MAX_SUFFIXES suffixes of two or
 * more labels against the blocklist. Returns 0 if the question is well formed. */
static __always_inline int walk_name(void *ctx, int kind, const void *nfbase, struct pkt *p,
				     struct scratch *s, struct name_info *ni, int check_block)
{
	__u32 qoff = p->dns_off + 12;
	__u32 avail = p->dns_len - 12;
	if (avail > EG_NAME_MAX)
		avail = EG_NAME_MAX;
	if (avail < 1 || avail > EG_NAME_MAX)
		return -1;
	if (ld(ctx, kind, nfbase, qoff, s->name, avail))
		return -1;

	struct fwd_ctx f = { .s = s, .avail = avail, .full = FNV_OFFSET };
	bpf_loop(EG_NAME_MAX, fwd_step, &f, 0);
	if (!f.done)
		return -1;
	ni->labels = f.labels;
	ni->max_label = f.max_label;
	ni->digits = f.digits;
	ni->odd = f.odd;
	ni->wire_len = f.end;
	ni->full_hash = f.full;
	__u32 end = f.end & (EG_NAME_MAX - 1);

	__be16 qt[2];
	if (end + 1 + 4 > p->dns_len - 12)
		return -1;
	if (ld(ctx, kind, nfbase, qoff + end + 1, qt, sizeof(qt)))
		return -1;
	ni->qtype = bpf_ntohs(qt[0]);
	ni->qclass = bpf_ntohs(qt[1]);

	__u64 h = FNV_OFFSET;
	__u32 n = f.labels;
#pragma unroll
	for (__u32 j = 0; j < EG_MAX_SUFFIXES; j++) {
		if (j >= n)
			break;
		h = suffix_mix(h, f.lh[(n - 1 - j) & (EG_MAX_SUFFIXES - 1)]);
		if (j + 2 == n || (j + 1 == EG_MAX_SUFFIXES && n > EG_MAX_SUFFIXES))
			ni->parent_hash = h;
		if (check_block && j >= 1 && !ni->block_hash && bpf_map_lookup_elem(&eg_blocklist, &h))
			ni->block_hash = h;
	}
	return 0;
}

static __always_inline int plain_qtype(__u16 t)
{
	/* A NS SOA PTR AAAA DS DNSKEY SVCB HTTPS: what resolvers and browsers ask all day */
	return t == 1 || t == 2 || t == 6 || t == 12 || t == 28 || t == 43 || t == 48 || t == 64 ||
	       t == 65;
}

static __always_inline __u32 suspicion(struct eg_config *cfg, struct name_info *ni)
{
	__u32 r = 0;
	__u32 dotted = ni->wire_len ? ni->wire_len - 1 : 0;
	if (dotted >= cfg->hold_name_len)
		r |= EG_R_LONG_NAME;
	if (ni->max_label >= cfg->hold_label_len)
		r |= EG_R_LONG_LABEL;
	if (ni->labels >= cfg->hold_labels)
		r |= EG_R_MANY_LABELS;
	if (ni->digits >= cfg->hold_digits)
		r |= EG_R_DIGITS;
	if (ni->odd)
		r |= EG_R_ODD_CHARS;
	if (!plain_qtype(ni->qtype))
		r |= EG_R_RARE_QTYPE;
	return r;
}

/* Fills an event's common fields; the packet copy is the caller's. */
static __always_inline void fill_event(struct eg_event *ev, struct pkt *p, struct scratch *s,
				       struct name_info *ni, struct eg_proc *proc, __u64 cookie)
{
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cookie = cookie;
	ev->name_hash = ni->full_hash;
	ev->blocked_hash_hi = ni->block_hash >> 32;
	ev->qtype = ni->qtype;
	ev->dns_id = bpf_ntohs(p->h.id);
	ev->name_len = ni->wire_len;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->l4 = p->l4;
	ev->encap = p->encap;
	ev->ipver = p->ipver;
	ev->rcode = bpf_ntohs(p->h.flags) & 0xf;
	ev->ancount = bpf_ntohs(p->h.an);
	ev->wire_len = p->len;
	__builtin_memcpy(ev->saddr, p->saddr, 16);
	__builtin_memcpy(ev->daddr, p->daddr, 16);
	__builtin_memcpy(ev->name, s->name, EG_NAME_MAX);
	ev->csum_partial = 0;
	ev->resp_len = 0;
	ev->pkt_len = 0;
	ev->drops = 0;
	ev->quiet_hash = 0;
	/* ring memory is recycled, not zeroed: clear what an unattributed record lacks */
	if (proc) {
		ev->pid = proc->pid;
		ev->tgid = proc->tgid;
		ev->uid = proc->uid;
		ev->cgroup_id = proc->cgroup_id;
		__builtin_memcpy(ev->comm, proc->comm, EG_COMM_LEN);
	} else {
		ev->pid = 0;
		ev->tgid = 0;
		ev->uid = 0;
		ev->cgroup_id = 0;
		__builtin_memset(ev->comm, 0, EG_COMM_LEN);
	}
}

/* Copies a passed query (or an NXDOMAIN answer) to the observation ring: best effort. */
static __always_inline void observe(struct pkt *p, struct scratch *s, struct name_info *ni,
				    struct eg_proc *proc, __u64 cookie, __u32 ifindex, __u8 kind,
				    __u8 hook)
{
	struct eg_event *ev = bpf_ringbuf_reserve(&eg_observe, EG_OBS_SIZE, 0);
	if (!ev) {
		stat(EG_S_OBSERVE_FULL);
		return;
	}
	fill_event(ev, p, s, ni, proc, cookie);
	ev->ifindex = ifindex;
	ev->reasons = 0;
	ev->action = EG_ACT_PASS;
	ev->kind = kind;
	ev->hook = hook;
	ev->resp_len = kind == EG_KIND_RESPONSE ? p->dns_len : 0;
	bpf_ringbuf_submit(ev, 0);
	stat(EG_S_OBSERVED);
}

/* Global (non-inlined) entry points: the verifier checks each once, on its own, so the
 * decision code after them is not re-verified for every parse path. */
#define EG_PARSERS(KIND, CTX_T, SUFFIX)                                                          \
	__noinline int find_dns_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p, int want_resp)  \
	{                                                                                        \
		if (!p)                                                                          \
			return 0;                                                                \
		if (!p->l3) {                                                                    \
			int r = find_dns_fast(ctx, KIND, (const void *)base, p, want_resp);      \
			if (r != FAST_MISS)                                                      \
				return r;                                                        \
		}                                                                                \
		return find_dns(ctx, KIND, (const void *)base, p, 0, p->l3, want_resp);          \
	}                                                                                        \
	__noinline int walk_name_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p,                 \
					  struct name_info *ni)                                  \
	{                                                                                        \
		__u32 slot = KIND;                                                               \
		struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);                     \
		if (!p || !ni || !s)                                                             \
			return -1;                                                               \
		return walk_name(ctx, KIND, (const void *)base, p, s, ni, 1);                    \
	}

EG_PARSERS(K_SKB, struct __sk_buff, skb)
EG_PARSERS(K_XDP, struct xdp_md, xdp)
EG_PARSERS(K_NF, struct bpf_nf_ctx, nf)

#define FIND_DNS(kind, ctx, base, p, wr)                                                         \
	((kind) == K_XDP  ? find_dns_xdp(ctx, (__u64)(base), p, wr)                              \
	 : (kind) == K_NF ? find_dns_nf(ctx, (__u64)(base), p, wr)                               \
			  : find_dns_skb(ctx, (__u64)(base), p, wr))
#define WALK_NAME(kind, ctx, base, p, ni)                                                        \
	((kind) == K_XDP  ? walk_name_xdp(ctx, (__u64)(base), p, ni)                             \
	 : (kind) == K_NF ? walk_name_nf(ctx, (__u64)(base), p, ni)                              \
			  : walk_name_skb(ctx, (__u64)(base), p, ni))

/* ---------------------------------------------------------------- egress decision */

enum verdict { V_PASS = 0, V_DROP = 1 };

static __always_inline int egress(void *ctx, int kind, const void *nfbase, __u32 len, __u32 mark,
				  __u32 ifindex, __u64 cookie, __u16 l3proto)
{
	struct pkt p = {};
	p.len = len;
	p.l3 = l3proto;
	if (!FIND_DNS(kind, ctx, nfbase, &p, 0)) {
		stat(EG_S_NON_DNS);
		return V_PASS;
	}
	struct eg_config *cfg = get_config();
	if (!cfg)
		return V_PASS;
	__u32 slot = kind;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!s)
		return V_PASS;
	stat(EG_S_DNS_QUERIES);
	if (p.tcp)
		stat(EG_S_TCP_DNS);
	if (p.encap == EG_ENCAP_VXLAN)
		stat(EG_S_VXLAN);
	if (p.encap == EG_ENCAP_GENEVE)
		stat(EG_S_GENEVE);

	int enforce = cfg->mode == EG_MODE_ENFORCE;
	struct name_info ni = {};
	if (WALK_NAME(kind, ctx, nfbase, &p, &ni)) {
		stat(EG_S_MALFORMED);
		/* a resolver answers FORMERR to this: only a tunnel endpoint would read it */
		if (enforce && cfg->drop_malformed53 && p.dport == 53)
			return V_DROP;
		return V_PASS;
	}

	/* a frame the agent released: pass it exactly once */
	if (mark && mark == cfg->release_mark) {
		struct eg_ticket t = { .name_hash = ni.full_hash, .dns_id = bpf_ntohs(p.h.id) };
		if (bpf_map_lookup_elem(&eg_tickets, &t)) {
			bpf_map_delete_elem(&eg_tickets, &t);
			stat(EG_S_RELEASED);
			return V_PASS;
		}
	}

	struct eg_proc *proc = cookie ? bpf_map_lookup_elem(&eg_socks, &cookie) : 0;
	__u32 reasons = 0;
	__u8 action = EG_ACT_PASS;
	if (proc && bpf_map_lookup_elem(&eg_quarantine, &proc->tgid)) {
		reasons = EG_R_QUARANTINE;
		action = EG_ACT_QUARANTINE;
	} else if (ni.block_hash) {
		reasons = EG_R_BLOCKLIST;
		action = EG_ACT_BLOCK;
	} else {
		reasons = suspicion(cfg, &ni);
		int plain = !reasons;
		if (plain || bpf_map_lookup_elem(&eg_allow, &ni.full_hash)) {
			stat(plain ? EG_S_PASS_PLAIN : EG_S_PASS_ALLOW);
			if (!cfg->report_all) {
				if (cfg->observe)
					observe(&p, s, &ni, proc, cookie, ifindex, EG_KIND_QUERY,
						kind == K_NF ? EG_HOOK_NETFILTER : EG_HOOK_TC);
				return V_PASS;
			}
			reasons = EG_R_REPORT_ALL;
		} else {
			action = EG_ACT_HOLD;
		}
	}

	if (!enforce && action != EG_ACT_PASS)
		action = EG_ACT_REPORT;
	if (action == EG_ACT_BLOCK)
		stat(EG_S_BLOCK);
	else if (action == EG_ACT_QUARANTINE)
		stat(EG_S_QUARANTINE);
	else if (action == EG_ACT_REPORT)
		stat(EG_S_REPORT);

	__u32 drops = 0;
	struct eg_quiet_key qk = {};
	if (action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE) {
		qk = (struct eg_quiet_key){
			.hash = action == EG_ACT_BLOCK ? ni.block_hash : (__u64)(proc ? proc->tgid : 0),
			.cookie = cookie,
		};
		__u32 src[4];
		__builtin_memcpy(src, p.saddr, 16);
		qk.src = src[0] ^ src[1] ^ src[2] ^ src[3];
		__u64 now = bpf_ktime_get_ns();
		struct eg_quiet *q = bpf_map_lookup_elem(&eg_quiet, &qk);
		if (q) {
			drops = __sync_fetch_and_add(&q->total, 1) + 1;
			if (now - q->last_ns < EG_QUIET_NS) {
				stat(EG_S_BLOCK_QUIET);
				return V_DROP;
			}
			q->last_ns = now;
		} else {
			struct eg_quiet fresh = { .total = 1, .last_ns = now };
			bpf_map_update_elem(&eg_quiet, &qk, &fresh, BPF_NOEXIST);
			drops = 1;
		}
	}

	int hold = action == EG_ACT_HOLD;
	if (hold && !agent_alive()) {
		/* nobody will release it: fail_open passes, otherwise it is held and expires */
		stat(EG_S_AGENT_DOWN);
		if (cfg->fail_open)
			return V_PASS;
	}
	if (hold && (len == 0 || len > EG_PKT_MAX)) {
		stat(EG_S_FAILCLOSED);
		if (cfg->fail_open)
			return V_PASS;
		action = EG_ACT_FAILCLOSED;
		hold = 0;
	}

	struct eg_event *ev = bpf_ringbuf_reserve(&eg_events, sizeof(*ev), 0);
	if (!ev) {
		stat(EG_S_RINGBUF_FULL);
		if (hold) {
			/* cannot hand it over: fail closed unless told otherwise */
			stat(EG_S_FAILCLOSED);
			return cfg->fail_open ? V_PASS : V_DROP;
		}
		return (action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE) ? V_DROP : V_PASS;
	}
	fill_event(ev, &p, s, &ni, proc, cookie);
	ev->ifindex = ifindex;
	ev->reasons = reasons;
	ev->action = action;
	ev->kind = EG_KIND_QUERY;
	ev->hook = kind == K_NF ? EG_HOOK_NETFILTER : EG_HOOK_TC;
	ev->pkt_len = 0;
	ev->drops = drops;
	ev->quiet_hash = qk.hash;
	if (hold) {
		__u32 n = len;
		/* n is in [1, EG_PKT_MAX]; the mask restates that where the verifier can see it */
		if (n < 1 || n > EG_PKT_MAX ||
		    ld(ctx, kind, nfbase, 0, ev->pkt, ((n - 1) & (EG_PKT_MAX - 1)) + 1)) {
			bpf_ringbuf_discard(ev, 0);
			stat(EG_S_FAILCLOSED);
			return cfg->fail_open ? V_PASS : V_DROP;
		}
		ev->pkt_len = n;
		if (kind == K_SKB) {
			struct sk_buff *k = bpf_cast_to_kern_ctx(ctx);
			csum_meta(ev, k, k->mac_header);
		} else if (kind == K_NF) {
			struct sk_buff *k = ((struct bpf_nf_ctx *)ctx)->skb;
			csum_meta(ev, k, k->network_header);
		}
		stat(EG_S_HOLD);
	}
	bpf_ringbuf_submit(ev, 0);
	if (action == EG_ACT_HOLD || action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE ||
	    action == EG_ACT_FAILCLOSED)
		return V_DROP;
	return V_PASS;
}

SEC("tc")
int eg_tc_egress(struct __sk_buff *skb)
{
	stat(EG_S_PACKETS);
	__u64 cookie = bpf_get_socket_cookie(skb);
	int v = egress(skb, K_SKB, 0, skb->len, skb->mark, skb->ifindex, cookie, 0);
	return v == V_DROP ? EG_TC_DROP : EG_TC_NEXT;
}

SEC("netfilter")
int eg_netfilter(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	__u16 l3 = ctx->state->pf == 10 /* NFPROTO_IPV6 */ ? P_IPV6 : P_IP;
	const void *base = BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
	__u32 len = BPF_CORE_READ(skb, len);
	__u32 mark = BPF_CORE_READ(skb, mark);
	struct sock *sk = BPF_CORE_READ(skb, sk);
	__u64 cookie = 0;
	if (sk)
		cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	struct net_device *dev = BPF_CORE_READ(ctx->state, out);
	__u32 ifindex = dev ? BPF_CORE_READ(dev, ifindex) : 0;
	stat(EG_S_NF_PACKETS);
	int v = egress(ctx, K_NF, base, len, mark, ifindex, cookie, l3);
	return v == V_DROP ? EG_NF_DROP : EG_NF_ACCEPT;
}

/* ---------------------------------------------------------------- XDP ingress */

/* Counts one NXDOMAIN in a 1-second window; returns 1 when over the limit. */
static __always_inline int over_limit(struct eg_rate *r, __u64 now, __u32 limit)
{
	if (now - r->window_ns > 1000000000ULL) {
		r->window_ns = now;
		r->count = 1;
		return 0;
	}
	__u32 c = __sync_fetch_and_add(&r->count, 1) + 1;
	return limit && c > limit;
}

SEC("xdp")
int eg_xdp_ingress(struct xdp_md *ctx)
{
	struct pkt p = {};
	p.len = bpf_xdp_get_buff_len(ctx);
	stat(EG_S_XDP_PACKETS);
	if (!find_dns_xdp(ctx, 0, &p, 1))
		return XDP_PASS;
	struct eg_config *cfg = get_config();
	__u32 slot = K_XDP;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!cfg || !s)
		return XDP_PASS;
	stat(EG_S_XDP_RESPONSES);
	struct name_info ni = {};
	if (walk_name_xdp(ctx, 0, &p, &ni))
		return XDP_PASS;
	int enforce = cfg->mode == EG_MODE_ENFORCE;
	__u32 reasons = 0;
	__u64 now = bpf_ktime_get_ns();

	if ((bpf_ntohs(p.h.flags) & 0xf) == 3) {
		stat(EG_S_XDP_NXDOMAIN);
		struct eg_addr client = {};
		__builtin_memcpy(client.addr, p.daddr, 16);
		struct eg_rate fresh = { .window_ns = now, .count = 1 };
		struct eg_rate *rc = bpf_map_lookup_elem(&eg_nx_clients, &client);
		if (!rc)
			bpf_map_update_elem(&eg_nx_clients, &client, &fresh, BPF_NOEXIST);
		else if (over_limit(rc, now, cfg->nx_limit))
			reasons |= EG_R_NXDOMAIN_FLOOD;
		if (ni.parent_hash) {
			struct eg_rate *rd = bpf_map_lookup_elem(&eg_nx_domains, &ni.parent_hash);
			if (!rd)
				bpf_map_update_elem(&eg_nx_domains, &ni.parent_hash, &fresh, BPF_NOEXIST);
			else if (over_limit(rd, now, cfg->nx_domain_limit))
				reasons |= EG_R_NXDOMAIN_FLOOD;
		}
	}
	if (ni.block_hash) {
		__u16 t = ni.qtype;
		/* TXT NULL CNAME MX: the downlink records of DNS C2 */
		if (t == 16 || t == 10 || t == 5 || t == 15 || p.dns_len >= cfg->downlink_bytes)
			reasons |= EG_R_BIG_DOWNLINK | EG_R_BLOCKLIST;
	}
	/* an NXDOMAIN that reaches the client: the DGA-bot analytics count failed domains */
	if (cfg->observe && !(enforce && reasons) && (bpf_ntohs(p.h.flags) & 0xf) == 3)
		observe(&p, s, &ni, 0, 0, ctx->ingress_ifindex, EG_KIND_RESPONSE, EG_HOOK_XDP);
	if (!reasons)
		return XDP_PASS;

	/* an over-limit flood is counted and dropped without one event per packet */
	int flood_only = reasons == EG_R_NXDOMAIN_FLOOD;
	if (reasons & EG_R_NXDOMAIN_FLOOD)
		stat(EG_S_XDP_RATELIMITED);
	if (reasons & EG_R_BIG_DOWNLINK)
		stat(EG_S_XDP_DOWNLINK);
	if (!flood_only) {
		struct eg_event *ev = bpf_ringbuf_reserve(&eg_events, sizeof(*ev), 0);
		if (ev) {
			fill_event(ev, &p, s, &ni, 0, 0);
			ev->ifindex = ctx->ingress_ifindex;
			ev->reasons = reasons;
			ev->action = enforce ? EG_ACT_BLOCK : EG_ACT_REPORT;
			ev->kind = EG_KIND_RESPONSE;
			ev->hook = EG_HOOK_XDP;
			ev->resp_len = p.dns_len;
			ev->pkt_len = 0;
			bpf_ringbuf_submit(ev, 0);
		} else {
			stat(EG_S_RINGBUF_FULL);
		}
	}
	return enforce ? XDP_DROP : XDP_PASS;
}

/* ---------------------------------------------------------------- cgroup sock_addr */

/* Records who owns the socket (once per cookie and process) and denies DNS-port sends of a
 * quarantined process. Returns 1 to allow, 0 to deny with EPERM. */
static __always_inline int sock_hook(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	struct eg_proc *old = bpf_map_lookup_elem(&eg_socks, &cookie);
	if (!old || old->tgid != tgid || old->pid != (__u32)pt) {
		struct eg_proc pr = {};
		pr.pid = (__u32)pt;
		pr.tgid = tgid;
		pr.uid = (__u32)bpf_get_current_uid_gid();
		pr.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(pr.comm, sizeof(pr.comm));
		bpf_map_update_elem(&eg_socks, &cookie, &pr, BPF_ANY);
		stat(EG_S_SOCK_EVENTS);
	}
	if (ctx->user_port == bpf_htons(53) && bpf_map_lookup_elem(&eg_quarantine, &tgid)) {
		struct eg_config *cfg = get_config();
		if (cfg && cfg->mode == EG_MODE_ENFORCE) {
			stat(EG_S_SOCK_DENIED);
			return 0;
		}
	}
	return 1;
}

SEC("cgroup/sendmsg4")
int eg_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx);
}

SEC("cgroup/sendmsg6")
int eg_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx);
}

SEC("cgroup/connect4")
int eg_connect4(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx);
}

SEC("cgroup/connect6")
int eg_connect6(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx);
}

/* An empty classifier: the benchmark measures BPF_PROG_TEST_RUN's own per-run cost with it,
 * so the figures for eg_tc_egress can be read net of the harness. Never attached. */
SEC("tc")
int eg_tc_noop(struct __sk_buff *skb)
{
	return EG_TC_NEXT;
}
