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
#define VXLAN_LINUX_PORT 8472 /* the kernel's default, flannel's and Cilium's */
#define GENEVE_PORT 6081
#define EG_TC_NEXT -1 /* TCX_NEXT / TC_ACT_UNSPEC: let the next program or the stack decide */
#define EG_TC_DROP 2  /* TCX_DROP / TC_ACT_SHOT */
#define EG_NF_DROP 0
#define EG_NF_ACCEPT 1
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* K_SOCK is an skb like K_SKB, with scratch slots of its own: the socket hook runs in process
 * context, where a softirq's tc run can interrupt it on the same CPU. */
enum ctx_kind { K_SKB = 0, K_XDP = 1, K_NF = 2, K_SOCK = 3 };
#define K_SLOTS 4

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

/* The carriers (OPT record and RD/AD/CD bits, hashed) a client sent a server lately. A plain
 * query passes only with one of them: a new carrier is held and judged once (the agent counts
 * its bytes as information), then pinned by the agent, only once it went out (programs only
 * read this map). Clients keep theirs (a resolver's OPT, named's
 * per-server cookie, one dig process's cookie), so a tunnel in the cookie or the client
 * subnet is held query after query. A pair absent (new, or evicted) has no carrier yet. */
struct eg_pair_key {
	__u8 saddr[16];
	__u8 daddr[16];
};

#define EG_CARRIER_SLOTS 4
#define EG_CARRIER_MAX 128 /* bytes hashed after the question (a power of two) */
struct eg_carriers {
	__u64 h[EG_CARRIER_SLOTS];
	__u32 next;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct eg_pair_key);
	__type(value, struct eg_carriers);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} eg_carriers SEC(".maps");

/* The COOKIE options (client + server part) the last responses brought each (client,
 * server) pair, learnt by XDP and kept whole (compared, not hashed: no hash to collide with).
 * A server cookie is the server's own data: a client echoing one it was sent says nothing, so
 * the carrier reads it as zeros. BIND stamps a new one on every answer (RFC 9018 timestamps):
 * without this, named's every query to such a server was a new carrier. Only the last 4
 * count, so the choice among them is at most 2 bits. */
#define EG_COOKIE_MAX 40
#define EG_QKEY_MAX 512 /* a question's bytes: name (255), type, class; a power of two */
struct eg_scookies {
	__u8 ck[EG_CARRIER_SLOTS * EG_COOKIE_MAX]; /* slot i at i * EG_COOKIE_MAX */
	__u8 len[EG_CARRIER_SLOTS];
	__u32 next;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct eg_pair_key);
	__type(value, struct eg_scookies);
} eg_scookies SEC(".maps");

/* The queries with a COOKIE option each (client, server) pair sent lately: (source port,
 * DNS id) and client cookie. XDP learns a server cookie only from an answer to one of them
 * (its destination port, id and client cookie), once: an off-path sender must guess 32 bits
 * to overwrite what a resolver learnt. */
#define EG_PENDING 16
struct eg_pending {
	__u64 cc[EG_PENDING];
	__u32 tag[EG_PENDING]; /* source port << 16 | DNS id; 0: free */
	__u32 next;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct eg_pair_key);
	__type(value, struct eg_pending);
} eg_pending SEC(".maps");

/* Pairs a local socket sent a frame from port 53 to, keyed (destination, source) like the
 * queries they would answer, with the time. Such a frame routed back to this host (the
 * gateway hairpins it: AF_PACKET with CAP_NET_RAW) would look like the server's answer:
 * XDP learns no cookie for a pair seen here in the last hour. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct eg_pair_key);
	__type(value, __u64);
} eg_forged SEC(".maps");

#define EG_FORGED_NS (3600ULL * 1000000000ULL)

/* The SipHash key of the carrier hash and the allow cache, drawn by the programs at first use
 * and never read out by the agent: the hashes cannot be predicted, so no carrier or question
 * is made to collide with another. Pinned (0600) beside eg_allow, whose keys it makes: a
 * restart keeps what the agent cleared. */
struct eg_secret {
	__u64 k0, k1;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eg_secret);
} eg_secret SEC(".maps");

/* Who owns a socket, by socket cookie: the netfilter program's record (it cannot reach
 * socket storage). An LRU: a process churning sockets can evict its own record, so tc and the
 * socket layer read eg_sk instead. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct eg_proc);
} eg_socks SEC(".maps");

/* Who owns a socket, in the socket itself: written when an inet socket is created (raw ones
 * too, which no connect or sendmsg hook sees), rewritten at connect and sendmsg when the
 * sender changes, freed with the socket. Nothing evicts it, so a sender cannot shed its
 * attribution (and with it its budgets) by churning sockets. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct eg_proc);
} eg_sk SEC(".maps");

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
	__type(value, __u64); /* expiry, CLOCK_MONOTONIC ns */
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

/* Name and message bytes; one slot per hook so a softirq XDP run cannot clobber a
 * netfilter run it interrupted on the same CPU. */
struct scratch {
	__u8 name[EG_NAME_MAX];
	__u8 msg[EG_PKT_MAX]; /* the message a ticket is checked against */
	/* a (client, server) map key: off the 512-byte stack */
	struct eg_pair_key pair;
	struct eg_scookies scookies; /* a pair's first learnt cookie */
	struct eg_pending pending;   /* a pair's first pending query */
	__u8 cq[EG_COOKIE_MAX] __attribute__((aligned(8))); /* a query's cookie, zero-padded */
	__u8 exact[EG_QKEY_MAX]; /* the question as sent (case kept), root, type, class */
	__u64 lh[EG_MAX_SUFFIXES]; /* the name walk's last label hashes (ring): off the stack */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, K_SLOTS);
	__type(key, __u32);
	__type(value, struct scratch);
} eg_scratch SEC(".maps");

/* An owner made from the socket alone (EG_TGID_SOCKET), per program kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, K_SLOTS);
	__type(key, __u32);
	__type(value, struct eg_proc);
} eg_proc_tmp SEC(".maps");

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

/* Linear bytes of the skb the netfilter program is judging (set at its entry). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} eg_nflin SEC(".maps");

/* Reads len bytes at off from whichever context this program runs in. For netfilter the
 * "packet" starts at the network header, and only its linear part is readable here: a read
 * past it fails (and fails closed, see locate()) instead of returning slab bytes. */
static __always_inline int ld(void *ctx, int kind, const void *nfbase, __u32 off, void *to,
			      __u32 len)
{
	if (kind == K_XDP)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	if (kind == K_NF) {
		__u32 zero = 0;
		__u32 *lin = bpf_map_lookup_elem(&eg_nflin, &zero);
		if (!lin || off + len > *lin)
			return -1;
		return bpf_probe_read_kernel(to, len, nfbase + off);
	}
	return bpf_skb_load_bytes(ctx, off, to, len);
}

struct dnshdr {
	__be16 id;
	__be16 flags;
	__be16 qd, an, ns, ar;
};

/* A fragmented datagram: (addresses, IP id, protocol). Its first fragment is judged; the
 * verdict (1 pass, 2 drop) is kept so the later fragments follow it. A later fragment whose
 * first one was never seen on this egress is dropped: nothing can judge it. */
struct frag_key {
	__u8 saddr[16], daddr[16];
	__u32 id, proto;
};

/* Where the transport payload and the DNS message are, and the flow around them. */
struct pkt {
	__u32 len;     /* bytes available in the context */
	__u32 l3;      /* input: 0 = starts with Ethernet, else the L3 ethertype */
	__u32 flags;   /* input: PF_* */
	__u32 gso;     /* input: gso_segs << 16 | gso_size (0: not a GSO super-packet) */
	__u32 pay;     /* offset of the L4 payload */
	__u32 end;     /* end of the L4 payload */
	__u32 dns_off; /* offset of the DNS header */
	__u32 dns_len; /* bytes of DNS message available */
	__u16 sport, dport;
	__u8 l4, ipver, encap, tcp;
	__u8 frag;      /* first fragment of a fragmented datagram */
	__u8 fail;      /* enum fail_why, when locate() says LOC_FAIL */
	__u8 udp_encap; /* a VXLAN/GENEVE header was decoded (the payload has two readings) */
	__u8 hk;        /* enum hdr_kind of the message at dns_off */
	__u8 urg;     /* TCP URG: the receiver takes a byte out of the stream */
	__u8 syn;     /* TCP SYN (Fast Open data follows the SYN's sequence number) */
	__u8 dns_flow; /* TCP off port 53 whose stream began as DNS: held to port 53's rules */
	__u8 _p;
	__u8 saddr[16], daddr[16];
	struct dnshdr h;
	__u32 frag_id;    /* IP identification of a first fragment (p->frag) */
	__u32 frag_proto; /* its protocol */
	__u32 seq;        /* TCP sequence number */
	struct frag_key fk; /* the eg_frags key, built here: kept off the stack */
};


struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct frag_key);
	__type(value, __u64);
} eg_frags SEC(".maps");

#define PF_EGRESS 1       /* judging queries: fragments and deep encapsulation fail closed */
#define PF_NO_UDP_ENCAP 2 /* read UDP 4789/6081 payloads as plain payloads */
#define PF_FOREIGN 4      /* socket layer, another network namespace than the agent's */

enum loc { LOC_NONE = 0, LOC_DNS = 1, LOC_FAIL = 2 };
enum fail_why {
	F_NONE = 0,
	F_FRAG,       /* tiny first fragment, or the first fragment of a DNS datagram */
	F_DEEP_ENCAP, /* more layers than EG_MAX_DEPTH */
	F_TCP,        /* DNS over TCP that is not a run of whole messages */
	F_GSO,        /* UDP GSO super-packet with a DNS query in a segment */
	F_MALFORMED,  /* non-DNS payload to port 53 */
	F_USER_PAGES, /* DNS in pages the sender can still write (MSG_ZEROCOPY, vmsplice) */
};
#define EG_MAX_DEPTH 3   /* outer IP header + two encapsulations */
#define EG_FRAG_MIN 256  /* payload a first fragment must carry: no stack makes them smaller */
#define EG_TCP_MSGS 16   /* messages judged in one TCP segment (or TSO super-packet) */
#define EG_GSO_SEGS 128  /* UDP_MAX_SEGMENTS */

enum hdr_kind { H_NONE = 0, H_PLAIN = 1, H_ODD = 2 };

#define Q_FREE_BITS 0x06cf /* AA 0x400, TC 0x200, RA 0x80, Z 0x40, RCODE 0xf */

/* What a DNS server would make of these 12 bytes as a query. Plain: QR=0, opcode QUERY, one
 * question, no answer or authority records, at most OPT + TSIG. Odd: anything else a server
 * still reads as a message with a question (other opcodes, records in a query, several
 * questions; a "response" sent to port 53 from a port that is not a server's). Off port 53 an
 * odd header must also be small in every count, so random payloads are not taken for DNS. */
static __always_inline int hdr_kind(const struct dnshdr *h, __u16 sport, __u16 dport)
{
	__u16 fl = bpf_ntohs(h->flags), qd = bpf_ntohs(h->qd), an = bpf_ntohs(h->an),
	      ns = bpf_ntohs(h->ns), ar = bpf_ntohs(h->ar);
	__u8 opcode = (fl >> 11) & 0xf;
	if (fl >> 15)
		return dport == 53 && sport != 53 && qd >= 1 ? H_ODD : H_NONE;
	if (opcode == 0 && qd == 1 && !an && !ns && ar <= 2)
		return H_PLAIN;
	if (qd < 1)
		return H_NONE;
	if (dport == 53 || (opcode == 0 && qd == 1 && !an && !ns))
		return H_ODD;
	if (qd <= 4 && an <= 8 && ns <= 8 && ar <= 8 && opcode <= 6 && opcode != 3)
		return H_ODD;
	return H_NONE;
}

/* Port 53, or a TCP stream off it that began as DNS (tcp_flow): whole-message strict. */
static __always_inline int strict53(const struct pkt *p, int kind)
{
	return p->dport == 53 || (kind == K_SOCK && p->dns_flow);
}

/* The port whose rules hdr_kind applies. */
static __always_inline __u16 edport(const struct pkt *p, int kind)
{
	return strict53(p, kind) ? 53 : p->dport;
}

/* Header sanity of a response (XDP): QR=1, opcode QUERY, one question. */
static __always_inline int resp_sane(const struct dnshdr *h)
{
	__u16 fl = bpf_ntohs(h->flags);
	return (fl >> 15) && ((fl >> 11) & 0xf) == 0 && bpf_ntohs(h->qd) == 1;
}

#define FAST_MISS 3

/* The common shapes (Ethernet + IPv4 without options or fragmentation, or + IPv6 without
 * extension headers, then UDP on a non-tunnel port or TCP) from one load of the first 74
 * bytes (54 for IPv4 without room for more). Returns LOC_NONE / LOC_DNS (= transport found)
 * like find_l4, or FAST_MISS to take the general walk. */
