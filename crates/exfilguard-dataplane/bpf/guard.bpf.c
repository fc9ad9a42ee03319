// SPDX-License-Identifier: GPL-2.0
/* exfilguard's BPF LSM guard: while the agent runs, only the agent and processes running the
 * agent's own executable file (the `exfilguard` commands), untraced, may
 *   - get a file descriptor for exfilguard's maps or links (by id or through a pin), so no
 *     other process can write a map, detach a link or replace a link's program;
 *   - look up, unlink or rename anything in the pin directory, rename it, mount over it, or
 *     unmount the bpffs that holds it;
 *   - ptrace the agent or open its memory (pidfd_getfd would steal its fds).
 * And only the agent itself (its tgid) may set PACKET_QDISC_BYPASS, PACKET_VNET_HDR(_SZ) or
 * any SOL_XDP option.
 * Program fds stay available read-only: `bpftool prog show` and `net show` keep working, and a
 * program fd cannot detach a link-attached program.
 *
 * The guard lives as long as the agent's fds on its links (it is never pinned): a dead agent
 * cannot lock its successor out. Objects are identified by id (eg_guard_ids, written by the
 * agent); the agent by its tgid (.rodata), and its executable as the kernel sees it, learnt
 * from the agent's first bpf() call after attach (userspace st_dev differs from the kernel's
 * s_dev on btrfs and some overlayfs setups). Only the first arguments of each hook are read:
 * their number differs between kernels (6.1 vs 6.18). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define PTRACE_MODE_ATTACH 0x02
#define GUARD_MAP 1
#define GUARD_LINK 3
#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20
#define PACKET_VNET_HDR 15
#define PACKET_VNET_HDR_SZ 24
#define SOL_XDP 283

const volatile __u32 agent_tgid = 0;
const volatile __u64 dir_ino = 0;
const volatile __u32 dir_dev = 0; /* kernel dev_t of the pin directory's bpffs */

struct exe_ident {
	__u64 ino;
	__u32 dev;
	__u32 learnt;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exe_ident);
} eg_guard_self SEC(".maps");

struct guard_key {
	__u32 kind; /* GUARD_MAP, GUARD_LINK */
	__u32 id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct guard_key);
	__type(value, __u8);
} eg_guard_ids SEC(".maps");

/* refusals by hook: 0 map fd, 1 link fd, 2 pin directory, 3 ptrace, 4 mount/unmount/rename,
 * 5 setsockopt */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 6);
	__type(key, __u32);
	__type(value, __u64);
} eg_guard_refused SEC(".maps");

static __always_inline int refuse(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&eg_guard_refused, &what);
	if (n)
		__sync_fetch_and_add(n, 1);
	return -EPERM;
}

static __always_inline bool is_agent(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == agent_tgid;
}

static __always_inline struct inode *exe_inode(struct task_struct *t)
{
	struct mm_struct *mm = BPF_CORE_READ(t, mm);
	if (!mm)
		return NULL;
	return BPF_CORE_READ(mm, exe_file, f_inode);
}

/* Kernel threads (no mm) do their own path walks; they are not the adversary. A traced
 * process runs whatever its tracer makes it run, whatever its executable. */
static __always_inline bool allowed(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	if (!BPF_CORE_READ(t, mm) || is_agent())
		return true;
	if (BPF_CORE_READ(t, ptrace))
		return false;
	__u32 zero = 0;
	struct exe_ident *me = bpf_map_lookup_elem(&eg_guard_self, &zero);
	struct inode *ino = exe_inode(t);
	if (!me || !me->learnt || !ino)
		return false;
	return BPF_CORE_READ(ino, i_ino) == me->ino && BPF_CORE_READ(ino, i_sb, s_dev) == me->dev;
}

static __always_inline void learn_agent_exe(void)
{
	__u32 zero = 0;
	struct exe_ident *me = bpf_map_lookup_elem(&eg_guard_self, &zero);
	if (!me || me->learnt)
		return;
	struct inode *ino = exe_inode(bpf_get_current_task_btf());
	if (!ino)
		return;
	me->ino = BPF_CORE_READ(ino, i_ino);
	me->dev = BPF_CORE_READ(ino, i_sb, s_dev);
	me->learnt = 1;
}

