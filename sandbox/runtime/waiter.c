/* sbx-waiter: a payload from a small address space.
 *
 * The Python payload (payload.py) does all a run's shape decides (ids, capabilities, Landlock,
 * the seccomp filter), then, before its command is known, execs this program from a sealed
 * memfd (waiter.py); or init spawns it and it does that set-up itself (below).  Then, as
 * payload.py does after its command wait: read the command, place
 * the run's fds, open the redirects, set the rlimits, say ready, wait for the release, exec.
 * The messages are protocol.py's; the supervisor sees no difference but the time.
 *
 * Why: an execve tears down the address space it replaces.  From a copy of the interpreter
 * that is ~0.9 ms on the run's path (bench/floor.py); from here, next to nothing.
 *
 * No libc: a static glibc program is 680 KB, copied into a memfd for every `sbx run`, and its
 * start-up makes a dozen system calls; a dynamic one would run the image's libc, which an image
 * may have planted (and which would set, or not, the run's rlimits).  So this is freestanding:
 * its own _start and system calls, for x86-64 and arm64 (setup.py builds it elsewhere never; the
 * payload then does all of this in Python).  Under the filter it makes only the calls
 * waiter.CALLS lists.
 *
 * Where init can start it directly (payload.spawn_waiter: posix_spawn, no copy of the
 * interpreter at all), it first does the payload's set-up too, from a plan init writes on SETUP_R
 * (protocol.Setup): ids, capabilities, securebits, no_new_privs, Landlock (RULESET, built by
 * init), every other fd closed, then the seccomp filter, the same steps in payload.main's order.
 *
 * usage: sbx-waiter COMMAND_R CHANNEL RELEASE_R EXEC_W [SETUP_R RULESET]
 */
#include <stddef.h>
#include <stdint.h>
#include <asm/unistd.h>

#if defined(__x86_64__)
__asm__(".text\n.global _start\n_start:\n\txor %rbp, %rbp\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n"
	"\tcall start\n\thlt\n");

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
__asm__(".text\n.global _start\n_start:\n\tmov x29, #0\n\tmov x30, #0\n\tmov x0, sp\n"
	"\tand sp, x0, #-16\n\tbl start\n");

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c,
		      x3 __asm__("x3") = d, x4 __asm__("x4") = e, x5 __asm__("x5") = f;
	__asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory", "cc");
	return x0;
}
#else
#error "sbx-waiter: no system call glue for this architecture (the payload does its work in Python)"
#endif

#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* The kernel's ABI values, the same on both architectures. */
enum {
	EINTR = 4, ENOENT = 2, ENOTDIR = 20, ENOMEM = 12,
	O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0100, O_NOCTTY = 0400, O_TRUNC = 01000, O_NONBLOCK = 04000,
	O_CLOEXEC = 02000000, AT_FDCWD = -100,
	F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, F_DUPFD_CLOEXEC = 1030, FD_CLOEXEC = 1,
	SOL_SOCKET = 1, SCM_RIGHTS = 1, MSG_CMSG_CLOEXEC = 0x40000000,
	PR_SET_NAME = 15, RLIMIT_CORE = 4,
	PROT_RW = 3, MAP_PRIVATE_ANONYMOUS = 0x22,
	/* linux.py's, for the set-up */
	PR_SET_DUMPABLE = 4, PR_CAPBSET_DROP = 24, PR_SET_SECUREBITS = 28, PR_SET_NO_NEW_PRIVS = 38,
	PR_CAP_AMBIENT = 47, PR_CAP_AMBIENT_CLEAR_ALL = 4, SECURE_ALL_LOCKED = 0xcf,
	CLONE_NEWUSER = 0x10000000, SECCOMP_SET_MODE_FILTER = 1,
};
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446 /* the same number on every architecture */
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
/* protocol.Setup's flags */
enum { SETUP_NESTED_USERNS = 1, SETUP_SET_IDS = 2, SETUP_DUMPABLE = 4 };
enum { EXIT_SBX = 125, EXIT_NOEXEC = 126, EXIT_NOTFOUND = 127 }; /* errors.py */
#define MAX_FDS (3 + 64)             /* protocol.MAX_FDS */
#define MAX_COMMAND (64u << 20)      /* far above what execve takes */
#define MESSAGE_MAX 4000             /* protocol.EXEC_MESSAGE_MAX */