static __always_inline int find_l4_fast(void *ctx, int kind, const void *nfbase, struct pkt *p)
{
	__u8 b[74];
	__u32 l4 = 0, end = 0, v6 = 0;
	__u8 proto = 0;
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
		if (b[14] != 0x45 || ((b[20] & 0x3f) | b[21]))
			return FAST_MISS; /* options, MF or a fragment offset */
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
		if ((b[14] >> 4) != 6)
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
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return FAST_MISS; /* encapsulations and the rest: the general walk */
	if (end > p->len || end == (v6 ? 54 : 14))
		end = p->len; /* BIG TCP leaves the length field 0 */
	__u8 *t = v6 ? &b[54] : &b[34];
	p->sport = (t[0] << 8) | t[1];
	p->dport = (t[2] << 8) | t[3];
	if (proto == IPPROTO_UDP) {
		if (!(p->flags & PF_NO_UDP_ENCAP) &&
		    (p->dport == VXLAN_PORT || p->dport == VXLAN_LINUX_PORT ||
		     p->dport == GENEVE_PORT))
			return FAST_MISS;
		p->l4 = IPPROTO_UDP;
		p->pay = l4 + 8;
	} else {
		if ((t[12] >> 4) < 5)
			return LOC_NONE;
		p->l4 = IPPROTO_TCP;
		p->urg = !!(t[13] & 0x20);
		p->syn = !!(t[13] & 0x02);
		p->seq = ((__u32)t[4] << 24) | ((__u32)t[5] << 16) | ((__u32)t[6] << 8) | t[7];
		p->pay = l4 + (t[12] >> 4) * 4;
	}
	p->end = end;
	return LOC_DNS;
}

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p)
{
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
	k->id = p->frag_id;
	k->proto = p->frag_proto;
}

/* A fragment at offset > 0. Egress: passed only when its first fragment was judged and
 * passed here; ingress (responses) is not judged by fragments. */
static __always_inline int later_fragment(struct pkt *p, int depth, __u32 s4, __u32 d4, int ver)
{
	if (!(p->flags & PF_EGRESS))
		return LOC_NONE;
	if (depth == 0) {
		if (ver == 4) {
			p->ipver = 4;
			__builtin_memset(p->saddr, 0, 16);
			__builtin_memset(p->daddr, 0, 16);
			p->saddr[10] = p->saddr[11] = p->daddr[10] = p->daddr[11] = 0xff;
			__builtin_memcpy(&p->saddr[12], &s4, 4);
			__builtin_memcpy(&p->daddr[12], &d4, 4);
		}
		frag_key_of(&p->fk, p);
		__u64 *v = bpf_map_lookup_elem(&eg_frags, &p->fk);
		if (v && *v == 1)
			return LOC_NONE;
	}
	p->fail = F_FRAG;
	return LOC_FAIL;
}

/* Walks from an Ethernet (or IP) header through VLAN tags, IPv4/IPv6 (options, extension
 * headers), IPIP/SIT/GRE/VXLAN/GENEVE to a UDP or TCP payload. Returns LOC_DNS when a
 * transport payload was found (p->pay/end/l4), LOC_NONE when there is nothing to judge, and
 * LOC_FAIL (p->fail) when a query could hide where this walk stops. */