static __always_inline bool is_pin_dir(struct inode *inode)
{
	return inode && BPF_CORE_READ(inode, i_ino) == dir_ino &&
	       BPF_CORE_READ(inode, i_sb, s_dev) == dir_dev;
}

static __always_inline bool ours(__u32 kind, __u32 id)
{
	struct guard_key k = { .kind = kind, .id = id };
	return bpf_map_lookup_elem(&eg_guard_ids, &k) != NULL;
}

/* Any fd on a map, read-only too: a program loaded with a read-only map fd can still write
 * the map from the kernel side. */
SEC("lsm/bpf_map")
int BPF_PROG(eg_guard_map, struct bpf_map *map, fmode_t fmode)
{
	if (!ours(GUARD_MAP, BPF_CORE_READ(map, id)) || allowed())
		return 0;
	return refuse(0);
}

/* Links have no per-object hook: their fds come from BPF_LINK_GET_FD_BY_ID or from a pin
 * (the pin directory is guarded below). */
SEC("lsm/bpf")
int BPF_PROG(eg_guard_bpf, int cmd, union bpf_attr *attr)
{
	if (is_agent()) {
		learn_agent_exe();
		return 0;
	}
	if (cmd != BPF_LINK_GET_FD_BY_ID)
		return 0;
	if (!ours(GUARD_LINK, BPF_CORE_READ(attr, link_id)) || allowed())
		return 0;
	return refuse(1);
}

/* Every lookup in, unlink from or rename out of the pin directory needs permission on the
 * directory itself: refusing it there covers BPF_OBJ_GET on every pin, rm and mv. */
SEC("lsm/inode_permission")
int BPF_PROG(eg_guard_dir, struct inode *inode, int mask)
{
	if (!is_pin_dir(inode) || allowed())
		return 0;
	return refuse(2);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(eg_guard_ptrace, struct task_struct *child, unsigned int mode)
{
	if (!(mode & PTRACE_MODE_ATTACH) || BPF_CORE_READ(child, tgid) != agent_tgid || allowed())
		return 0;
	return refuse(3);
}

/* Renaming the directory itself needs no permission on it (same parent). */
SEC("lsm/inode_rename")
int BPF_PROG(eg_guard_rename, struct inode *old_dir, struct dentry *old_dentry)
{
	if (!is_pin_dir(BPF_CORE_READ(old_dentry, d_inode)) || allowed())
		return 0;
	return refuse(4);
}

/* Unmounting the bpffs drops every pin at once. */
SEC("lsm/sb_umount")
int BPF_PROG(eg_guard_umount, struct vfsmount *mnt, int flags)
{
	if (BPF_CORE_READ(mnt, mnt_sb, s_dev) != dir_dev || allowed())
		return 0;
	return refuse(4);
}

/* A mount over the directory hides the pins from the agent's next start. */
SEC("lsm/sb_mount")
int BPF_PROG(eg_guard_mount, const char *dev_name, const struct path *path)
{
	if (!is_pin_dir(BPF_CORE_READ(path, dentry, d_inode)) || allowed())
		return 0;
	return refuse(4);
}

/* Sends that skip tc egress: eg_setsockopt (cgroup/setsockopt) refuses these to all but the
 * agent, but the kernel runs cgroup sockopt programs for 64-bit syscalls only (__sys_setsockopt
 * skips them when in_compat_syscall()), so a CAP_NET_RAW process would still get them through
 * int $0x80. This LSM hook runs for both. Same options as eg_setsockopt, the agent's tgid only
 * (not the exfilguard commands: none of them sends raw frames), refused in every mode: the
 * guard is the hardened piece. */
SEC("lsm/socket_setsockopt")
int BPF_PROG(eg_guard_setopt, struct socket *sock, int level, int optname)
{
	if (!((level == SOL_PACKET && (optname == PACKET_QDISC_BYPASS || optname == PACKET_VNET_HDR ||
					optname == PACKET_VNET_HDR_SZ)) ||
	      level == SOL_XDP) ||
	    is_agent())
		return 0;
	return refuse(5);
}