struct iovec { void *base; size_t len; };
struct msghdr {
	void *name; uint32_t namelen; struct iovec *iov; size_t iovlen;
	void *control; size_t controllen; int flags;
};
struct cmsghdr { size_t len; int level; int type; };
#define CMSG_ALIGN(n) (((n) + sizeof(size_t) - 1) & ~(sizeof(size_t) - 1))
struct rlimit { uint64_t soft, hard; };

/* What the compiler may call for struct copies and zeroing (and would make of these loops, but
 * for the attribute). */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memset(void *d, int c, size_t n)
{
	unsigned char *dp = d;
	while (n--)
		*dp++ = (unsigned char)c;
	return d;
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) static size_t length(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static _Noreturn void leave(int code)
{
	for (;;)
		sys3(__NR_exit_group, code, 0, 0);
}

static int exec_w = -1;

/* A message on the exec pipe, one write (below PIPE_BUF): `kind`, then the decimal `number`
 * when it is >= 0, then `text`. */
static void say(const char *kind, long number, const char *text)
{
	char message[MESSAGE_MAX];
	size_t at = 0;
	for (const char *p = kind; *p && at < sizeof message; p++)
		message[at++] = *p;
	if (number >= 0) {
		char digits[24];
		int n = 0;
		do
			digits[n++] = (char)('0' + number % 10);
		while ((number /= 10) && n < 24);
		while (n && at < sizeof message)
			message[at++] = digits[--n];
	}
	if (text && at < sizeof message)
		message[at++] = ' ';
	for (const char *p = text; p && *p && at < sizeof message; p++)
		message[at++] = *p;
	sys3(__NR_write, exec_w, message, at);
}

/* protocol.SetupFailed, then exit: "F ERRNO WHAT" (the supervisor adds strerror), or "E WHAT". */
static _Noreturn void setup_failed(const char *what, long err)
{
	if (exec_w >= 0) {
		if (err > 0)
			say("F ", err, what);
		else
			say("E", -1, what);
	}
	leave(EXIT_SBX);
}

static const char *malformed_what = "the supervisor sent a malformed command";

static _Noreturn void malformed(void)
{
	setup_failed(malformed_what, 0);
}

static int read_exact(int fd, void *buf, size_t size)
{
	char *p = buf;
	while (size) {
		long n = sys3(__NR_read, fd, p, size);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		size -= (size_t)n;
	}
	return 0;
}

/* Memory: one anonymous mapping, handed out in order (freed by the exec). */
static char *arena, *arena_end;

static void *take_memory(size_t size)
{
	size = (size + 15) & ~(size_t)15;
	if ((size_t)(arena_end - arena) < size)
		setup_failed("out of memory", ENOMEM);
	void *p = arena;
	arena += size;
	return p;
}

/* The command body (protocol.Command.encode): little-endian u32 counts and values, strings as
 * a u32 length, the bytes, then a NUL. */
struct cursor {
	const unsigned char *p, *end;
};

static uint64_t take(struct cursor *c, unsigned size)
{
	uint64_t value = 0;
	if ((size_t)(c->end - c->p) < size)
		malformed();
	for (unsigned i = 0; i < size; i++)
		value |= (uint64_t)c->p[i] << (8 * i);
	c->p += size;
	return value;
}

static uint32_t count(struct cursor *c, uint64_t max)
{
	uint64_t n = take(c, 4);
	if (n > max)
		malformed();
	return (uint32_t)n;
}

static char *string(struct cursor *c)
{
	uint64_t size = take(c, 4);
	if ((uint64_t)(c->end - c->p) <= size || c->p[size] != 0)
		malformed();
	char *s = (char *)c->p;
	if (length(s) != size)
		setup_failed("embedded null byte", 0); /* what os.execve says of one */
	c->p += size + 1;
	return s;
}

static char **strings(struct cursor *c)
{
	uint32_t n = count(c, (uint64_t)(c->end - c->p) / 5);
	char **list = take_memory(((size_t)n + 1) * sizeof *list);
	for (uint32_t i = 0; i < n; i++)
		list[i] = string(c);
	list[n] = 0;
	return list;
}

static int number(const char *s)
{
	long value = 0;
	if (!*s)
		leave(EXIT_SBX);
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || value > 1 << 20)
			leave(EXIT_SBX);
		value = value * 10 + (*s - '0');
	}
	return (int)value;
}