static __always_inline int find_l4(void *ctx, int kind, const void *nfbase, struct pkt *p)
{
	__u32 off = 0;
	__u16 proto = p->l3;
	int egress = p->flags & PF_EGRESS;

#pragma unroll
	for (int depth = 0; depth < EG_MAX_DEPTH; depth++) {
		if (proto == 0) {
			struct ethhdr eth;
			if (ld(ctx, kind, nfbase, off, &eth, sizeof(eth)))
				return LOC_NONE;
			proto = bpf_ntohs(eth.h_proto);
			off += ETH_HLEN_;
			/* 802.1ad outer + 802.1Q inner, or one 802.1Q tag */
#pragma unroll
			for (int t = 0; t < 2; t++) {
				if (proto == P_8021Q || proto == P_8021AD) {
					__be16 tag[2];
					if (ld(ctx, kind, nfbase, off, tag, sizeof(tag)))
						return LOC_NONE;
					proto = bpf_ntohs(tag[1]);
					off += 4;
				}
			}
			if (egress && (proto == P_8021Q || proto == P_8021AD)) {
				p->fail = F_DEEP_ENCAP; /* a third tag: the walk ends here */
				return LOC_FAIL;
			}
		}

		__u8 nexthdr = 0;
		__u32 l4_off = 0, l4_end = 0;
		int frag = 0;
		if (proto == P_IP) {
			struct iphdr ip;
			if (ld(ctx, kind, nfbase, off, &ip, sizeof(ip)))
				return LOC_NONE;
			__u32 ihl = ip.ihl * 4;
			if (ip.version != 4 || ihl < 20)
				return LOC_NONE;
			__u16 fo = bpf_ntohs(ip.frag_off);
			nexthdr = ip.protocol;
			if (fo & 0x3fff) {
				p->frag_id = bpf_ntohs(ip.id);
				p->frag_proto = nexthdr;
			}
			/* a later fragment follows the verdict on its first one */
			if (fo & 0x1fff)
				return later_fragment(p, depth, ip.saddr, ip.daddr, 4);
			frag = !!(fo & 0x2000);
			l4_off = off + ihl;
			l4_end = ip.tot_len ? off + bpf_ntohs(ip.tot_len) : p->len;
			if (depth == 0) {
				p->ipver = 4;
				__builtin_memset(p->saddr, 0, 16);
				__builtin_memset(p->daddr, 0, 16);
				p->saddr[10] = p->saddr[11] = 0xff;
				p->daddr[10] = p->daddr[11] = 0xff;
				__builtin_memcpy(&p->saddr[12], &ip.saddr, 4);
				__builtin_memcpy(&p->daddr[12], &ip.daddr, 4);
			}
		} else if (proto == P_IPV6) {
			struct ipv6hdr ip6;
			if (ld(ctx, kind, nfbase, off, &ip6, sizeof(ip6)))
				return LOC_NONE;
			if (ip6.version != 6)
				return LOC_NONE;
			nexthdr = ip6.nexthdr;
			l4_off = off + 40;
			l4_end = ip6.payload_len ? l4_off + bpf_ntohs(ip6.payload_len) : p->len;
			if (depth == 0) {
				p->ipver = 6;
				__builtin_memcpy(p->saddr, &ip6.saddr, 16);
				__builtin_memcpy(p->daddr, &ip6.daddr, 16);
			}
			/* bounded walk of extension headers */
#pragma unroll
			for (int e = 0; e < 6; e++) {
				if (nexthdr != 0 && nexthdr != 43 && nexthdr != 60 && nexthdr != 44 &&
				    nexthdr != 51)
					break;
				__u8 ext[8];
				if (ld(ctx, kind, nfbase, l4_off, ext, sizeof(ext)))
					return LOC_NONE;
				if (nexthdr == 44) {
					p->frag_id = (ext[4] << 24) | (ext[5] << 16) | (ext[6] << 8) | ext[7];
					p->frag_proto = ext[0];
					if (((ext[2] << 8) | ext[3]) & 0xfff8)
						return later_fragment(p, depth, 0, 0, 6);
					frag |= ext[3] & 1;
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
			if (egress && (nexthdr == 0 || nexthdr == 43 || nexthdr == 60 || nexthdr == 44 ||
				       nexthdr == 51)) {
				p->fail = F_DEEP_ENCAP; /* a seventh extension header */
				return LOC_FAIL;
			}
			stat(EG_S_IPV6);
		} else {
			return LOC_NONE;
		}
		if (l4_end > p->len)
			l4_end = p->len;
		if (frag && egress) {
			p->frag = 1;
			/* tiny first fragment (RFC 1858): the headers or the question lie in a later
			 * fragment that nothing here can read */
			if (l4_end < l4_off + EG_FRAG_MIN) {
				p->fail = F_FRAG;
				return LOC_FAIL;
			}
		}

		if (nexthdr == 4 || nexthdr == 41) {
			/* IPIP, SIT (IPv6 in IPv4), ip6tnl: the inner packet follows */
			proto = nexthdr == 4 ? P_IP : P_IPV6;
			off = l4_off;
			p->encap = EG_ENCAP_IPIP;
			continue;
		}
		if (nexthdr == 47) {
			__u8 g[4];
			if (ld(ctx, kind, nfbase, l4_off, g, sizeof(g)))
				return LOC_NONE;
			/* version 0 only; routing present (RFC 1701) is not followed */
			if ((g[1] & 7) || (g[0] & 0x40)) {
				if (egress) {
					p->fail = F_DEEP_ENCAP;
					return LOC_FAIL;
				}
				return LOC_NONE;
			}
			__u16 gp = (g[2] << 8) | g[3];
			off = l4_off + 4 + ((g[0] & 0x80) ? 4 : 0) + ((g[0] & 0x20) ? 4 : 0) +
			      ((g[0] & 0x10) ? 4 : 0);
			p->encap = EG_ENCAP_GRE;
			if (gp == P_TEB)
				proto = 0;
			else if (gp == P_IP || gp == P_IPV6)
				proto = gp;
			else if (egress) {
				p->fail = F_DEEP_ENCAP; /* MPLS, ERSPAN, PPP: not followed, not passed */
				return LOC_FAIL;
			} else
				return LOC_NONE;
			continue;
		}
		if (nexthdr == IPPROTO_UDP) {
			struct udphdr udp;
			if (ld(ctx, kind, nfbase, l4_off, &udp, sizeof(udp)))
				return LOC_NONE;
			p->sport = bpf_ntohs(udp.source);
			p->dport = bpf_ntohs(udp.dest);
			p->l4 = IPPROTO_UDP;
			__u32 pay = l4_off + 8;
			/* a tunnel port only means a tunnel when the header says so; even then the
			 * payload is also read as plain DNS (egress runs twice, PF_NO_UDP_ENCAP) */
			if (!(p->flags & PF_NO_UDP_ENCAP) &&
			    (p->dport == VXLAN_PORT || p->dport == VXLAN_LINUX_PORT)) {
				__u8 v[8];
				/* the I flag; group-policy (GBP) flags and fields may be set */
				if (!ld(ctx, kind, nfbase, pay, v, sizeof(v)) && (v[0] & 0x08) &&
				    !v[7]) {
					off = pay + 8;
					proto = 0;
					p->encap = EG_ENCAP_VXLAN;
					p->udp_encap = 1;
					continue;
				}
			}
			if (!(p->flags & PF_NO_UDP_ENCAP) && p->dport == GENEVE_PORT) {
				__u8 g[4];
				if (!ld(ctx, kind, nfbase, pay, g, sizeof(g)) && !(g[0] >> 6)) {
					__u16 gp = (g[2] << 8) | g[3];
					if (gp == P_TEB || gp == P_IP || gp == P_IPV6) {
						off = pay + 8 + (g[0] & 0x3f) * 4;
						proto = gp == P_TEB ? 0 : gp;
						p->encap = EG_ENCAP_GENEVE;
						p->udp_encap = 1;
						continue;
					}
				}
			}
			p->pay = pay;
			p->end = l4_end;
			return LOC_DNS;
		}
		if (nexthdr == IPPROTO_TCP) {
			struct tcphdr tcp;
			if (ld(ctx, kind, nfbase, l4_off, &tcp, sizeof(tcp)))
				return LOC_NONE;
			if (tcp.doff < 5)
				return LOC_NONE;
			p->sport = bpf_ntohs(tcp.source);
			p->dport = bpf_ntohs(tcp.dest);
			p->l4 = IPPROTO_TCP;
			p->urg = tcp.urg;
			p->syn = tcp.syn;
			p->seq = bpf_ntohl(tcp.seq);
			p->pay = l4_off + tcp.doff * 4;
			p->end = l4_end;
			return LOC_DNS;
		}
		return LOC_NONE;
	}
	/* still encapsulated where the walk ends: what is inside was never read */
	if (egress) {
		p->fail = F_DEEP_ENCAP;
		return LOC_FAIL;
	}
	return LOC_NONE;
}

struct gso_ctx {
	void *ctx;
	__u64 base;
	__u32 off, step, end;
	__u16 sport, dport;
	int found;
};

/* One segment of a UDP GSO super-packet: does it start with a DNS query? */
static __always_inline long gso_seg(struct gso_ctx *g, int kind)
{
	struct dnshdr h;
	if (g->off + sizeof(h) > g->end)
		return 1;
	if (ld(g->ctx, kind, (const void *)g->base, g->off, &h, sizeof(h)))
		return 1;
	if (hdr_kind(&h, g->sport, g->dport) != H_NONE) {
		g->found = 1;
		return 1;
	}
	g->off += g->step;
	return 0;
}

#define GSO_STEP(KIND, SUFFIX)                                                                   \
	static long gso_step_##SUFFIX(__u64 idx, void *data)                                     \
	{                                                                                        \
		return gso_seg(data, KIND);                                                      \
	}

/* Finds the transport payload and sorts it: LOC_DNS with the first DNS message at
 * dns_off (p->hk says plain or odd), LOC_NONE for what no DNS server would read as a query,
 * LOC_FAIL for what must not pass unjudged. Port 53 is the only port with a meaning: there,
 * a payload that is not a DNS query is malformed. No other port is trusted or special. */
static __always_inline int locate(void *ctx, int kind, const void *nfbase, struct pkt *p,
				  long (*gso_cb)(__u64, void *), int r)
{
	if (r != LOC_DNS)
		return r;
	__u32 plen = p->end > p->pay ? p->end - p->pay : 0;
	__u8 b[14];
	int have = plen >= 14 && !ld(ctx, kind, nfbase, p->pay, b, 14);
	int at53 = strict53(p, kind);

	if (p->l4 == IPPROTO_UDP) {
		__u16 segs = p->gso >> 16, size = p->gso & 0xffff;
		if (segs > 1) {
			/* every datagram of a GSO send leaves; no DNS client sends this way */
			if (at53 || segs > EG_GSO_SEGS || !size) {
				p->fail = F_GSO;
				return LOC_FAIL;
			}
			struct gso_ctx g = { .ctx = ctx, .base = (__u64)nfbase,
					     .off = p->pay, .step = size, .end = p->end,
					     .sport = p->sport, .dport = p->dport };
			bpf_loop(EG_GSO_SEGS, gso_cb, &g, 0);
			if (g.found) {
				p->fail = F_GSO;
				return LOC_FAIL;
			}
			return LOC_NONE;
		}
		p->hk = H_NONE;
		if (have) {
			__builtin_memcpy(&p->h, b, sizeof(p->h));
			p->hk = hdr_kind(&p->h, p->sport, p->dport);
		}
		if (p->frag && (p->hk != H_NONE || at53)) {
			p->fail = F_FRAG; /* no DNS query needs fragmenting */
			return LOC_FAIL;
		}
		if (p->hk == H_NONE) {
			if (at53 && plen) {
				p->fail = F_MALFORMED;
				return LOC_FAIL;
			}
			return LOC_NONE;
		}
		p->tcp = 0;
		p->dns_off = p->pay;
		p->dns_len = plen;
		return LOC_DNS;
	}

	/* TCP: segments of a DNS stream must be runs of whole length-prefixed messages. Urgent
	 * data is taken out of the stream by the receiver (no DNS server reads it inline): on a
	 * DNS stream it would shift what the server reads against what was judged. */
	if (p->urg && at53) {
		p->fail = F_TCP;
		return LOC_FAIL;
	}
	if (!plen)
		return LOC_NONE; /* SYN, ACK, FIN */
	p->hk = H_NONE;
	int bare = 0;
	if (have) {
		__builtin_memcpy(&p->h, &b[2], sizeof(p->h));
		p->hk = hdr_kind(&p->h, p->sport, edport(p, kind));
		struct dnshdr h0;
		__builtin_memcpy(&h0, b, sizeof(h0));
		bare = hdr_kind(&h0, p->sport, edport(p, kind)) != H_NONE;
	}
	if (p->frag && (p->hk != H_NONE || bare || at53)) {
		p->fail = F_FRAG;
		return LOC_FAIL;
	}
	if (p->hk == H_NONE || p->urg) {
		/* a port-53 stream at no message boundary, urgent data in a DNS-looking segment:
		 * cannot be judged, does not pass. Off port 53 a bare header alone is not enough
		 * to call a stream DNS (Kafka, for one, looks like it): such streams pass */
		if (at53 || (p->urg && (bare || p->hk != H_NONE))) {
			p->fail = F_TCP;
			return LOC_FAIL;
		}
		return LOC_NONE;
	}
	__u32 mlen = (b[0] << 8) | b[1];
	/* off port 53 a stream is DNS only when its segment opens with a whole message */
	if (!at53 && (mlen < 17 || 2 + mlen > plen))
		return LOC_NONE;
	p->tcp = 1;
	p->dns_off = p->pay + 2;
	p->dns_len = mlen;
	return LOC_DNS;
}

struct name_info {
	__u64 full_hash;   /* keyed hash of the exact name, type and class (allow cache) */
	__u64 parent_hash; /* same, without the first label */
	__u64 block_hash;  /* blocklisted suffix that matched, 0 if none */
	__u32 wire_len;    /* wire bytes before the root label */
	__u32 labels, max_label, digits, odd, upper, lower;
	__u32 extra;       /* message bytes after the question */
	__u32 msg_reasons; /* EG_R_ODD_MESSAGE / EG_R_EXTRA_DATA (msg_eval) */
	__u64 carrier;     /* keyed hash of the RD/AD/CD bits and the bytes after the question */
	__u16 qtype, qclass;
};

struct fwd_ctx {
	struct scratch *s;
	__u64 cur;         /* FNV-1a of the current label (length byte + bytes) */
	__u32 avail, next, end, labels, max_label, digits, odd, upper, lower;
	int done;
};

__noinline __u64 question_key(struct scratch *s, __u32 n);

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
	int lenbyte = i == f->next;
	/* the exact byte: a case variant is another question to the allow cache */
	s->exact[i] = c;
	if (lenbyte) {
		if (f->labels)
			s->lh[(f->labels - 1) & (EG_MAX_SUFFIXES - 1)] = f->cur;
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
	}
	if (!lenbyte) {
		if (c >= 'A' && c <= 'Z') {
			f->upper++;
			c += 32;
			s->name[i] = c;
		} else if (c >= 'a' && c <= 'z') {
			f->lower++;
		} else if (c >= '0' && c <= '9') {
			f->digits++;
		} else if (c != '-' && c != '_') {
			f->odd++;
		}
	}
	f->cur = (f->cur ^ c) * FNV_PRIME;
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

	struct fwd_ctx f = { .s = s, .avail = avail };
	bpf_loop(EG_NAME_MAX, fwd_step, &f, 0);
	if (!f.done)
		return -1;
	ni->labels = f.labels;
	ni->max_label = f.max_label;
	ni->digits = f.digits;
	ni->odd = f.odd;
	ni->upper = f.upper;
	ni->lower = f.lower;
	ni->wire_len = f.end;
	__u32 end = f.end & (EG_NAME_MAX - 1);

	__be16 qt[2];
	if (end + 1 + 4 > p->dns_len - 12)
		return -1;
	if (ld(ctx, kind, nfbase, qoff + end + 1, qt, sizeof(qt)))
		return -1;
	ni->qtype = bpf_ntohs(qt[0]);
	ni->qclass = bpf_ntohs(qt[1]);
	/* the allow cache holds exact questions: a name cleared for one type and class does
	 * not excuse the bits of any other asked of it */
	const __u8 *tb = (const __u8 *)qt;
#pragma unroll
	for (int i = 0; i < 4; i++)
		s->exact[(end + 1 + i) & (EG_QKEY_MAX - 1)] = tb[i];
	ni->full_hash = question_key(s, end + 5);
	__u32 used = 12 + end + 1 + 4;
	ni->extra = p->dns_len > used ? p->dns_len - used : 0;

	__u64 h = FNV_OFFSET;
	__u32 n = f.labels;
#pragma unroll
	for (__u32 j = 0; j < EG_MAX_SUFFIXES; j++) {
		if (j >= n)
			break;
		h = suffix_mix(h, s->lh[(n - 1 - j) & (EG_MAX_SUFFIXES - 1)]);
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
	if (cfg->hold_mixed_case && ni->upper && ni->lower)
		r |= EG_R_MIXED_CASE;
	return r;
}

/* What travels outside the question of a plain query. One OPT record with the options stub
 * resolvers send (COOKIE, ECS, NSID, EXPIRE, TCP keepalive) at their usual sizes passes;
 * padding (RFC 7830 is for encrypted transports, never seen here), unknown options, other
 * records, trailing bytes or more than hold_extra_bytes are EXTRA_DATA. */
static __always_inline int extra_ok(void *ctx, int kind, const void *nfbase, struct pkt *p,
				    struct name_info *ni, struct eg_config *cfg)
{
	if (!ni->extra)
		return !p->h.ar; /* an additional count with no record after the question: free */
	if (bpf_ntohs(p->h.ar) != 1 || ni->extra > cfg->hold_extra_bytes || ni->extra < 11)
		return 0;
	__u32 o = p->dns_off + 12 + ni->wire_len + 1 + 4;
	__u8 rr[11];
	if (ld(ctx, kind, nfbase, o, rr, sizeof(rr)))
		return 0;
	__u32 rdlen = (rr[9] << 8) | rr[10];
	if (rr[0] || rr[1] || rr[2] != 41 || rdlen != ni->extra - 11)
		return 0;
	/* the OPT TTL of a query: extended RCODE 0, version 0 (a server answers BADVERS to
	 * any other), flags DO and CO (RFC 3225, 9824) only: the rest are 30 free bits */
	if (rr[5] || rr[6] || (rr[7] & 0x3f) || rr[8])
		return 0;
	o += 11;
	__u32 end = o + rdlen, seen = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (o >= end)
			return 1;
		__u8 opt[4];
		if (o + 4 > end || ld(ctx, kind, nfbase, o, opt, sizeof(opt)))
			return 0;
		__u16 code = (opt[0] << 8) | opt[1], len = (opt[2] << 8) | opt[3];
		/* each option once: a second cookie is 8-40 more free bytes */
		if (code < 32 && (seen & (1u << code)))
			return 0;
		seen |= code < 32 ? 1u << code : 0;
		if (code == 10) { /* COOKIE: client 8, or client + server 16..40 */
			if (len != 8 && (len < 16 || len > 40))
				return 0;
		} else if (code == 8) {
			/* client subnet, as RFC 7871 has it and at most as precise as its section
			 * 11.1 asks (/24, /56): every byte of it reaches the server, and a resolver
			 * forwards it on */
			__u8 e[4], last = 0;
			if (len < 4 || len > 11 || ld(ctx, kind, nfbase, o + 4, e, sizeof(e)))
				return 0;
			__u8 src = e[2];
			if (e[0] || (e[1] != 1 && e[1] != 2) || e[3] || src > (e[1] == 1 ? 24 : 56) ||
			    len != 4 + (src + 7) / 8)
				return 0;
			/* the address bits past the prefix must be zero */
			if ((src & 7) && ld(ctx, kind, nfbase, o + 4 + len - 1, &last, 1))
				return 0;
			if (last & (0xff >> (src & 7)))
				return 0;
		} else if (code == 3 || code == 9 || code == 11) { /* NSID, EXPIRE, keepalive */
			if (len)
				return 0;
		} else {
			return 0;
		}
		o += 4 + len;
	}
	return o == end;
}

/* FNV-1a of the DNS message, the identity a release ticket is bound to. */
struct mh_ctx {
	struct scratch *s;
	__u32 len;
	__u64 h;
};

static long mh_step(__u64 idx, void *data)
{
	struct mh_ctx *m = data;
	if (idx >= m->len)
		return 1;
	m->h = (m->h ^ m->s->msg[idx & (EG_PKT_MAX - 1)]) * FNV_PRIME;
	return 0;
}

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL64(v1, 13);                                                               \
		v1 ^= v0;                                                                          \
		v0 = ROTL64(v0, 32);                                                               \
		v2 += v3;                                                                          \
		v3 = ROTL64(v3, 16);                                                               \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL64(v3, 21);                                                               \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL64(v1, 17);                                                               \
		v1 ^= v2;                                                                          \
		v2 = ROTL64(v2, 32);                                                               \
	} while (0)

/* SipHash-1-3 (as Rust's std hasher) of buf[0..n), n < size (a power of two, the buffer's
 * size), keyed (k0, k1). */
