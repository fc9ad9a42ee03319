/* Layouts shared by the BPF programs and the Rust data plane (through the libbpf-cargo
 * skeleton's generated types). Plain fixed-width types only: no pointers, no bitfields. */
#ifndef EXFILGUARD_H
#define EXFILGUARD_H

#define EG_NAME_MAX 256   /* wire-format qname bytes, RFC 1035 limit is 255 */
#define EG_PKT_MAX 2048   /* largest frame that can be held and released */
#define EG_MAX_SUFFIXES 8 /* parent suffixes checked against the blocklist */
#define EG_COMM_LEN 16
#define EG_ENCDNS_PORTS 8 /* encrypted-DNS ports (DoT, DoQ) in eg_config */
#define EG_DOH_PORTS 4    /* DoH ports checked against eg_doh_addrs */
/* The agent writes eg_heartbeat at least every 100 ms while it reads the rings; older than
 * this, it is taken for dead (killed, stopped, hung) and fail_open passes what it would hold. */
#define EG_AGENT_TIMEOUT_NS 2000000000ULL

enum eg_mode { EG_MODE_MONITOR = 0, EG_MODE_ENFORCE = 1 };

/* What the data plane did with a packet. */
enum eg_action {
	EG_ACT_PASS = 0,
	EG_ACT_HOLD = 1,       /* original dropped, bytes in the event, userspace decides */
	EG_ACT_BLOCK = 2,      /* blocklisted suffix: dropped */
	EG_ACT_REPORT = 3,     /* monitor mode: would have been held or blocked, passed */
	EG_ACT_QUARANTINE = 4, /* sender's process is quarantined: dropped */
	EG_ACT_FAILCLOSED = 5, /* could not hold (ring full, frame too large): dropped */
	EG_ACT_RATELIMIT = 6,  /* ingress NXDOMAIN flood: dropped */
	EG_ACT_JUDGE = 7,      /* dropped without its frame: the agent judges the name and a
				* retransmission (TCP, or a retrying stub) passes if it is benign */
};

/* Why a query looked suspicious (bit set in eg_event.reasons). */
enum eg_reason {
	EG_R_LONG_NAME = 1 << 0,
	EG_R_LONG_LABEL = 1 << 1,
	EG_R_MANY_LABELS = 1 << 2,
	EG_R_RARE_QTYPE = 1 << 3,
	EG_R_DIGITS = 1 << 4,
	EG_R_BLOCKLIST = 1 << 5,
	EG_R_QUARANTINE = 1 << 6,
	EG_R_ODD_CHARS = 1 << 7,
	EG_R_NXDOMAIN_FLOOD = 1 << 8,
	EG_R_BIG_DOWNLINK = 1 << 9,
	EG_R_MALFORMED = 1 << 10,
	EG_R_REPORT_ALL = 1 << 11,
	EG_R_ODD_MESSAGE = 1 << 12, /* not a plain query: opcode, sections, several questions */
	EG_R_EXTRA_DATA = 1 << 13,  /* bytes after the question beyond an ordinary OPT record */
	EG_R_MIXED_CASE = 1 << 14,  /* upper- and lower-case letters: case can carry data */
	EG_R_UNOBSERVED = 1 << 15,  /* would pass, but the observation ring was full */
	EG_R_MULTI = 1 << 16,       /* one of several messages in a TCP segment */
	/* encrypted DNS (EG_KIND_ENCDNS) to a resolver that is not sanctioned */
	EG_R_DOT_PORT = 1 << 17,     /* TCP or UDP to an encrypted-DNS port (853: DoT, DoQ) */
	EG_R_DOH_ENDPOINT = 1 << 18, /* TCP or UDP to a DoH port of a known public resolver */
	/* a plain query whose OPT record (cookie, client subnet, UDP size, flags) or RD/AD/CD
	 * bits this client has not sent to this server lately: up to 53 free bytes a query */
	EG_R_NEW_CARRIER = 1 << 19,
};

/* EG_KIND_ENCDNS: a connect() or sendmsg() of encrypted DNS to a resolver not sanctioned
 * (frameless: process, destination address and port, reasons; no name). */