static int dup_above(int fd, int floor)
{
	long high = sys3(__NR_fcntl, fd, F_DUPFD_CLOEXEC, floor);
	if (high < 0)
		setup_failed("fcntl", -high);
	return (int)high;
}

/* dup2, which arm64 lacks: the target loses close-on-exec. */
static void move_fd(int fd, int target)
{
	long r = fd == target ? sys3(__NR_fcntl, fd, F_SETFD, 0) : sys3(__NR_dup3, fd, target, 0);
	if (r < 0)
		setup_failed("dup2", -r);
}

/* The run's fds (stdin, stdout, stderr, then the --pass-fd ones) from the channel, each onto its
 * number; first every fd we hold is lifted above all the targets, so no dup2 overwrites one still
 * needed (payload._place_fds). */
static void place_fds(int channel, const int *targets, uint32_t ntargets, int *ours[], int nours)
{
	char tag;
	struct iovec iov = {&tag, 1};
	union {
		struct cmsghdr header;
		char space[CMSG_ALIGN(sizeof(struct cmsghdr)) + CMSG_ALIGN(sizeof(int) * MAX_FDS)];
	} control;
	struct msghdr msg = {.iov = &iov, .iovlen = 1, .control = control.space, .controllen = sizeof control.space};
	long got;
	do
		got = sys3(__NR_recvmsg, channel, &msg, MSG_CMSG_CLOEXEC);
	while (got == -EINTR);
	if (got < 0)
		setup_failed("recvmsg", -got);
	int fds[MAX_FDS];
	uint32_t nfds = 0, extra = 0;
	size_t at = 0;
	while (at + sizeof(struct cmsghdr) <= msg.controllen) {
		struct cmsghdr *h = (struct cmsghdr *)(control.space + at);
		if (h->len < sizeof(struct cmsghdr) || h->len > msg.controllen - at)
			break;
		if (h->level == SOL_SOCKET && h->type == SCM_RIGHTS) {
			const unsigned char *data = (const unsigned char *)h + CMSG_ALIGN(sizeof(struct cmsghdr));
			size_t n = (h->len - CMSG_ALIGN(sizeof(struct cmsghdr))) / sizeof(int);
			for (size_t i = 0; i < n; i++) {
				int fd;
				memcpy(&fd, data + i * sizeof(int), sizeof fd);
				if (nfds < MAX_FDS)
					fds[nfds++] = fd;
				else
					extra++, sys3(__NR_close, fd, 0, 0);
			}
		}
		at += CMSG_ALIGN(h->len);
	}
	if (nfds + extra != ntargets)
		setup_failed("the supervisor sent the wrong number of descriptors", 0);
	int floor = 0;
	for (uint32_t i = 0; i < ntargets; i++)
		if (targets[i] >= floor)
			floor = targets[i] + 1;
	for (uint32_t i = 0; i < nfds; i++) {
		int high = dup_above(fds[i], floor);
		sys3(__NR_close, fds[i], 0, 0);
		fds[i] = high;
	}
	for (int k = 0; k < nours; k++)
		for (uint32_t i = 0; i < ntargets; i++)
			if (*ours[k] == targets[i]) {
				int high = dup_above(*ours[k], floor);
				sys3(__NR_close, *ours[k], 0, 0);
				*ours[k] = high;
				break;
			}
	for (uint32_t i = 0; i < nfds; i++) {
		move_fd(fds[i], targets[i]);
		sys3(__NR_close, fds[i], 0, 0);
	}
}

/* payload._redirect: each path opened here, as the payload's own uid, onto its fd; an empty
 * path copies fd 1.  O_NONBLOCK: a FIFO never blocks us before the release; cleared once open. */