static __always_inline __u64 siphash13_in(__u64 k0, __u64 k1, const __u8 *buf, __u32 n,
					  __u32 size)
{
	__u64 v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	__u64 v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	__u32 words = n / 8;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < size / 8; i++) {
		if (i >= words)
			break;
		__u64 m;
		__builtin_memcpy(&m, buf + ((i * 8) & (size - 8)), 8);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	__u64 t, last = (__u64)(n & 0xff) << 56;
	__u32 rem = n & 7;
	__builtin_memcpy(&t, buf + ((words * 8) & (size - 8)), 8);
	if (rem)
		last |= t & ((1ULL << (rem * 8)) - 1);
	v3 ^= last;
	SIPROUND;
	v0 ^= last;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline __u64 siphash13(__u64 k0, __u64 k1, const __u8 *buf, __u32 n)
{
	return siphash13_in(k0, k1, buf, n, EG_CARRIER_MAX);
}

/* The key of a (client, server) address pair in s->pair: the key of eg_carriers, eg_scookies,
 * eg_pending and eg_forged. An answer's pair is (its destination, its source). */
static __always_inline void pair_key(struct scratch *s, const __u8 *client, const __u8 *server)
{
	__builtin_memcpy(s->pair.saddr, client, 16);
	__builtin_memcpy(s->pair.daddr, server, 16);
}

/* The SipHash key, drawn at first use by whichever program needs it first. */
static __always_inline struct eg_secret *secret(void)
{
	__u32 zero = 0;
	struct eg_secret *k = bpf_map_lookup_elem(&eg_secret, &zero);
	if (k && !k->k0 && !k->k1) {
		/* drawn once, never leaves the kernel: a sender cannot search offline for a
		 * carrier that collides with one pinned (FNV-1a can be inverted step by step);
		 * two CPUs drawing at once cost one more hold */
		k->k0 = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
		k->k1 = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
	}
	return k;
}

#define EG_NAME_DOMAIN (1ULL << 62) /* key tweak: question keys are not carrier hashes */

/* The allow cache's key of the question in s->exact[0..n): SipHash-1-3 under the programs'
 * own key. Unkeyed FNV-1a, first used, let a sender search offline for a tunnel name that
 * collides with a name the agent cleared (a lattice over the name's free bytes), and pass
 * with it unheld. A global function: verified once. */
__noinline __u64 question_key(struct scratch *s, __u32 n)
{
	struct eg_secret *k = secret();
	if (!s || !k || n >= EG_QKEY_MAX - 8)
		return 0;
	return siphash13_in(k->k0, k->k1 ^ EG_NAME_DOMAIN, s->exact, n, EG_QKEY_MAX);
}

/* The client part of a COOKIE option copied into s->cq: what a pending query and its answer
 * share. */
static __always_inline __u64 cc_of(const __u8 *cq)
{
	__u64 cc = 0;
#pragma clang loop unroll(disable)
	for (__u32 j = 0; j < 8; j++)
		cc = (cc << 8) | cq[j];
	return cc;
}

/* Whether a learnt cookie (EG_COOKIE_MAX bytes, zero-padded) of length `slot_len` is the one
 * in cq, `len` long: compared whole, a word at a time. */
static __always_inline int same_cookie(const __u8 *slot, __u32 slot_len, const __u8 *cq, __u32 len)
{
	const __u64 *l = (const __u64 *)slot, *q = (const __u64 *)cq;
	__u64 d = slot_len ^ len;
	d |= (l[0] ^ q[0]) | (l[1] ^ q[1]) | (l[2] ^ q[2]) | (l[3] ^ q[3]) | (l[4] ^ q[4]);
	return !d;
}

/* A query's COOKIE option (at s->msg + c, 16-40 bytes, s->pair set) that is one of the last
 * 4 its pair learnt from responses: its server part is zeroed in s->msg, so the carrier reads
 * no data in it. A global function: the loops are verified once, off the deep call chain's
 * stack. */
__noinline int cookie_echo(struct scratch *s, __u32 c, __u32 len, __u32 tag)
{
	if (!s || len < 8 || len > EG_COOKIE_MAX || !tag)
		return 0;
	/* zero-padded like the learnt ones, for a comparison a word at a time */
#pragma clang loop unroll(disable)
	for (__u32 j = 0; j < EG_COOKIE_MAX; j++)
		s->cq[j] = j < len ? s->msg[(c + 4 + j) & (EG_CARRIER_MAX - 1)] : 0;
	/* pending: the answer to this query may teach its server cookie */
	__u64 cc = cc_of(s->cq);
	struct eg_pending *pd = bpf_map_lookup_elem(&eg_pending, &s->pair);
	if (!pd) {
		__builtin_memset(&s->pending, 0, sizeof(s->pending));
		s->pending.cc[0] = cc;
		s->pending.tag[0] = tag;
		s->pending.next = 1;
		bpf_map_update_elem(&eg_pending, &s->pair, &s->pending, BPF_ANY);
	} else {
		int dup = 0;
#pragma clang loop unroll(disable)
		for (__u32 i = 0; i < EG_PENDING; i++)
			if (pd->tag[i] == tag && pd->cc[i] == cc)
				dup = 1; /* tc and the socket layer both see it */
		if (!dup) {
			__u32 j = pd->next & (EG_PENDING - 1);
			pd->cc[j] = cc;
			pd->tag[j] = tag;
			pd->next = j + 1;
		}
	}
	if (len < 16)
		return 0;
	struct eg_scookies *sc = bpf_map_lookup_elem(&eg_scookies, &s->pair);
	if (!sc)
		return 0;
	int echo = 0;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < EG_CARRIER_SLOTS; i++)
		echo |= same_cookie(sc->ck + i * EG_COOKIE_MAX, sc->len[i], s->cq, len);
	if (!echo)
		return 0;
	stat(EG_S_COOKIE_ECHOED);
#pragma clang loop unroll(disable)
	for (__u32 j = 8; j < EG_COOKIE_MAX; j++)
		if (j < len)
			s->msg[(c + 4 + j) & (EG_CARRIER_MAX - 1)] = 0;
	return 1;
}

/* The carrier of a plain query with an OPT record: RD/AD/CD and the bytes after the question
 * (UDP size, DO/CO, cookie, client subnet …), hashed (SipHash-1-3, eg_secret) into
 * ni->carrier, a server cookie that a response brought the pair (eg_scookies) as zeros.
 * Returns 1 when its (client, server) pair has not sent it lately (eg_carriers). The ID
 * stays free: clients draw it at random. */
static __always_inline int carrier_new(void *ctx, int kind, const void *nfbase, struct pkt *p,
				       struct scratch *s, struct name_info *ni)
{
	__u32 n = ni->extra;
	__u32 o = p->dns_off + 12 + ni->wire_len + 1 + 4;
	struct eg_secret *k = secret();
	ni->carrier = 0;
	/* extra_ok bounds the OPT to 11 bytes + 3 options (at most 74 bytes) */
	if (!k || n < 1 || n >= EG_CARRIER_MAX ||
	    ld(ctx, kind, nfbase, o, s->msg, ((n - 1) & (EG_CARRIER_MAX - 1)) + 1))
		return 1;
	pair_key(s, p->saddr, p->daddr);
	/* the COOKIE option among extra_ok's three; with a server part, was it sent to us? */
	__u32 c = 11, len = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (c + 4 > n)
			break;
		__u32 code = (s->msg[c & (EG_CARRIER_MAX - 1)] << 8) |
			     s->msg[(c + 1) & (EG_CARRIER_MAX - 1)];
		__u32 l = (s->msg[(c + 2) & (EG_CARRIER_MAX - 1)] << 8) |
			  s->msg[(c + 3) & (EG_CARRIER_MAX - 1)];
		if (code == 10) {
			if ((l == 8 || (l >= 16 && l <= 40)) && c + 4 + l <= n)
				len = l;
			break;
		}
		c += 4 + l;
	}
	if (len)
		cookie_echo(s, c, len, ((__u32)p->sport << 16) | bpf_ntohs(p->h.id));
	__u16 f = bpf_ntohs(p->h.flags) & 0x0130;
	__u64 h = siphash13(k->k0, k->k1 ^ f, s->msg, n);
	ni->carrier = h;
	struct eg_carriers *cs = bpf_map_lookup_elem(&eg_carriers, &s->pair);
	if (!cs)
		return 1;
	int seen = 0;
#pragma unroll
	for (int i = 0; i < EG_CARRIER_SLOTS; i++)
		if (cs->h[i] == h)
			seen = 1;
	return !seen;
}

/* Judges the message at p->dns_off as a query: the name (walk_name), then what it carries
 * outside the question. Returns 0, or -1 when no DNS server would take it for a query. */
static __always_inline int msg_eval(void *ctx, int kind, const void *nfbase, struct pkt *p,
				    struct name_info *ni)
{
	__u32 slot = kind;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	struct eg_config *cfg = get_config();
	if (!s || !cfg)
		return -1;
	if (walk_name(ctx, kind, nfbase, p, s, ni, 1))
		return -1;
	__u32 r = 0;
	if (p->hk == H_ODD) {
		/* off port 53 an odd header must at least carry a real class */
		__u16 c = ni->qclass;
		if (!strict53(p, kind) && c != 1 && c != 3 && c != 4 && c != 254 && c != 255)
			return -1;
		r |= EG_R_ODD_MESSAGE;
	} else if (ni->qclass != 1 && ni->qclass != 3 && ni->qclass != 255) {
		r |= EG_R_ODD_MESSAGE; /* a free 16-bit field: IN, CH, ANY are what clients ask */
	} else if (bpf_ntohs(p->h.flags) & Q_FREE_BITS) {
		/* AA, TC, RA, Z and RCODE are a response's or reserved: no client sets them in a
		 * query, so set they are 8 free bits a plain query would carry out unjudged */
		r |= EG_R_ODD_MESSAGE;
	} else if (!extra_ok(ctx, kind, nfbase, p, ni, cfg)) {
		r |= EG_R_EXTRA_DATA;
	}
	ni->msg_reasons = r;
	return 0;
}