enum eg_kind { EG_KIND_QUERY = 0, EG_KIND_RESPONSE = 1, EG_KIND_ENCDNS = 2 };
enum eg_encap {
	EG_ENCAP_NONE = 0,
	EG_ENCAP_VXLAN = 1,
	EG_ENCAP_GENEVE = 2,
	EG_ENCAP_IPIP = 3, /* IPv4/IPv6 in IPv4/IPv6 (IPIP, SIT, ip6tnl) */
	EG_ENCAP_GRE = 4,
};
/* EG_HOOK_SOCK: cgroup_skb egress, the sending socket's packet before any device. */
/* EG_HOOK_CONNECT / EG_HOOK_SENDMSG: cgroup sock_addr connect4/6, sendmsg4/6. */
enum eg_hook {
	EG_HOOK_TC = 0,
	EG_HOOK_XDP = 1,
	EG_HOOK_NETFILTER = 2,
	EG_HOOK_SOCK = 3,
	EG_HOOK_CONNECT = 4,
	EG_HOOK_SENDMSG = 5,
};

/* Socket-layer scope (eg_config.sock_scope). */
enum eg_scope { EG_SCOPE_ALL = 0, EG_SCOPE_NETNS = 1, EG_SCOPE_OFF = 2 };

/* Per-CPU counters; index = enum eg_stat. */
enum eg_stat {
	EG_S_PACKETS = 0,
	EG_S_NON_DNS,
	EG_S_DNS_QUERIES,
	EG_S_PASS_PLAIN,
	EG_S_PASS_ALLOW,
	EG_S_HOLD,
	EG_S_BLOCK,
	EG_S_REPORT,
	EG_S_QUARANTINE,
	EG_S_RELEASED,
	EG_S_FAILCLOSED,
	EG_S_RINGBUF_FULL,
	EG_S_MALFORMED,
	EG_S_TCP_DNS,
	EG_S_VXLAN,
	EG_S_GENEVE,
	EG_S_IPV6,
	EG_S_NF_PACKETS,
	EG_S_XDP_PACKETS,
	EG_S_XDP_RESPONSES,
	EG_S_XDP_NXDOMAIN,
	EG_S_XDP_RATELIMITED,
	EG_S_XDP_DOWNLINK,
	EG_S_SOCK_EVENTS,
	EG_S_SOCK_DENIED,
	EG_S_OBSERVED,     /* passed queries / NXDOMAIN answers copied to the observation ring */
	EG_S_OBSERVE_FULL, /* ... lost because that ring was full (the packet is unaffected) */
	EG_S_AGENT_DOWN,   /* a query to hold while the agent's heartbeat is stale */
	EG_S_BLOCK_QUIET,  /* drops counted in eg_quiet instead of a record each (floods) */
	/* fail-closed drops: what the parser cannot follow to the end never passes */
	EG_S_FRAG_DROP,    /* first fragment of a DNS datagram, or one too small to judge */
	EG_S_DEEP_ENCAP,   /* more encapsulation layers than the parser follows */
	EG_S_TCP_PARTIAL,  /* DNS/TCP segment that is not a run of whole messages */
	EG_S_GSO_DROP,     /* UDP GSO super-packet carrying a DNS query */
	EG_S_MALFORMED_DROP, /* non-DNS payload to port 53 (drop_malformed53) */
	EG_S_ODD_MESSAGE,  /* query with data outside the question, or not a plain query */
	EG_S_ENCAP,        /* DNS found inside IPIP/SIT/GRE */
	EG_S_L3_DEV,       /* packets on a device without a link-layer header (tun, wg, ipip) */
	EG_S_SOCK_PACKETS, /* packets seen by the cgroup_skb egress hook */
	EG_S_SOCKOPT_DENIED, /* PACKET_QDISC_BYPASS / AF_XDP refused */
	EG_S_OBSERVE_HELD, /* held because the observation ring was full */
	EG_S_JUDGE,        /* dropped and handed over for judgement without the frame */
	/* encrypted DNS at connect()/sendmsg() (sock_addr hooks) */
	EG_S_ENCDNS_SANCTIONED, /* to a sanctioned resolver: allowed */
	EG_S_ENCDNS_REPORTED,   /* monitor mode: not sanctioned, allowed and reported */
	EG_S_ENCDNS_DENIED,     /* enforce mode: not sanctioned, refused with EPERM */
	EG_S_ENCDNS_QUIET,      /* ... of them counted without a ring record (retry loops) */
	EG_S_TCP_FLOW, /* TCP streams off port 53 learnt to be DNS (held to port 53's rules) */
	EG_S_USER_PAGES, /* DNS in pages the sender can still rewrite (zerocopy, vmsplice): dropped */
	EG_S_NEW_CARRIER, /* held: an OPT record new for its (client, server) pair */
	EG_S_COOKIE_LEARNT, /* server cookies learnt from responses (xdp) */
	EG_S_COOKIE_ECHOED, /* queries echoing a learnt server cookie (hashed as zeros) */
	EG_S_COOKIE_FORGED, /* local sends from port 53 to a pair: its cookies not learnt */
	EG_S_COOKIE_UNASKED, /* answers with a cookie that answer no query the pair sent */
	EG_S_MAX,
};