static void redirect(int target, const char *path)
{
	if (!*path) {
		move_fd(1, target);
		return;
	}
	int flags = target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC;
	long fd = sys6(__NR_openat, AT_FDCWD, (long)path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0666, 0, 0);
	if (fd < 0) {
		char what[MESSAGE_MAX / 2];
		size_t at = 0, n = length(path);
		const char *head = "open(\"";
		for (const char *p = head; *p; p++)
			what[at++] = *p;
		for (size_t i = 0; i < n && at < sizeof what - 4; i++)
			what[at++] = path[i];
		what[at++] = '"';
		what[at++] = ')';
		what[at] = 0;
		setup_failed(what, -fd);
	}
	long fl = sys3(__NR_fcntl, fd, F_GETFL, 0);
	if (fl < 0 || (fl = sys3(__NR_fcntl, fd, F_SETFL, fl & ~O_NONBLOCK)) < 0)
		setup_failed("fcntl", -fl);
	move_fd((int)fd, target);
	if (fd != target)
		sys3(__NR_close, fd, 0, 0);
}

/* payload.exec_command: execvpe's PATH search (PATH from the command's environment, else
 * /bin:/usr/bin); where all fail, the first error that is not ENOENT or ENOTDIR wins.  Returns
 * that errno. */
static long exec_command(char **argv, char **envp)
{
	const char *file = argv[0];
	size_t flen = length(file);
	for (size_t i = 0; i < flen; i++)
		if (file[i] == '/')
			return -sys3(__NR_execve, file, argv, envp);
	const char *path = "/bin:/usr/bin";
	for (char **e = envp; *e; e++) {
		const char *v = *e;
		if (v[0] == 'P' && v[1] == 'A' && v[2] == 'T' && v[3] == 'H' && v[4] == '=') {
			path = v + 5; /* the only one: Command.encode sends each name once */
			break;
		}
	}
	long last = ENOENT, first = 0;
	char *full = take_memory(length(path) + flen + 2);
	for (const char *dir = path;;) {
		const char *colon = dir;
		while (*colon && *colon != ':')
			colon++;
		size_t dlen = (size_t)(colon - dir);
		memcpy(full, dir, dlen);
		size_t at = dlen;
		if (dlen && dir[dlen - 1] != '/')
			full[at++] = '/';
		memcpy(full + at, file, flen + 1);
		last = -sys3(__NR_execve, full, argv, envp);
		if (last != ENOENT && last != ENOTDIR && !first)
			first = last;
		if (!*colon)
			break;
		dir = colon + 1;
	}
	return first ? first : last;
}

/* Write `text` to the file at `path` (a /proc/self id map), or fail. */
static void write_file(const char *path, const char *text, size_t size)
{
	long fd = sys6(__NR_openat, AT_FDCWD, (long)path, O_WRONLY | O_CLOEXEC, 0, 0, 0);
	if (fd < 0)
		setup_failed(path, -fd);
	long n = sys3(__NR_write, fd, text, size);
	sys3(__NR_close, fd, 0, 0);
	if (n < 0)
		setup_failed(path, -n);
	if ((size_t)n != size)
		setup_failed(path, 5 /* EIO */);
}

/* "ID 0 1\n": map `id` here to our root (the caller) outside. */
static size_t id_map(char *out, uint32_t id)
{
	char digits[12];
	size_t n = 0, at = 0;
	do
		digits[n++] = (char)('0' + id % 10);
	while ((id /= 10));
	while (n)
		out[at++] = digits[--n];
	const char *tail = " 0 1\n";
	while (*tail)
		out[at++] = *tail++;
	return at;
}

static void check(long r, const char *what)
{
	if (r < 0)
		setup_failed(what, -r);
}

/* Close every fd from 3 up but those in keep[] (linux.close_fds_but). */
static void close_all_but(int *keep, int nkeep)
{
	for (int i = 1; i < nkeep; i++) /* sort: a handful of fds */
		for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	unsigned low = 3;
	for (int i = 0; i < nkeep; i++) {
		if (keep[i] < 3)
			continue;
		if ((unsigned)keep[i] > low)
			check(sys3(__NR_close_range, low, keep[i] - 1, 0), "close_range");
		low = (unsigned)keep[i] + 1;
	}
	check(sys3(__NR_close_range, low, ~0u, 0), "close_range");
}