static __always_inline __u64 msg_hash(void *ctx, int kind, const void *nfbase, struct pkt *p)
{
	__u32 slot = kind;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	__u32 n = p->dns_len;
	if (!s || n < 1 || n > EG_PKT_MAX)
		return 0;
	if (ld(ctx, kind, nfbase, p->dns_off, s->msg, ((n - 1) & (EG_PKT_MAX - 1)) + 1))
		return 0;
	struct mh_ctx m = { .s = s, .len = n, .h = FNV_OFFSET };
	bpf_loop(EG_PKT_MAX, mh_step, &m, 0);
	return m.h;
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
	ev->msg_len = p->dns_len;
	ev->extra_len = ni->extra;
	ev->msg_hash = 0;
	ev->carrier = ni->carrier;
	ev->frame_l3 = p->l3 != 0;
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

/* Copies a passed query (or an NXDOMAIN answer) to the observation ring. Returns -1 when the
 * ring is full: the caller decides (a query is then held unless fail_open). */
static __always_inline int observe(struct pkt *p, struct scratch *s, struct name_info *ni,
				   struct eg_proc *proc, __u64 cookie, __u32 ifindex, __u8 kind,
				   __u8 hook)
{
	struct eg_event *ev = bpf_ringbuf_reserve(&eg_observe, EG_OBS_SIZE, 0);
	if (!ev) {
		stat(EG_S_OBSERVE_FULL);
		return -1;
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
	return 0;
}

/* Everything egress() needs besides the context (a global function takes at most 5 args). */
struct eg_in {
	__u64 cookie;
	__u32 len, mark, ifindex, l3, hook, gso, flags;
};

enum verdict {
	V_PASS = 0,
	V_DROP = 1,
	V_ENCAP = 2, /* bit: a UDP tunnel header was read */
};

static __always_inline int fail_closed(struct eg_config *cfg, struct pkt *p)
{
	switch (p->fail) {
	case F_FRAG:
		stat(EG_S_FRAG_DROP);
		break;
	case F_DEEP_ENCAP:
		stat(EG_S_DEEP_ENCAP);
		break;
	case F_TCP:
		stat(EG_S_TCP_PARTIAL);
		break;
	case F_GSO:
		stat(EG_S_GSO_DROP);
		break;
	case F_USER_PAGES:
		stat(EG_S_USER_PAGES);
		break;
	default:
		stat(EG_S_MALFORMED);
		if (!cfg->drop_malformed53)
			return V_PASS;
		stat(EG_S_MALFORMED_DROP);
		break;
	}
	if (cfg->mode != EG_MODE_ENFORCE) {
		stat(EG_S_REPORT);
		return V_PASS;
	}
	return V_DROP;
}

/* carrier_new as global functions, one per kind (EG_PIECES): off the deepest call chain */
__noinline int carrier_new_skb(struct __sk_buff *ctx, __u64 base, struct pkt *p);
__noinline int carrier_new_sock(struct __sk_buff *ctx, __u64 base, struct pkt *p);
__noinline int carrier_new_nf(struct bpf_nf_ctx *ctx, __u64 base, struct pkt *p);
#define CARRIER_NEW(kind, ctx, base, p)                                                          \
	((kind) == K_NF	    ? carrier_new_nf(ctx, (__u64)(base), p)                              \
	 : (kind) == K_SOCK ? carrier_new_sock(ctx, (__u64)(base), p)                            \
			    : carrier_new_skb(ctx, (__u64)(base), p))

/* The decision for one query message (p->dns_off, ni and the scratch name filled by
 * msg_eval). `judge_only`: several messages in one TCP segment, so the segment is dropped and
 * the suspicious one handed over without the frame; TCP's retransmission passes once the
 * agent has cleared it. */
/* A full socket's owner as the socket itself knows it: its uid (sk_uid, the init namespace's
 * value, set when it was made), no process. */
static __always_inline struct eg_proc *socket_uid(int kind, struct sock *sk)
{
	__u32 slot = kind;
	struct eg_proc *r = bpf_map_lookup_elem(&eg_proc_tmp, &slot);
	if (!r || !sk)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	r->tgid = EG_TGID_SOCKET;
	r->uid = BPF_CORE_READ(sk, sk_uid.val);
	return r;
}

/* The socket's owner: its socket storage where the program type can read it (tc, the
 * socket layer), the cookie-keyed record at netfilter; a local socket no hook recorded
 * (AF_PACKET, older than the agent, an accepted child, a record evicted) is still its
 * uid's, never unattributed: unattributed is forwarded traffic, keyed by its source. */
static __always_inline struct eg_proc *proc_of(void *ctx, int kind, __u64 cookie)
{
	if (kind == K_NF) {
		struct eg_proc *r = cookie ? bpf_map_lookup_elem(&eg_socks, &cookie) : 0;
		if (r)
			return r;
		struct sock *sk = BPF_CORE_READ(((struct bpf_nf_ctx *)ctx)->skb, sk);
		if (!sk)
			return 0;
		/* time-wait (6) and request (12) sockets have no sk_uid */
		__u8 st = BPF_CORE_READ(sk, __sk_common.skc_state);
		return st == 6 || st == 12 ? 0 : socket_uid(kind, sk);
	}
	struct bpf_sock *bs = ((struct __sk_buff *)ctx)->sk;
	if (bs)
		bs = bpf_sk_fullsock(bs);
	if (!bs)
		return 0;
	struct eg_proc *r = bpf_sk_storage_get(&eg_sk, bs, 0, 0);
	if (r)
		return r;
	struct sk_buff *k = bpf_cast_to_kern_ctx(ctx);
	return socket_uid(kind, BPF_CORE_READ(k, sk));
}

static __always_inline int decide(void *ctx, int kind, const void *nfbase, struct eg_in *in,
				  struct pkt *p, struct name_info *ni, int judge_only)
{
	struct eg_config *cfg = get_config();
	__u32 slot = kind;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!cfg || !s)
		return V_DROP;
	int enforce = cfg->mode == EG_MODE_ENFORCE;
	__u64 cookie = in->cookie;
	__u8 hook = in->hook;
	__u32 len = in->len;

	/* a frame the agent released: its ticket names this exact message */
	if (in->mark && in->mark == cfg->release_mark) {
		struct eg_ticket t = { .msg_hash = msg_hash(ctx, kind, nfbase, p),
				       .dns_id = bpf_ntohs(p->h.id),
				       .msg_len = p->dns_len };
		__u64 *exp = bpf_map_lookup_elem(&eg_tickets, &t);
		if (exp) {
			if (bpf_ktime_get_ns() < *exp) {
				stat(EG_S_RELEASED);
				return V_PASS;
			}
			bpf_map_delete_elem(&eg_tickets, &t);
		}
	}

	struct eg_proc *proc = proc_of(ctx, kind, cookie);
	int fresh = 0; /* a carrier its pair has not sent lately */
	__u32 reasons = 0;
	__u8 action = EG_ACT_PASS;
	if (proc && bpf_map_lookup_elem(&eg_quarantine, &proc->tgid)) {
		reasons = EG_R_QUARANTINE;
		action = EG_ACT_QUARANTINE;
	} else if (ni->block_hash) {
		reasons = EG_R_BLOCKLIST;
		action = EG_ACT_BLOCK;
	} else {
		reasons = suspicion(cfg, ni) | ni->msg_reasons;
		if (ni->msg_reasons)
			stat(EG_S_ODD_MESSAGE);
		int plain = !reasons;
		/* the allow cache holds exact names: it never excuses what a message carries
		 * outside its question */
		int pass = plain ||
			   (!ni->msg_reasons && bpf_map_lookup_elem(&eg_allow, &ni->full_hash));
		/* an OPT its pair has not sent: named in the record, whatever else the query is,
		 * so the agent charges it to the pair. The agent pins it (eg_carriers) once the
		 * query goes out: a query it drops (over the budget, a convicted name) is held
		 * again when resent, so a repeat carries nothing the agent refused */
		if (!ni->msg_reasons && CARRIER_NEW(kind, ctx, nfbase, p)) {
			fresh = 1;
			stat(EG_S_NEW_CARRIER);
			reasons |= EG_R_NEW_CARRIER;
		}
		if (pass && fresh) {
			/* a name that would pass: held once for its carrier */
			reasons = EG_R_NEW_CARRIER;
			action = EG_ACT_HOLD;
		} else if (pass) {
			stat(plain ? EG_S_PASS_PLAIN : EG_S_PASS_ALLOW);
			if (!cfg->report_all) {
				if (!cfg->observe ||
				    !observe(p, s, ni, proc, cookie, in->ifindex, EG_KIND_QUERY, hook))
					return V_PASS;
				/* unobserved, the analytics would be blind to it */
				if (cfg->fail_open)
					return V_PASS;
				stat(EG_S_OBSERVE_HELD);
				reasons = EG_R_UNOBSERVED;
				action = EG_ACT_HOLD;
			} else {
				reasons = EG_R_REPORT_ALL;
			}
		} else {
			action = EG_ACT_HOLD;
		}
	}
	if (action == EG_ACT_HOLD && judge_only) {
		action = EG_ACT_JUDGE;
		reasons |= EG_R_MULTI;
	} else if (action == EG_ACT_HOLD && (in->flags & PF_FOREIGN)) {
		/* the agent cannot re-send into another namespace: judged without the frame,
		 * the client's retry passes once the exact name is cleared */
		action = EG_ACT_JUDGE;
	}

	if (!enforce && action != EG_ACT_PASS)
		action = EG_ACT_REPORT;
	if (action == EG_ACT_BLOCK)
		stat(EG_S_BLOCK);
	else if (action == EG_ACT_QUARANTINE)
		stat(EG_S_QUARANTINE);
	else if (action == EG_ACT_REPORT)
		stat(EG_S_REPORT);
	else if (action == EG_ACT_JUDGE)
		stat(EG_S_JUDGE);

	__u32 drops = 0;
	struct eg_quiet_key qk = {};
	if (action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE) {
		qk = (struct eg_quiet_key){
			.hash = action == EG_ACT_BLOCK ? ni->block_hash
						       : (__u64)(proc ? proc->tgid : 0),
			.cookie = cookie,
		};
		__u32 src[4];
		__builtin_memcpy(src, p->saddr, 16);
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
	if ((hold || action == EG_ACT_JUDGE) && !agent_alive()) {
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
		if (hold || action == EG_ACT_JUDGE) {
			/* cannot hand it over: fail closed unless told otherwise */
			stat(EG_S_FAILCLOSED);
			return cfg->fail_open ? V_PASS : V_DROP;
		}
		return (action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE) ? V_DROP : V_PASS;
	}
	fill_event(ev, p, s, ni, proc, cookie);
	ev->ifindex = in->ifindex;
	ev->reasons = reasons;
	ev->action = action;
	ev->kind = EG_KIND_QUERY;
	ev->hook = hook;
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
		ev->msg_hash = msg_hash(ctx, kind, nfbase, p);
		if (kind == K_SKB || kind == K_SOCK) {
			struct sk_buff *k = bpf_cast_to_kern_ctx(ctx);
			csum_meta(ev, k, p->l3 ? k->network_header : k->mac_header);
		} else if (kind == K_NF) {
			struct sk_buff *k = ((struct bpf_nf_ctx *)ctx)->skb;
			csum_meta(ev, k, k->network_header);
		}
		stat(EG_S_HOLD);
	}
	bpf_ringbuf_submit(ev, 0);
	if (action == EG_ACT_HOLD || action == EG_ACT_BLOCK || action == EG_ACT_QUARANTINE ||
	    action == EG_ACT_FAILCLOSED || action == EG_ACT_JUDGE)
		return V_DROP;
	return V_PASS;
}

/* The name_info of the message being judged, one slot per hook like eg_scratch: kept off
 * the stack, which three nested global functions would otherwise exceed (512 bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, K_SLOTS);
	__type(key, __u32);
	__type(value, struct name_info);
} eg_ni SEC(".maps");

/* Likewise the packet being judged. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, K_SLOTS);
	__type(key, __u32);
	__type(value, struct pkt);
} eg_pkt SEC(".maps");

static __always_inline struct name_info *ni_slot(int kind)
{
	__u32 slot = kind;
	return bpf_map_lookup_elem(&eg_ni, &slot);
}

/* Global (non-inlined) pieces: the verifier checks each once, on its own. */
#define EG_PIECES(KIND, CTX_T, SUFFIX)                                                           \
	GSO_STEP(KIND, SUFFIX)                                                                       \
	__noinline int find_l4_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p)                   \
	{                                                                                        \
		if (!p)                                                                          \
			return LOC_NONE;                                                         \
		int r = FAST_MISS;                                                               \
		if (!p->l3)                                                                      \
			r = find_l4_fast(ctx, KIND, (const void *)base, p);                      \
		return r != FAST_MISS ? r : find_l4(ctx, KIND, (const void *)base, p);           \
	}                                                                                        \
	__noinline int locate_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p, int r)             \
	{                                                                                        \
		if (!p)                                                                          \
			return LOC_NONE;                                                         \
		return locate(ctx, KIND, (const void *)base, p, gso_step_##SUFFIX, r);           \
	}                                                                                        \
	__noinline int msg_eval_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p)                  \
	{                                                                                        \
		struct name_info *ni = ni_slot(KIND);                                            \
		if (!p || !ni)                                                                   \
			return -1;                                                               \
		__builtin_memset(ni, 0, sizeof(*ni));                                            \
		return msg_eval(ctx, KIND, (const void *)base, p, ni);                           \
	}                                                                                        \
	__noinline int carrier_new_##SUFFIX(CTX_T *ctx, __u64 base, struct pkt *p)              \
	{                                                                                        \
		__u32 slot = KIND;                                                               \
		struct name_info *ni = ni_slot(KIND);                                            \
		struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);                     \
		struct eg_config *cfg = get_config();                                            \
		if (!p || !ni || !s || !cfg)                                                     \
			return 1;                                                                \
		if (!ni->extra || ni->msg_reasons || !cfg->pin_carriers)                         \
			return 0;                                                                \
		return carrier_new(ctx, KIND, (const void *)base, p, s, ni);                     \
	}                                                                                        \
	__noinline int decide_##SUFFIX(CTX_T *ctx, __u64 base, struct eg_in *in, struct pkt *p,  \
				       __u32 multi)                                              \
	{                                                                                        \
		struct name_info *ni = ni_slot(KIND);                                            \
		if (!in || !p || !ni)                                                            \
			return V_DROP;                                                           \
		return decide(ctx, KIND, (const void *)base, in, p, ni, multi);                  \
	}                                                                                        \
	__noinline int observe_q_##SUFFIX(CTX_T *ctx, struct eg_in *in, struct pkt *p)           \
	{                                                                                        \
		__u32 slot = KIND;                                                               \
		struct name_info *ni = ni_slot(KIND);                                            \
		struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);                     \
		if (!ctx || !in || !p || !ni || !s)                                              \
			return -1;                                                               \
		__u64 cookie = in->cookie;                                                       \
		struct eg_proc *proc = proc_of(ctx, KIND, cookie);                               \
		return observe(p, s, ni, proc, cookie, in->ifindex, EG_KIND_QUERY, in->hook);    \
	}

EG_PIECES(K_SKB, struct __sk_buff, skb)
EG_PIECES(K_SOCK, struct __sk_buff, sock)
EG_PIECES(K_NF, struct bpf_nf_ctx, nf)

/* find_l4 and locate are siblings, not caller and callee: the deepest chain of frames
 * (program, egress, find_l4) stays within the 512-byte stack */
#define FIND(kind, ctx, base, p)                                                                 \
	((kind) == K_NF	    ? find_l4_nf(ctx, base, p)                                           \
	 : (kind) == K_SOCK ? find_l4_sock(ctx, base, p)                                         \
			    : find_l4_skb(ctx, base, p))
#define LOC(kind, ctx, base, p, r)                                                               \
	((kind) == K_NF	    ? locate_nf(ctx, base, p, r)                                         \
	 : (kind) == K_SOCK ? locate_sock(ctx, base, p, r)                                       \
			    : locate_skb(ctx, base, p, r))
#define EVAL(kind, ctx, base, p)                                                                 \
	((kind) == K_NF	    ? msg_eval_nf(ctx, base, p)                                          \
	 : (kind) == K_SOCK ? msg_eval_sock(ctx, base, p)                                        \
			    : msg_eval_skb(ctx, base, p))
#define OBSERVE_Q(kind, ctx, in, p)                                                              \
	((kind) == K_NF	    ? observe_q_nf(ctx, in, p)                                           \
	 : (kind) == K_SOCK ? observe_q_sock(ctx, in, p)                                         \
			    : observe_q_skb(ctx, in, p))
#define DECIDE(kind, ctx, base, in, p, multi)                                                    \
	((kind) == K_NF	    ? decide_nf(ctx, base, in, p, multi)                                 \
	 : (kind) == K_SOCK ? decide_sock(ctx, base, in, p, multi)                               \
			    : decide_skb(ctx, base, in, p, multi))

/* The walk over the messages of one TCP segment (or TSO super-packet): a bpf_loop
 * callback, so the verifier checks one step, not sixteen. Each message must be whole and a
 * query; it is judged, the first to block or hold is picked, and a passing message before
 * the last goes to the analytics here (the last one in decide()). Kept small: this frame sits
 * between egress and msg_eval on the 512-byte stack. */
struct tcp_walk {
	void *ctx;
	__u64 base;
	struct eg_in *in;
	__u32 o, end, pick, n;
	__u8 picked_block, res;
};
enum { W_OK = 0, W_PARTIAL, W_NOT_DNS, W_UNOBSERVED };

#define TCP_STEP(KIND, SUFFIX)                                                                   \
	static long tcp_step_##SUFFIX(__u64 idx, void *data)                                     \
	{                                                                                        \
		struct tcp_walk *w = data;                                                       \
		__u32 slot = KIND;                                                               \
		struct pkt *p = bpf_map_lookup_elem(&eg_pkt, &slot);                             \
		struct name_info *ni = ni_slot(KIND);                                            \
		struct eg_config *cfg = get_config();                                            \
		__be16 l;                                                                        \
		if (w->o >= w->end)                                                              \
			return 1;                                                                \
		if (!p || !ni || !cfg || w->o + 14 > w->end ||                                   \
		    ld(w->ctx, KIND, (const void *)w->base, w->o, &l, 2) ||                      \
		    ld(w->ctx, KIND, (const void *)w->base, w->o + 2, &p->h, sizeof(p->h)))      \
			goto partial;                                                            \
		__u32 mlen = bpf_ntohs(l);                                                       \
		if (mlen < 17 || w->o + 2 + mlen > w->end)                                       \
			goto partial;                                                            \
		p->hk = hdr_kind(&p->h, p->sport, edport(p, KIND));                              \
		if (p->hk == H_NONE)                                                             \
			goto partial;                                                            \
		p->dns_off = w->o + 2;                                                           \
		p->dns_len = mlen;                                                               \
		if (EVAL(KIND, w->ctx, w->base, p)) {                                            \
			w->res = !w->n && !strict53(p, KIND) ? W_NOT_DNS : W_PARTIAL;            \
			return 1;                                                                \
		}                                                                                \
		w->n++;                                                                          \
		if (ni->block_hash && !w->picked_block) {                                        \
			w->pick = w->o;                                                          \
			w->picked_block = 1;                                                     \
		} else if (!w->pick && (suspicion(cfg, ni) | ni->msg_reasons) &&                 \
			   (ni->msg_reasons || !bpf_map_lookup_elem(&eg_allow, &ni->full_hash))) { \
			w->pick = w->o;                                                          \
		} else if (!w->pick && CARRIER_NEW(KIND, w->ctx, w->base, p)) {                  \
			w->pick = w->o;                                                          \
		} else if (!w->pick && !ni->block_hash && w->o + 2 + mlen < w->end &&            \
			   cfg->observe && !cfg->report_all && OBSERVE_Q(KIND, w->ctx, w->in, p) &&      \
			   !cfg->fail_open && cfg->mode == EG_MODE_ENFORCE) {                    \
			/* the ring full: the segment waits for TCP's retransmission rather   \
			 * than pass with a message unseen */                                    \
			w->res = W_UNOBSERVED;                                                   \
			return 1;                                                                \
		}                                                                                \
		w->o += 2 + mlen;                                                                \
		return 0;                                                                        \
	partial:                                                                                 \
		w->res = W_PARTIAL;                                                              \
		return 1;                                                                        \
	}