/* Runtime policy: one element of an array map, rewritten by the agent without a reload. */
struct eg_config {
	__u32 mode;            /* enum eg_mode */
	__u32 hold_name_len;   /* hold when the dotted qname is at least this long */
	__u32 hold_label_len;  /* ... or any label is at least this long */
	__u32 hold_labels;     /* ... or it has at least this many labels */
	__u32 hold_digits;     /* ... or at least this many digits */
	__u32 report_all;      /* 1: every DNS query produces an event (no packet) */
	__u32 release_mark;    /* skb->mark of frames re-injected by the agent */
	__u32 nx_limit;        /* NXDOMAIN answers per client per second before rate-limiting */
	__u32 nx_domain_limit; /* NXDOMAIN answers per parent domain per second */
	__u32 downlink_bytes;  /* report responses from blocklisted domains at least this large */
	__u32 fail_open;       /* 1: pass what cannot be held (ring full, oversize) */
	__u32 drop_malformed53;/* 1: drop non-DNS payloads sent to port 53 in enforce mode */
	__u32 observe;         /* 1: copy passed queries and NXDOMAIN answers to eg_observe */
	__u32 hold_extra_bytes;/* hold queries with more bytes than this after the question */
	__u32 hold_mixed_case; /* 1: hold names mixing upper- and lower-case letters */
	__u32 agent_tgid;      /* the agent: the one process allowed to bypass qdiscs */
	__u32 sock_scope;      /* enum eg_scope: which namespaces the socket hook judges */
	__u64 netns_cookie;    /* the agent's network namespace (EG_SCOPE_NETNS) */
	__u32 encdns;          /* 1: the sanctioned-resolver policy for encrypted DNS is on */
	__u16 encdns_ports[EG_ENCDNS_PORTS]; /* DoT/DoQ ports, any destination (0: unused) */
	__u16 doh_ports[EG_DOH_PORTS];       /* ports of eg_doh_addrs destinations (0: unused) */
	__u32 pin_carriers; /* 1: hold a plain query whose OPT is new for its (client, server) */
};

/* Key of the LPM tries eg_doh_addrs and eg_sanctioned: IPv4 mapped into IPv6 (::ffff:a.b.c.d,
 * prefix 96 + the IPv4 prefix). */
struct eg_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* One key per (process, destination, port, transport) refused or reported: one ring record
 * per key and second, carrying the attempts since the key's previous record. */
struct eg_encdns_key {
	__u8 daddr[16];
	__u32 tgid;
	__u16 dport;
	__u8 l4;
	__u8 _pad;
};

struct eg_encdns_seen {
	__u64 total;    /* attempts of this key */
	__u64 last_ns;  /* its last ring record */
	__u64 reported; /* attempts in records so far */
};

/* The tgid of an owner known from the socket alone (no hook recorded its process): only its
 * uid, the kernel's sk_uid set when the socket was made (AF_PACKET sockets, sockets older than
 * the agent, accepted TCP children). */
#define EG_TGID_SOCKET 0xffffffffu

/* Who sent it: written into the socket at creation and by the sock_addr hooks (eg_sk), and
 * keyed by socket cookie for netfilter (eg_socks). */