/* payload.main's set-up, as protocol.Setup plans it: the same calls in the same order. */
static void set_up(int setup_r, int ruleset, int *ours[], int nours)
{
	unsigned char header[8];
	malformed_what = "init sent a malformed set-up";
	if (read_exact(setup_r, header, sizeof header) < 0)
		setup_failed("init's set-up was cut short", 0);
	struct cursor c = {header, header + sizeof header};
	uint64_t size = take(&c, 8);
	if (size > (1u << 20))
		malformed();
	long mem = sys6(__NR_mmap, 0, (long)size + 1, PROT_RW, MAP_PRIVATE_ANONYMOUS, -1, 0);
	if (mem < 0 && mem > -4096)
		setup_failed("mmap", -mem);
	unsigned char *body = (unsigned char *)mem;
	if (read_exact(setup_r, body, size) < 0)
		setup_failed("init's set-up was cut short", 0);
	sys3(__NR_close, setup_r, 0, 0);
	c = (struct cursor){body, body + size};
	uint32_t flags = (uint32_t)take(&c, 4), uid = (uint32_t)take(&c, 4), gid = (uint32_t)take(&c, 4);
	uint32_t last_cap = count(&c, 63);
	char *workdir = string(&c);
	uint32_t nprogram = count(&c, 4096 * 8); /* BPF_MAXINSNS instructions of 8 bytes */
	const unsigned char *program = c.p;
	if (nprogram % 8 || (size_t)(c.end - c.p) != nprogram)
		malformed();
	malformed_what = "the supervisor sent a malformed command";

	if (flags & SETUP_DUMPABLE) /* our /proc files must be ours to write the id maps */
		check(sys3(__NR_prctl, PR_SET_DUMPABLE, 1, 0), "prctl");
	if (flags & SETUP_NESTED_USERNS) { /* payload._enter_nested_userns */
		char map[32];
		check(sys3(__NR_unshare, CLONE_NEWUSER, 0, 0), "unshare");
		write_file("/proc/self/setgroups", "deny", 4);
		write_file("/proc/self/uid_map", map, id_map(map, uid));
		write_file("/proc/self/gid_map", map, id_map(map, gid));
	}
	check(sys3(__NR_chdir, workdir, 0, 0), workdir);
	/* payload._drop_privileges */
	for (uint32_t cap = 0; cap <= last_cap; cap++)
		check(sys6(__NR_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0, 0), "prctl");
	check(sys6(__NR_prctl, PR_SET_SECUREBITS, SECURE_ALL_LOCKED, 0, 0, 0, 0), "prctl");
	check(sys6(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0), "prctl");
	if (flags & SETUP_SET_IDS) {
		check(sys3(__NR_setgroups, 0, 0, 0), "setgroups");
		check(sys3(__NR_setresgid, gid, gid, gid), "setresgid");
		check(sys3(__NR_setresuid, uid, uid, uid), "setresuid");
	}
	struct { uint32_t version; int pid; } cap_header = {0x20080522, 0}; /* _LINUX_CAPABILITY_VERSION_3 */
	uint32_t cap_data[6] = {0};
	check(sys3(__NR_capset, &cap_header, cap_data, 0), "capset");
	check(sys6(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0), "prctl");
	/* payload._fence: init built the ruleset; enforcing it needs no_new_privs */
	if (ruleset >= 0) {
		check(sys3(__NR_landlock_restrict_self, ruleset, 0, 0), "landlock_restrict_self");
		sys3(__NR_close, ruleset, 0, 0);
	}
	int keep[8];
	for (int k = 0; k < nours; k++)
		keep[k] = *ours[k];
	close_all_but(keep, nours);
	if (nprogram) { /* seccomp.load, before the command wait (payload._filter_before_command) */
		struct { uint16_t len; uint16_t pad[3]; const void *filter; } fprog = {(uint16_t)(nprogram / 8), {0}, program};
		check(sys3(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog), "seccomp");
	}
}