TCP_STEP(K_SKB, skb)
TCP_STEP(K_SOCK, sock)
TCP_STEP(K_NF, nf)
#define TCP_CB(kind) ((kind) == K_NF ? tcp_step_nf : (kind) == K_SOCK ? tcp_step_sock : tcp_step_skb)

/* TCP streams off port 53, at the socket layer: the kernel follows each stream's framing as
 * a resolver reads it (2-byte length, message, next length...) and learns every frame's first
 * 14 bytes (length prefix + DNS header), wherever the sender cut them. The first frame that
 * is a DNS message makes the stream DNS: it is then held to port 53's rules for its life.
 * Without it a resolver on another port (5353, 443: public resolvers listen there) took a
 * query cut at an odd offset, since no segment of it looked like DNS on its own; and a stream
 * led by a frame no query looks like (opcode 7, five questions, random bytes), which the
 * resolvers tried answer with an error and keep reading after, was never followed at all. */
#define FLOW_HEAD 14
/* frame heads looked at in one segment: a hostile stream of 3-byte frames meets the end */
#define FLOW_FRAMES 2048
enum flow_state { FLOW_LEARN = 1, FLOW_DNS = 2, FLOW_OTHER = 3, FLOW_BROKEN = 4 };
struct eg_flow {
	__u32 isn;    /* the stream this state is for: a socket can connect again */
	__u32 at;     /* stream offset of the frame whose head is learnt */
	__u8 state;
	__u8 _p;
	__u16 filled; /* bit i: byte i of that frame seen */
	__u8 head[2 * FLOW_HEAD]; /* its first 14 bytes; room past them so any load fits */
};
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct eg_flow);
} eg_flows SEC(".maps");

/* The start of a DNS/TCP stream as a resolver reads it: a length that holds a question and a
 * header with exactly one question and few records — a query (QUERY, IQUERY, STATUS, NOTIFY,
 * UPDATE), or a response leading the queries after it. One question and small counts keep
 * other protocols out: TLS, HTTP/1 and /2, SSH, SMTP, Postgres, MySQL, Redis, MQTT, AMQP,
 * Kafka, SMB, LDAP, MongoDB, RDP, memcached and Cassandra fail it on their first bytes. */
static __always_inline int dns_head(const __u8 *b)
{
	struct dnshdr h;
	__builtin_memcpy(&h, &b[2], sizeof(h));
	__u16 fl = bpf_ntohs(h.flags);
	__u8 op = (fl >> 11) & 0xf;
	if (((b[0] << 8) | b[1]) < 17 || bpf_ntohs(h.qd) != 1 || bpf_ntohs(h.an) > 8 ||
	    bpf_ntohs(h.ns) > 8 || bpf_ntohs(h.ar) > 8)
		return 0;
	return (fl >> 15) ? op == 0 : op <= 5 && op != 3;
}

struct flow_walk {
	struct __sk_buff *skb;
	struct eg_flow *f;
	__u32 off, plen, pay;
	int res; /* as tcp_flow's; 2 while frames remain */
};

/* One frame head of a followed stream: learn the bytes of it this segment holds, and when it
 * is whole decide (DNS from here) or step over the frame to the next. */
static long flow_step(__u64 idx, void *data)
{
	struct flow_walk *w = data;
	struct eg_flow *f = w->f;
	if (!f)
		return 1;
	__s32 d = f->at - w->off; /* the frame's start, from this segment's first byte */
	if (d >= (__s32)w->plen) {
		w->res = 0; /* it starts after this segment: all here belongs to frames stepped over */
		return 1;
	}
	__u32 from = d > 0 ? d : 0;   /* first byte of the head in this segment */
	__u32 skip = d < 0 ? -d : 0;  /* head bytes that came before it */
	__u32 n = skip < FLOW_HEAD ? FLOW_HEAD - skip : 0;
	if (n > w->plen - from)
		n = w->plen - from;
	if (skip < FLOW_HEAD && n >= 1 && n <= FLOW_HEAD) {
		/* straight into the head, at its offset: no byte loop for the verifier to walk */
		if (bpf_skb_load_bytes(w->skb, w->pay + from, &f->head[skip], n)) {
			w->res = -1;
			return 1;
		}
		f->filled |= ((1 << n) - 1) << skip;
	}
	if (f->filled != (1 << FLOW_HEAD) - 1) {
		/* the rest of the head comes in a later segment, unless this one reaches past it:
		 * then bytes of it went by unseen (sent while no agent ran) and it is not followable */
		if (skip + n >= FLOW_HEAD)
			f->state = FLOW_OTHER;
		w->res = 0;
		return 1;
	}
	if (dns_head(f->head)) {
		stat(EG_S_TCP_FLOW);
		if (!d && w->plen >= FLOW_HEAD) {
			/* the message starts this segment: judged from here on, like port 53 */
			f->state = FLOW_DNS;
			w->res = 1;
			return 1;
		}
		/* its first bytes passed in an earlier segment (or behind other frames in this
		 * one): it can never be judged whole, nor the framing after it trusted */
		f->state = FLOW_BROKEN;
		w->res = -1;
		return 1;
	}
	__u32 len = (f->head[0] << 8) | f->head[1];
	if (!len) {
		/* a zero length: every resolver tried (Unbound, PowerDNS Recursor, BIND, dnsmasq,
		 * dnsdist) drops the connection on it, so nothing after it is read as DNS */
		f->state = FLOW_OTHER;
		w->res = 0;
		return 1;
	}
	f->at += 2 + len;
	f->filled = 0;
	return 0;
}

/* 1: a DNS stream (p->dns_flow); 0: not, or not known (a socket older than the agent);
 * -1: this segment must not pass (a DNS message in it cannot be judged whole). */
__noinline int tcp_flow(struct __sk_buff *skb, struct pkt *p)
{
	if (!skb || !p)
		return 0;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	sk = bpf_sk_fullsock(sk);
	if (!tp || !sk)
		return 0;
	/* snd_una - bytes_acked is the SYN's sequence number (bytes_acked counts the SYN once
	 * acked): the stream offset of this segment's first byte, with no SYN seen here */
	__u32 isn = BPF_CORE_READ(tp, snd_una) - (__u32)BPF_CORE_READ(tp, bytes_acked);
	__u32 off = p->seq + p->syn - isn - 1;
	__u32 plen = p->end - p->pay;
	struct eg_flow *f = bpf_sk_storage_get(&eg_flows, sk, 0, 0);
	if (!f || f->isn != isn) {
		/* a new stream: the socket's first, or it connected again */
		if (off >= FLOW_HEAD) {
			if (f)
				f->state = FLOW_OTHER;
			return 0; /* its head was seen whole and was not followed (or predates the agent) */
		}
		if (!off && plen >= FLOW_HEAD) {
			/* the common case: the first segment holds the head; a zero length (Kafka,
			 * Postgres: 4-byte lengths) ends the stream's following at once, no state */
			__u8 b[2];
			if (bpf_skb_load_bytes(skb, p->pay, b, 2))
				return -1;
			if (!b[0] && !b[1]) {
				if (f) {
					f->isn = isn;
					f->state = FLOW_OTHER;
				}
				return 0;
			}
		}
		if (!f)
			f = bpf_sk_storage_get(&eg_flows, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!f)
			return -1; /* no memory to follow the stream: it does not pass */
		f->isn = isn;
		f->at = 0;
		f->filled = 0;
		f->state = FLOW_LEARN;
	}
	if (f->state == FLOW_DNS)
		return 1;
	if (f->state == FLOW_BROKEN)
		return off ? -1 : 1; /* a retransmission from the start is judged whole */
	if (f->state != FLOW_LEARN)
		return 0;
	/* urgent data in a followed stream: a resolver takes the byte out of what it reads,
	 * shifting its framing against the one followed here (telnet's and FTP's interrupts
	 * pay for this off port 53) */
	if (p->urg)
		return -1;
	struct flow_walk w = { .skb = skb, .f = f, .off = off, .plen = plen, .pay = p->pay,
			       .res = 2 };
	bpf_loop(FLOW_FRAMES, flow_step, &w, 0);
	if (w.res == 2) {
		/* more frames in one segment than are looked at: the framing is lost, so the
		 * stream passes nothing more */
		f->state = FLOW_BROKEN;
		return -1;
	}
	return w.res;
}

/* A stream's state, changed outside tcp_flow. FLOW_BROKEN: a followed stream whose segment
 * was dropped after its frames were stepped over, when the retransmission can differ (pages
 * the sender rewrites); no segment of it passes any more. 0: a SYN, so a socket that connects
 * again starts afresh even if its new ISN equals the old one (connect(AF_UNSPEC) after 4 GiB). */
__noinline int flow_set(struct __sk_buff *skb, int state)
{
	if (!skb)
		return 0;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	if (!state) {
		bpf_sk_storage_delete(&eg_flows, sk);
		return 0;
	}
	struct eg_flow *f = bpf_sk_storage_get(&eg_flows, sk, 0, 0);
	if (f && f->state == FLOW_LEARN)
		f->state = state;
	return 0;
}

/* Page fragments the sender still owns (MSG_ZEROCOPY) or shares (vmsplice + splice): what
 * was judged here can be rewritten before the device reads it. No DNS client sends this way;
 * a held frame is a copy, so holding would be safe, but there is nothing to hold it for. */
static __always_inline int user_pages(void *ctx)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(ctx);
	struct skb_shared_info *sh = (struct skb_shared_info *)(k->head + k->end);
	return BPF_CORE_READ(sh, flags) & 3; /* SKBFL_ZEROCOPY_ENABLE | SKBFL_SHARED_FRAG */
}

/* One packet: locate the DNS message(s), judge each, decide. UDP carries one message; a TCP
 * segment (or TSO super-packet) a run of up to EG_TCP_MSGS whole ones. */
/* A local socket's frame from port 53 (an answer, or a forged one): its pair learns no
 * server cookie for a while (eg_forged). A global function, checked once: a branch here
 * cost the tc program 48 k verified instructions. */
__noinline int forged_mark(struct pkt *p, __u64 cookie)
{
	__u32 slot = K_SKB;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!p || !s || !cookie || p->sport != 53 || p->encap ||
	    (p->l4 != IPPROTO_UDP && p->l4 != IPPROTO_TCP))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	pair_key(s, p->daddr, p->saddr);
	bpf_map_update_elem(&eg_forged, &s->pair, &now, BPF_ANY);
	return 1;
}