struct eg_proc {
	__u64 cgroup_id;
	__u32 pid;  /* thread id */
	__u32 tgid; /* process id */
	__u32 uid;
	__u32 _pad;
	__u8 comm[EG_COMM_LEN];
};

/* Permission for a re-injected frame, bound to the whole DNS message it carries (hash, id,
 * length); the value is its expiry (CLOCK_MONOTONIC ns). Valid at every hook the frame
 * crosses (socket layer, then tc) until it expires. */
struct eg_ticket {
	__u64 msg_hash;
	__u16 dns_id;
	__u16 msg_len;
	__u32 _pad;
};
#define EG_TICKET_NS 2000000000ULL

/* NXDOMAIN rate window for one client address or one parent domain. */
struct eg_rate {
	__u64 window_ns;
	__u32 count;
	__u32 dropped;
};

/* Client address key for the NXDOMAIN limiter (IPv4 mapped into IPv6). */
struct eg_addr {
	__u8 addr[16];
};

/* A ring-buffer record. Held events carry the whole frame in pkt[0..pkt_len]. */
struct eg_event {
	__u64 ts_ns;
	__u64 cookie;
	__u64 name_hash;
	__u64 cgroup_id;
	__u64 quiet_hash; /* eg_quiet_key.hash of a blocked or quarantined query, else 0 */
	__u64 msg_hash;   /* FNV-1a of the DNS message (held frames: what the ticket binds) */
	__u64 carrier;    /* a new_carrier query's carrier hash: the agent pins it (eg_carriers)
			   * once the query goes out, never when it is dropped */
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 ifindex;
	__u32 pkt_len;  /* bytes in pkt[] (0 unless held) */
	__u32 wire_len; /* length of the packet on the wire */
	__u32 reasons;  /* enum eg_reason bits */
	__u32 blocked_hash_hi; /* high half of the matching blocklist suffix hash */
	__u16 qtype;
	__u16 dns_id;
	__u16 name_len; /* bytes in name[] */
	__u16 sport;
	__u16 dport;
	__u8 action; /* enum eg_action */
	__u8 kind;   /* enum eg_kind */
	__u8 l4;     /* IPPROTO_UDP / IPPROTO_TCP */
	__u8 encap;  /* enum eg_encap */
	__u8 rcode;
	__u8 hook;   /* enum eg_hook */
	__u8 ipver;  /* 4 or 6 */
	__u8 csum_partial; /* 1: L4 checksum left to the device (CHECKSUM_PARTIAL) */
	__u8 frame_l3;     /* 1: pkt[] starts at the IP header (socket hook, L3 device, netfilter) */
	__u8 _pad;
	__u16 ancount;
	__u16 resp_len;
	__u16 csum_start;  /* offset in pkt[] where checksumming starts (if csum_partial) */
	__u16 csum_offset; /* checksum field, relative to csum_start */
	__u32 drops; /* blocked/quarantined: drops of this key so far (enum eg_quiet), this one included */
	__u16 msg_len;   /* bytes of the DNS message */
	__u16 extra_len; /* bytes after the question (OPT, other records, trailing data) */
	__u32 _pad2;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 comm[EG_COMM_LEN];
	__u8 name[EG_NAME_MAX]; /* lower-cased wire-format qname, no root byte (the exact
				 * case is in name_hash and, for held frames, in pkt[]) */
	__u8 pkt[EG_PKT_MAX];
};

/* One key per blocked domain (or quarantined process), socket and source: the kernel drops
 * every query but hands the agent one record per key and second, whose `drops` carries the
 * running total; the agent reports the gaps from this map, so every drop is accounted for
 * without a flood costing a ring record (and an event) per packet. */
struct eg_quiet_key {
	__u64 hash;   /* blocklist suffix hash, or the quarantined tgid */
	__u64 cookie; /* socket cookie (0: forwarded traffic) */
	__u32 src;    /* fold of the source address */
	__u32 _pad;
};

struct eg_quiet {
	__u64 total;   /* drops of this key */
	__u64 last_ns; /* when the last record was handed over */
};

#define EG_QUIET_NS 1000000000ULL

/* Observation records (eg_observe) are an eg_event without the frame. */
#define EG_OBS_SIZE __builtin_offsetof(struct eg_event, pkt)

#endif