__attribute__((used)) _Noreturn void start(long *stack)
{
	long argc = stack[0];
	char **argv = (char **)(stack + 1);
	if (argc != 5 && argc != 7)
		leave(EXIT_SBX);
	int command_r = number(argv[1]), channel = number(argv[2]), release_r = number(argv[3]);
	exec_w = number(argv[4]);
	int setup_r = argc == 7 ? number(argv[5]) : -1, ruleset = argc == 7 && argv[6][0] != '-' ? number(argv[6]) : -1;
	/* Inherited across our own exec; close-on-exec again, so the command gets none of them. */
	int *ours[] = {&command_r, &channel, &release_r, &exec_w, &setup_r, &ruleset};
	for (int k = 0; k < 6; k++)
		if (*ours[k] >= 0 && sys3(__NR_fcntl, *ours[k], F_SETFD, FD_CLOEXEC) < 0)
			leave(EXIT_SBX);
	sys3(__NR_prctl, PR_SET_NAME, "sbx-waiter", 0);
	if (setup_r >= 0)
		set_up(setup_r, ruleset, ours, 4);

	unsigned char header[8];
	if (read_exact(command_r, header, sizeof header) < 0)
		leave(EXIT_SBX); /* discarded before use */
	struct cursor c = {header, header + sizeof header};
	uint64_t size = take(&c, 8);
	if (size > MAX_COMMAND)
		malformed();
	/* The body, the pointers to its strings (each string takes at least 5 bytes of it), and a
	 * path as long as it: at most 4 times its size. */
	size_t room = (size_t)size * 4 + 65536;
	long mem = sys6(__NR_mmap, 0, (long)room, PROT_RW, MAP_PRIVATE_ANONYMOUS, -1, 0);
	if (mem < 0 && mem > -4096)
		setup_failed("mmap", -mem);
	arena = (char *)mem;
	arena_end = arena + room;
	unsigned char *body = take_memory(size ? size : 1);
	if (read_exact(command_r, body, size) < 0)
		leave(EXIT_SBX);
	sys3(__NR_close, command_r, 0, 0);

	c = (struct cursor){body, body + size};
	char **args = strings(&c), **envp = strings(&c);
	if (!args[0])
		setup_failed("execve: argv must not be empty", 0);
	uint32_t nlimits = count(&c, size / 20);
	struct cursor limits = {c.p, c.p + (size_t)nlimits * 20};
	if (limits.end > c.end)
		malformed();
	c.p = limits.end;
	uint32_t npass = count(&c, MAX_FDS - 3);
	int targets[MAX_FDS] = {0, 1, 2};
	for (uint32_t i = 0; i < npass; i++) {
		uint64_t fd = take(&c, 4);
		if (fd > 1 << 20)
			malformed();
		targets[3 + i] = (int)fd;
	}
	uint32_t nredirects = count(&c, size / 9);
	int *redirect_fds = take_memory(((size_t)nredirects + 1) * sizeof *redirect_fds);
	char **redirect_paths = take_memory(((size_t)nredirects + 1) * sizeof *redirect_paths);
	for (uint32_t i = 0; i < nredirects; i++) {
		uint64_t target = take(&c, 4);
		if (target > 1 << 20)
			malformed();
		redirect_fds[i] = (int)target;
		redirect_paths[i] = string(&c);
	}
	if (c.p != c.end)
		malformed();

	/* All read and checked: now act on it. */
	place_fds(channel, targets, 3 + npass, ours + 1, 3);
	for (uint32_t i = 0; i < nredirects; i++)
		redirect(redirect_fds[i], redirect_paths[i]);
	struct rlimit none = {0, 0};
	long r = sys6(__NR_prlimit64, 0, RLIMIT_CORE, (long)&none, 0, 0, 0);
	if (r < 0)
		setup_failed("setrlimit", -r);
	for (uint32_t i = 0; i < nlimits; i++) {
		long which = (long)take(&limits, 4);
		struct rlimit limit;
		limit.soft = take(&limits, 8);
		limit.hard = take(&limits, 8);
		if ((r = sys6(__NR_prlimit64, 0, which, (long)&limit, 0, 0, 0)) < 0)
			setup_failed("setrlimit", -r);
	}

	/* protocol.send_payload_ready: the kernel adds our credentials; no listener here (the waiter
	 * is used only where the filter was loaded before the command wait). */
	char ready = 'P';
	struct iovec iov = {&ready, 1};
	struct msghdr msg = {.iov = &iov, .iovlen = 1};
	while ((r = sys3(__NR_sendmsg, channel, &msg, 0)) < 0)
		if (r != -EINTR)
			setup_failed("sendmsg", -r);
	char go = 0;
	do
		r = sys3(__NR_read, release_r, &go, 1);
	while (r == -EINTR);
	if (r != 1 || go != 'G')
		leave(EXIT_SBX); /* the supervisor is gone: never run unsupervised */

	long err = exec_command(args, envp);
	say("X ", err, 0);
	leave(err == ENOENT || err == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC);
}