static __always_inline int egress(void *ctx, int kind, __u64 base, struct eg_in *in)
{
	__u32 slot = kind;
	struct pkt *p = bpf_map_lookup_elem(&eg_pkt, &slot);
	if (!p)
		return V_DROP;
	/* fk is written whole before each use: only what comes before it is cleared */
	__builtin_memset(p, 0, __builtin_offsetof(struct pkt, fk));
	p->len = in->len;
	p->l3 = in->l3;
	p->flags = in->flags | PF_EGRESS;
	p->gso = in->gso;
	int r = FIND(kind, ctx, base, p);
	if (kind == K_SOCK && r == LOC_DNS && p->l4 == IPPROTO_TCP && !p->encap && p->dport != 53 &&
	    p->end > p->pay) {
		int f = tcp_flow(ctx, p);
		if (f < 0) {
			p->fail = F_TCP;
			r = LOC_FAIL;
		} else {
			p->dns_flow = f;
		}
	} else if (kind == K_SOCK && r == LOC_DNS && p->l4 == IPPROTO_TCP && !p->encap && p->syn) {
		flow_set(ctx, 0);
	}
	if (kind == K_SKB && p->sport == 53)
		forged_mark(p, in->cookie);
	r = LOC(kind, ctx, base, p, r);
	if (r == LOC_DNS && (kind == K_SKB || kind == K_SOCK) && user_pages(ctx)) {
		p->fail = F_USER_PAGES;
		r = LOC_FAIL;
		/* a followed stream has stepped over this segment's frames already, and its
		 * retransmission comes from the same pages, rewritten at will: it ends here */
		if (kind == K_SOCK && p->l4 == IPPROTO_TCP && !p->encap && p->dport != 53)
			flow_set(ctx, FLOW_BROKEN);
	}
	int enc = p->udp_encap ? V_ENCAP : 0;
	if (r == LOC_NONE) {
		stat(EG_S_NON_DNS);
		return V_PASS | enc;
	}
	struct eg_config *cfg = get_config();
	if (!cfg)
		return V_DROP;
	if (r == LOC_FAIL)
		return fail_closed(cfg, p) | enc;
	stat(EG_S_DNS_QUERIES);
	if (p->tcp)
		stat(EG_S_TCP_DNS);
	if (p->encap == EG_ENCAP_VXLAN)
		stat(EG_S_VXLAN);
	else if (p->encap == EG_ENCAP_GENEVE)
		stat(EG_S_GENEVE);
	else if (p->encap)
		stat(EG_S_ENCAP);

	if (!p->tcp) {
		if (EVAL(kind, ctx, base, p)) {
			/* a plain query header whose question this walk cannot read (compression
			 * pointers, bad labels): a server may still read it, so it does not pass */
			if (p->dport != 53 && p->hk != H_PLAIN) {
				stat(EG_S_NON_DNS);
				return V_PASS | enc;
			}
			p->fail = F_MALFORMED;
			return fail_closed(cfg, p) | enc;
		}
		return DECIDE(kind, ctx, base, in, p, 0) | enc;
	}

	/* TCP: every message whole inside the segment, each judged (tcp_step); the first that
	 * needs a decision decides (block beats judgement) */
	struct tcp_walk w = { .ctx = ctx, .base = base, .in = in, .o = p->pay, .end = p->end };
	bpf_loop(EG_TCP_MSGS, TCP_CB(kind), &w, 0);
	if (w.res == W_NOT_DNS) {
		/* off port 53, a first message that is no query: not a DNS stream */
		stat(EG_S_NON_DNS);
		return V_PASS | enc;
	}
	if (w.res == W_UNOBSERVED) {
		stat(EG_S_OBSERVE_HELD);
		return V_DROP | enc;
	}
	if (w.res || !w.n || w.o < w.end)
		goto partial; /* a cut message, or more messages than judged here */
	__u32 pick = w.pick;
	if (pick && pick + 2 != p->dns_off) {
		__be16 l;
		if (ld(ctx, kind, (const void *)base, pick, &l, 2) ||
		    ld(ctx, kind, (const void *)base, pick + 2, &p->h, sizeof(p->h)))
			goto partial;
		p->hk = hdr_kind(&p->h, p->sport, edport(p, kind));
		p->dns_off = pick + 2;
		p->dns_len = bpf_ntohs(l);
		if (EVAL(kind, ctx, base, p))
			goto partial;
	}
	/* nothing picked: every message plain or cleared, the last one decides (and is observed) */
	return DECIDE(kind, ctx, base, in, p, pick && w.n > 1) | enc;
partial:
	p->fail = F_TCP;
	return fail_closed(cfg, p) | enc;
}

/* The verdict on a first fragment, for its later fragments. */
static __always_inline int frag_note(int kind, int v)
{
	__u32 slot = kind;
	struct pkt *p = bpf_map_lookup_elem(&eg_pkt, &slot);
	if (p && p->frag && p->ipver) {
		frag_key_of(&p->fk, p);
		__u64 val = (v & V_DROP) ? 2 : 1;
		bpf_map_update_elem(&eg_frags, &p->fk, &val, BPF_ANY);
	}
	return v;
}

__noinline int egress_skb(struct __sk_buff *ctx, __u64 base, struct eg_in *in)
{
	return frag_note(K_SKB, in ? egress(ctx, K_SKB, base, in) : V_PASS);
}

__noinline int egress_sock(struct __sk_buff *ctx, __u64 base, struct eg_in *in)
{
	return frag_note(K_SOCK, in ? egress(ctx, K_SOCK, base, in) : V_PASS);
}

__noinline int egress_nf(struct bpf_nf_ctx *ctx, __u64 base, struct eg_in *in)
{
	return frag_note(K_NF, in ? egress(ctx, K_NF, base, in) : V_PASS);
}

/* Runs the decision; a payload on a VXLAN/GENEVE port that passed as a tunnel is judged
 * again as plain DNS, since a server on that port reads it that way. */
#define RUN_EGRESS(SUFFIX, ctx, base, in)                                                        \
	({                                                                                       \
		int v_ = egress_##SUFFIX(ctx, base, in);                                         \
		if ((v_ & V_ENCAP) && !(v_ & V_DROP)) {                                          \
			(in)->flags |= PF_NO_UDP_ENCAP;                                          \
			v_ = egress_##SUFFIX(ctx, base, in);                                     \
		}                                                                                \
		v_ & V_DROP;                                                                     \
	})

/* The link layer the tc program sees: none on tun, wireguard, ipip, gre (no header_ops). */
static __always_inline __u16 tc_l3(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	if (BPF_CORE_READ(k, dev, header_ops))
		return 0;
	stat(EG_S_L3_DEV);
	/* the version nibble, not the protocol the sender declared: a userspace VPN routes
	 * by the nibble, and AF_PACKET lets the sender declare anything */
	__u8 v = 0;
	if (bpf_skb_load_bytes(skb, 0, &v, 1))
		return bpf_ntohs(skb->protocol);
	return (v >> 4) == 6 ? P_IPV6 : (v >> 4) == 4 ? P_IP : bpf_ntohs(skb->protocol);
}

SEC("tc")
int eg_tc_egress(struct __sk_buff *skb)
{
	stat(EG_S_PACKETS);
	struct eg_in in = {
		.cookie = bpf_get_socket_cookie(skb),
		.len = skb->len,
		.mark = skb->mark,
		.ifindex = skb->ifindex,
		.l3 = tc_l3(skb),
		.hook = EG_HOOK_TC,
		.gso = skb->gso_segs > 1 ? (skb->gso_segs << 16) | (skb->gso_size & 0xffff) : 0,
	};
	return RUN_EGRESS(skb, skb, 0, &in) ? EG_TC_DROP : EG_TC_NEXT;
}

/* The socket layer: every packet a local socket sends, in any cgroup, before it meets a
 * device, a route, a VPN or an encapsulation (cgroup_skb egress runs in ip_finish_output,
 * ahead of fragmentation and GSO). Return 2 drops without an error to the sender (NET_XMIT_CN
 * semantics), so a held UDP query looks lost, and TCP retransmits. */
SEC("cgroup_skb/egress")
int eg_sock_egress(struct __sk_buff *skb)
{
	stat(EG_S_SOCK_PACKETS);
	struct eg_config *cfg = get_config();
	if (!cfg || cfg->sock_scope == EG_SCOPE_OFF)
		return 1;
	__u32 flags = 0;
	if (cfg->netns_cookie) {
		struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
		if (BPF_CORE_READ(k, dev, nd_net.net, net_cookie) != cfg->netns_cookie) {
			if (cfg->sock_scope == EG_SCOPE_NETNS)
				return 1;
			flags = PF_FOREIGN;
		}
	}
	__u16 l3 = bpf_ntohs(skb->protocol);
	if (l3 != P_IP && l3 != P_IPV6)
		return 1;
	struct eg_in in = {
		.cookie = bpf_get_socket_cookie(skb),
		.len = skb->len,
		.mark = skb->mark,
		.ifindex = skb->ifindex,
		.l3 = l3,
		.hook = EG_HOOK_SOCK,
		.gso = skb->gso_segs > 1 ? (skb->gso_segs << 16) | (skb->gso_size & 0xffff) : 0,
		.flags = flags,
	};
	return RUN_EGRESS(sock, skb, 0, &in) ? 2 : 1;
}

SEC("netfilter")
int eg_netfilter(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	const void *base = BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
	struct sock *sk = BPF_CORE_READ(skb, sk);
	struct net_device *dev = BPF_CORE_READ(ctx->state, out);
	struct eg_in in = {
		.cookie = sk ? BPF_CORE_READ(sk, __sk_common.skc_cookie.counter) : 0,
		.len = BPF_CORE_READ(skb, len),
		.mark = BPF_CORE_READ(skb, mark),
		.ifindex = dev ? BPF_CORE_READ(dev, ifindex) : 0,
		.l3 = ctx->state->pf == 10 /* NFPROTO_IPV6 */ ? P_IPV6 : P_IP,
		.hook = EG_HOOK_NETFILTER,
	};
	stat(EG_S_NF_PACKETS);
	__u32 zero = 0;
	__u32 *lin = bpf_map_lookup_elem(&eg_nflin, &zero);
	if (!lin)
		return EG_NF_DROP;
	*lin = in.len - BPF_CORE_READ(skb, data_len);
	return RUN_EGRESS(nf, ctx, (__u64)base, &in) ? EG_NF_DROP : EG_NF_ACCEPT;
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

/* The response at the transport payload: UDP, or the first message of a TCP segment. */
__noinline int find_resp_xdp(struct xdp_md *ctx, struct pkt *p)
{
	if (!p)
		return 0;
	int r = find_l4_fast(ctx, K_XDP, 0, p);
	if (r == FAST_MISS)
		r = find_l4(ctx, K_XDP, 0, p);
	if (r != LOC_DNS)
		return 0;
	if (p->l4 == IPPROTO_UDP) {
		p->dns_off = p->pay;
		p->dns_len = p->end > p->pay ? p->end - p->pay : 0;
	} else {
		__be16 mlen;
		if (p->pay + 2 + 12 > p->end || ld(ctx, K_XDP, 0, p->pay, &mlen, 2))
			return 0;
		p->tcp = 1;
		p->dns_off = p->pay + 2;
		p->dns_len = p->end - p->dns_off;
		if (bpf_ntohs(mlen) < p->dns_len)
			p->dns_len = bpf_ntohs(mlen);
	}
	if (p->dns_len < 17 || ld(ctx, K_XDP, 0, p->dns_off, &p->h, sizeof(p->h)))
		return 0;
	return resp_sane(&p->h);
}

__noinline int walk_name_xdp(struct xdp_md *ctx, struct pkt *p, struct name_info *ni)
{
	__u32 slot = K_XDP;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!p || !ni || !s)
		return -1;
	return walk_name(ctx, K_XDP, 0, p, s, ni, 1);
}

/* The walk over a response's records to its OPT: one record a step (bpf_loop). */
struct rr_walk {
	struct xdp_md *ctx;
	__u32 o, end, left, opt, optlen;
};

static long rr_step(__u64 idx, void *data)
{
	struct rr_walk *w = data;
	__u32 o = w->o;
	__u8 f[10];
	if (!w->left)
		return 1;
	w->left--;
	/* the owner name: labels, then the root or a compression pointer */
	for (int i = 0; i < 128; i++) {
		__u8 b;
		if (o >= w->end || bpf_xdp_load_bytes(w->ctx, o, &b, 1))
			return 1;
		if (!b) {
			o += 1;
			break;
		}
		if ((b & 0xc0) == 0xc0) {
			o += 2;
			break;
		}
		if ((b & 0xc0) || i == 127)
			return 1;
		o += 1 + b;
	}
	if (o + 10 > w->end || bpf_xdp_load_bytes(w->ctx, o, f, sizeof(f)))
		return 1;
	__u32 rdlen = (f[8] << 8) | f[9];
	if (f[0] == 0 && f[1] == 41) {
		w->opt = o + 10;
		w->optlen = rdlen;
		return 1;
	}
	w->o = o + 10 + rdlen;
	return 0;
}

/* Learns the server cookie an answer from port 53 brings its client (eg_scookies, keyed
 * client, server), when it answers a pending query (eg_pending) of a pair no local socket
 * forged answers for (eg_forged): the client may echo it in later queries for free. An
 * answer it cannot walk teaches nothing, and the client's next query is a new carrier, held
 * once. */
__noinline int learn_cookie_xdp(struct xdp_md *ctx, struct pkt *p, struct name_info *ni)
{
	__u32 slot = K_XDP;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	/* servers answer from port 53, in plain IP: a tunnelled answer is keyed on its outer
	 * addresses, and tc marks no pair for one a local sender forged (found in review);
	 * an Ethernet frame (XDP on an L3 device parses nothing) */
	if (!ctx || !p || !ni || !s || !p->h.ar || p->sport != 53 || p->encap)
		return 0;
	__u32 n = bpf_ntohs(p->h.an) + bpf_ntohs(p->h.ns) + bpf_ntohs(p->h.ar);
	struct rr_walk w = { .ctx = ctx, .o = p->dns_off + 12 + ni->wire_len + 1 + 4,
			     .end = p->dns_off + p->dns_len, .left = n };
	bpf_loop(64, rr_step, &w, 0);
	if (!w.opt || w.opt + w.optlen > w.end)
		return 0;
	__u32 o = w.opt, end = w.opt + w.optlen;
	for (int i = 0; i < 8; i++) {
		__u8 opt[4];
		if (o + 4 > end || bpf_xdp_load_bytes(ctx, o, opt, sizeof(opt)))
			return 0;
		__u32 code = (opt[0] << 8) | opt[1], len = (opt[2] << 8) | opt[3];
		if (code != 10) {
			o += 4 + len;
			continue;
		}
		if (len < 16 || len > EG_COOKIE_MAX || o + 4 + len > end)
			return 0;
		/* keyed as the client's queries are: (client, server) */
		pair_key(s, p->daddr, p->saddr);
		__u64 *f = bpf_map_lookup_elem(&eg_forged, &s->pair);
		if (f && bpf_ktime_get_ns() - *f < EG_FORGED_NS) {
			stat(EG_S_COOKIE_FORGED);
			return 0;
		}
		__builtin_memset(s->cq, 0, EG_COOKIE_MAX);
		if (bpf_xdp_load_bytes(ctx, o + 4, s->cq, len))
			return 0;
		const __u64 *q = (const __u64 *)s->cq;
		/* the answer to a query the pair sent: its port, id and client cookie, once */
		__u64 cc = cc_of(s->cq);
		__u32 tag = ((__u32)p->dport << 16) | bpf_ntohs(p->h.id);
		struct eg_pending *pd = bpf_map_lookup_elem(&eg_pending, &s->pair);
		int asked = 0;
		if (pd) {
#pragma clang loop unroll(disable)
			for (__u32 i = 0; i < EG_PENDING; i++)
				if (!asked && tag && pd->tag[i] == tag && pd->cc[i] == cc) {
					pd->tag[i] = 0;
					asked = 1;
				}
		}
		if (!asked) {
			stat(EG_S_COOKIE_UNASKED);
			return 0;
		}
		struct eg_scookies *c = bpf_map_lookup_elem(&eg_scookies, &s->pair);
		if (!c) {
			__builtin_memset(&s->scookies, 0, sizeof(s->scookies));
			__builtin_memcpy(s->scookies.ck, s->cq, EG_COOKIE_MAX);
			s->scookies.len[0] = len;
			s->scookies.next = 1;
			bpf_map_update_elem(&eg_scookies, &s->pair, &s->scookies, BPF_ANY);
		} else {
			/* the newest again (BIND's within a second): kept once, so 4 slots are 4
			 * cookies */
			__u32 last = (c->next - 1) & (EG_CARRIER_SLOTS - 1);
			if (same_cookie(c->ck + last * EG_COOKIE_MAX, c->len[last], s->cq, len))
				return 1;
			/* written in place: a query read meanwhile on another CPU may miss it and is
			 * held once */
			__u32 j = c->next & (EG_CARRIER_SLOTS - 1);
			__u64 *w = (__u64 *)(c->ck + j * EG_COOKIE_MAX);
			c->len[j] = 0;
			w[0] = q[0];
			w[1] = q[1];
			w[2] = q[2];
			w[3] = q[3];
			w[4] = q[4];
			c->len[j] = len;
			c->next = j + 1;
		}
		stat(EG_S_COOKIE_LEARNT);
		return 1;
	}
	return 0;
}

SEC("xdp")
int eg_xdp_ingress(struct xdp_md *ctx)
{
	struct pkt p = {};
	p.len = bpf_xdp_get_buff_len(ctx);
	stat(EG_S_XDP_PACKETS);
	if (!find_resp_xdp(ctx, &p))
		return XDP_PASS;
	struct eg_config *cfg = get_config();
	__u32 slot = K_XDP;
	struct scratch *s = bpf_map_lookup_elem(&eg_scratch, &slot);
	if (!cfg || !s)
		return XDP_PASS;
	stat(EG_S_XDP_RESPONSES);
	struct name_info ni = {};
	if (walk_name_xdp(ctx, &p, &ni))
		return XDP_PASS;
	if (cfg->pin_carriers && p.h.ar)
		learn_cookie_xdp(ctx, &p, &ni);
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

/* Destinations of encrypted DNS. Known public DoH/DoT resolvers (shipped list plus the
 * operator's file), and the resolvers the operator sanctions; written by the agent only. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct eg_lpm_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
} eg_doh_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct eg_lpm_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
} eg_sanctioned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct eg_encdns_key);
	__type(value, struct eg_encdns_seen);
} eg_encdns_seen SEC(".maps");

struct eg_lpm_key _eg_lpm_key_layout = {};

/* Encrypted DNS at the socket layer: TCP or UDP to an encrypted-DNS port (853: DoT, DoQ),
 * any address, or to a DoH port (443) of a known public resolver, is allowed only towards a
 * sanctioned resolver; anything else is refused with EPERM (enforce) or allowed and reported
 * (monitor), one ring record per (process, destination, port) and second. The non-DNS path
 * costs a config lookup and a port compare; the DoH list is looked up only on a DoH port.
 * Returns 1 to allow, 0 to refuse. */
static __always_inline int encdns_hook(struct bpf_sock_addr *ctx, struct eg_config *cfg,
				       __u8 hook, int v6)
{
	if (!cfg || !cfg->encdns)
		return 1;
	__u32 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != 262 /* IPPROTO_MPTCP */)
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (!port)
		return 1;
	/* one path per list, not one per combination of matches (unused slots are 0) */
	__u32 reason = 0;
#pragma unroll
	for (int i = 0; i < EG_ENCDNS_PORTS; i++) {
		if (cfg->encdns_ports[i] == port) {
			reason = EG_R_DOT_PORT;
			break;
		}
	}
	if (!reason) {
		int doh_port = 0;
#pragma unroll
		for (int i = 0; i < EG_DOH_PORTS; i++) {
			if (cfg->doh_ports[i] == port) {
				doh_port = 1;
				break;
			}
		}
		if (!doh_port)
			return 1;
	}
	if (cfg->sock_scope == EG_SCOPE_NETNS && cfg->netns_cookie &&
	    bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return 1;

	struct eg_lpm_key k = { .prefixlen = 128 };
	__u8 ipver = 4;
	/* a program may read only its own family's address fields (verifier) */
	if (!v6) {
		__u32 a4 = ctx->user_ip4;
		k.addr[10] = k.addr[11] = 0xff;
		__builtin_memcpy(&k.addr[12], &a4, 4);
	} else {
		__u32 a6[4];
		a6[0] = ctx->user_ip6[0];
		a6[1] = ctx->user_ip6[1];
		a6[2] = ctx->user_ip6[2];
		a6[3] = ctx->user_ip6[3];
		__builtin_memcpy(k.addr, a6, 16);
		ipver = 6;
	}
	if (!reason && bpf_map_lookup_elem(&eg_doh_addrs, &k))
		reason = EG_R_DOH_ENDPOINT;
	if (!reason)
		return 1;
	if (bpf_map_lookup_elem(&eg_sanctioned, &k)) {
		stat(EG_S_ENCDNS_SANCTIONED);
		return 1;
	}
	int enforce = cfg->mode == EG_MODE_ENFORCE;
	stat(enforce ? EG_S_ENCDNS_DENIED : EG_S_ENCDNS_REPORTED);

	/* a retry loop costs one ring record per second, its attempts counted */
	__u64 pt = bpf_get_current_pid_tgid();
	struct eg_encdns_key qk = { .tgid = pt >> 32, .dport = port, .l4 = proto };
	__builtin_memcpy(qk.daddr, k.addr, 16);
	__u64 now = bpf_ktime_get_ns();
	__u64 attempts = 1;
	struct eg_encdns_seen *seen = bpf_map_lookup_elem(&eg_encdns_seen, &qk);
	if (seen) {
		__u64 total = __sync_fetch_and_add(&seen->total, 1) + 1;
		if (now - seen->last_ns < EG_QUIET_NS) {
			stat(EG_S_ENCDNS_QUIET);
			return !enforce;
		}
		seen->last_ns = now;
		attempts = total - seen->reported;
		seen->reported = total;
	} else {
		struct eg_encdns_seen fresh = { .total = 1, .last_ns = now, .reported = 1 };
		bpf_map_update_elem(&eg_encdns_seen, &qk, &fresh, BPF_NOEXIST);
	}

	struct eg_event *ev = bpf_ringbuf_reserve(&eg_events, EG_OBS_SIZE, 0);
	if (!ev) {
		stat(EG_S_RINGBUF_FULL);
		return !enforce;
	}
	/* ring memory is recycled, not zeroed: the header is written whole */
	__builtin_memset(ev, 0, EG_OBS_SIZE);
	ev->ts_ns = now;
	ev->cookie = bpf_get_socket_cookie(ctx);
	ev->pid = (__u32)pt;
	ev->tgid = pt >> 32;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->daddr, k.addr, 16);
	if (ipver == 4)
		ev->saddr[10] = ev->saddr[11] = 0xff;
	ev->dport = port;
	ev->l4 = proto == IPPROTO_UDP ? IPPROTO_UDP : IPPROTO_TCP;
	ev->ipver = ipver;
	ev->reasons = reason;
	ev->action = enforce ? EG_ACT_BLOCK : EG_ACT_REPORT;
	ev->kind = EG_KIND_ENCDNS;
	ev->hook = hook;
	ev->drops = attempts > 0xffffffffULL ? 0xffffffff : (__u32)attempts;
	bpf_ringbuf_submit(ev, 0);
	return !enforce;
}

static __always_inline int same_owner(struct eg_proc *r, __u64 pt, __u32 uid)
{
	return r->tgid == pt >> 32 && r->pid == (__u32)pt && r->uid == uid;
}

static __always_inline void owner_fill(struct eg_proc *r, __u64 pt, __u32 uid)
{
	r->pid = (__u32)pt;
	r->tgid = pt >> 32;
	r->uid = uid;
	r->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(r->comm, sizeof(r->comm));
}

/* A new raw socket is its creator's process from the start: no connect or sendmsg hook sees
 * its sends (its uid alone would still be known from sk_uid; the process is what a
 * quarantine needs). UDP and TCP sockets get their record at connect or sendmsg: storage for
 * every socket made cost each socket() ~1.7 us. */
SEC("cgroup/sock_create")
int eg_sock_create(struct bpf_sock *sk)
{
	if (sk->type != 3 /* SOCK_RAW */)
		return 1;
	struct eg_proc *st = bpf_sk_storage_get(&eg_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		owner_fill(st, bpf_get_current_pid_tgid(), (__u32)bpf_get_current_uid_gid());
	return 1;
}

/* Records who owns the socket (once per cookie and process) and denies DNS-port sends of a
 * quarantined process. Returns 1 to allow, 0 to deny with EPERM. */
static __always_inline int sock_hook(struct bpf_sock_addr *ctx, __u8 hook, int v6)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	/* a socket passed on, or its owner changing uid (a daemon dropping privilege), is the
	 * current sender's: budgets are kept per user */
	struct eg_proc *st = ctx->sk ? bpf_sk_storage_get(&eg_sk, ctx->sk, 0,
							  BPF_SK_STORAGE_GET_F_CREATE)
				     : 0;
	if (st && !same_owner(st, pt, uid))
		owner_fill(st, pt, uid);
	struct eg_proc *old = bpf_map_lookup_elem(&eg_socks, &cookie);
	if (!old || !same_owner(old, pt, uid)) {
		struct eg_proc pr = {};
		owner_fill(&pr, pt, uid);
		bpf_map_update_elem(&eg_socks, &cookie, &pr, BPF_ANY);
		stat(EG_S_SOCK_EVENTS);
	}
	struct eg_config *cfg = get_config();
	if (ctx->user_port == bpf_htons(53) && bpf_map_lookup_elem(&eg_quarantine, &tgid)) {
		if (cfg && cfg->mode == EG_MODE_ENFORCE) {
			stat(EG_S_SOCK_DENIED);
			return 0;
		}
	}
	return encdns_hook(ctx, cfg, hook, v6);
}

SEC("cgroup/sendmsg4")
int eg_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx, EG_HOOK_SENDMSG, 0);
}

SEC("cgroup/sendmsg6")
int eg_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx, EG_HOOK_SENDMSG, 1);
}

SEC("cgroup/connect4")
int eg_connect4(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx, EG_HOOK_CONNECT, 0);
}

SEC("cgroup/connect6")
int eg_connect6(struct bpf_sock_addr *ctx)
{
	return sock_hook(ctx, EG_HOOK_CONNECT, 1);
}

/* AF_PACKET with PACKET_QDISC_BYPASS and AF_XDP transmit without passing tc egress (or the
 * socket layer): only the agent may set them up. Everyone else gets EPERM in enforce mode. */
SEC("cgroup/setsockopt")
int eg_setsockopt(struct bpf_sockopt *ctx)
{
	/* sends that skip tc (QDISC_BYPASS, AF_XDP), and AF_PACKET's virtio-net header, whose
	 * GSO request tc sees as one datagram (gso_segs not yet counted) */
	int po = ctx->optname;
	int bypass = (ctx->level == 263 /* SOL_PACKET */ &&
		      (po == 20 /* QDISC_BYPASS */ || po == 15 /* VNET_HDR */ ||
		       po == 24 /* VNET_HDR_SZ */)) ||
		     ctx->level == 283 /* SOL_XDP */;
	if (!bypass)
		return 1;
	struct eg_config *cfg = get_config();
	if (!cfg || cfg->mode != EG_MODE_ENFORCE ||
	    (cfg->agent_tgid && bpf_get_current_pid_tgid() >> 32 == cfg->agent_tgid))
		return 1;
	stat(EG_S_SOCKOPT_DENIED);
	return 0;
}

/* An empty classifier: the benchmark measures BPF_PROG_TEST_RUN's own per-run cost with it,
 * so the figures for eg_tc_egress can be read net of the harness. Never attached. */
SEC("tc")
int eg_tc_noop(struct __sk_buff *skb)
{
	return EG_TC_NEXT;
}
