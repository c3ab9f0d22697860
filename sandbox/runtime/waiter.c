/* sbx-waiter: a payload's last steps, from a small address space.
 *
 * The Python payload (payload.py) does all a run's shape decides (ids, capabilities, Landlock,
 * the seccomp filter), then, before its command is known, execs this program from a sealed
 * memfd (waiter.py).  Here, as payload.py does after its command wait: read the command, place
 * the run's fds, open the redirects, set the rlimits, say ready, wait for the release, exec.
 * The messages are protocol.py's; the supervisor sees no difference but the time.
 *
 * Why: an execve tears down the address space it replaces.  From a copy of the interpreter
 * that is ~0.9 ms on the run's path (bench/floor.py); from here, next to nothing.
 *
 * Optional: built where a C compiler is (setup.py); without it, payload.py does all of this.
 * It calls only what waiter.py lists (CALLS), so a profile's deny-list can be checked against it.
 *
 * usage: sbx-waiter COMMAND_R CHANNEL RELEASE_R EXEC_W
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum { EXIT_SBX = 125, EXIT_NOEXEC = 126, EXIT_NOTFOUND = 127 };
#define MAX_FDS (3 + 64)             /* protocol.MAX_FDS */
#define MAX_COMMAND (64u << 20)      /* far above what execve takes */
#define EXEC_MESSAGE_MAX 4000        /* protocol.EXEC_MESSAGE_MAX */

static int exec_w = -1;

/* protocol.SetupFailed on the exec pipe, then exit: `what`, and strerror(err) when err != 0. */
static _Noreturn void setup_failed(const char *what, int err)
{
	char message[EXEC_MESSAGE_MAX];
	int n = err ? snprintf(message, sizeof message, "E %s: %s", what, strerror(err))
		    : snprintf(message, sizeof message, "E %s", what);
	if (n > 0 && exec_w >= 0)
		(void)!write(exec_w, message, (size_t)n < sizeof message ? (size_t)n : sizeof message - 1);
	_exit(EXIT_SBX);
}

static int read_exact(int fd, void *buf, size_t size)
{
	char *p = buf;
	while (size) {
		ssize_t n = read(fd, p, size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		size -= (size_t)n;
	}
	return 0;
}

/* The command body (protocol.Command.encode): little-endian u32 counts and values, strings as
 * a u32 length, the bytes, then a NUL. */
struct cursor {
	const unsigned char *p, *end;
};

static _Noreturn void malformed(void)
{
	setup_failed("the supervisor sent a malformed command", 0);
}

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

static uint32_t count(struct cursor *c, uint32_t max)
{
	uint64_t n = take(c, 4);
	if (n > max)
		malformed();
	return (uint32_t)n;
}

static char *string(struct cursor *c)
{
	uint64_t size = take(c, 4);
	if ((size_t)(c->end - c->p) <= size || c->p[size] != 0)
		malformed();
	char *s = (char *)c->p;
	if (memchr(s, 0, size))
		setup_failed("embedded null byte", 0); /* what os.execve says of one */
	c->p += size + 1;
	return s;
}

static char **strings(struct cursor *c)
{
	uint32_t n = count(c, (uint32_t)(c->end - c->p) / 5);
	char **list = calloc((size_t)n + 1, sizeof *list);
	if (!list)
		setup_failed("malloc", ENOMEM);
	for (uint32_t i = 0; i < n; i++)
		list[i] = string(c);
	return list;
}

static int number(const char *s)
{
	char *end;
	long value = strtol(s, &end, 10);
	if (*s == 0 || *end != 0 || value < 0 || value > 1 << 20)
		_exit(EXIT_SBX);
	return (int)value;
}

static int dup_above(int fd, int floor)
{
	int high = fcntl(fd, F_DUPFD_CLOEXEC, floor);
	if (high < 0)
		setup_failed("fcntl", errno);
	return high;
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
		char space[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	} control;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
			     .msg_controllen = sizeof control.space};
	ssize_t got;
	do
		got = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		setup_failed("recvmsg", errno);
	int fds[MAX_FDS];
	uint32_t nfds = 0, extra = 0;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
			if (nfds < MAX_FDS)
				fds[nfds++] = fd;
			else
				extra++, close(fd);
		}
	}
	if (nfds + extra != ntargets)
		setup_failed("the supervisor sent the wrong number of descriptors", 0);
	int floor = 0;
	for (uint32_t i = 0; i < ntargets; i++)
		if (targets[i] >= floor)
			floor = targets[i] + 1;
	for (uint32_t i = 0; i < nfds; i++) {
		int high = dup_above(fds[i], floor);
		close(fds[i]);
		fds[i] = high;
	}
	for (int k = 0; k < nours; k++)
		for (uint32_t i = 0; i < ntargets; i++)
			if (*ours[k] == targets[i]) {
				int high = dup_above(*ours[k], floor);
				close(*ours[k]);
				*ours[k] = high;
				break;
			}
	for (uint32_t i = 0; i < nfds; i++) {
		if (dup2(fds[i], targets[i]) < 0)
			setup_failed("dup2", errno);
		close(fds[i]);
	}
}

/* payload._redirect: each path opened here, as the payload's own uid, onto its fd; an empty
 * path copies fd 1.  O_NONBLOCK: a FIFO never blocks us before the release; cleared once open. */
static void redirect(int target, const char *path)
{
	int fd;
	if (!*path) {
		fd = 1;
	} else {
		int flags = target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC;
		fd = open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0666);
		if (fd < 0) {
			char what[EXEC_MESSAGE_MAX / 2];
			snprintf(what, sizeof what, "open(\"%s\")", path);
			setup_failed(what, errno);
		}
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
			setup_failed("fcntl", errno);
	}
	if (fd == target) {
		if (fcntl(fd, F_SETFD, 0) < 0)
			setup_failed("fcntl", errno);
	} else {
		if (dup2(fd, target) < 0)
			setup_failed("dup2", errno);
		if (fd != 1)
			close(fd);
	}
}

/* payload.exec_command: execvpe's PATH search (PATH from the command's environment, else
 * /bin:/usr/bin); the first error that is not ENOENT or ENOTDIR wins.  Returns that errno. */
static int exec_command(char **argv, char **envp)
{
	const char *file = argv[0];
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return errno;
	}
	const char *path = "/bin:/usr/bin";
	for (char **e = envp; *e; e++)
		if (!strncmp(*e, "PATH=", 5)) {
			path = *e + 5; /* the only one: Command.encode sends each name once */
			break;
		}
	int last = ENOENT, first = 0;
	size_t flen = strlen(file);
	char *full = malloc(strlen(path) + flen + 2);
	if (!full)
		return ENOMEM;
	for (const char *dir = path;; ) {
		const char *colon = strchrnul(dir, ':');
		size_t dlen = (size_t)(colon - dir);
		memcpy(full, dir, dlen);
		size_t at = dlen;
		if (dlen && dir[dlen - 1] != '/')
			full[at++] = '/';
		memcpy(full + at, file, flen + 1);
		execve(full, argv, envp);
		last = errno;
		if (last != ENOENT && last != ENOTDIR && !first)
			first = last;
		if (!*colon)
			break;
		dir = colon + 1;
	}
	return first ? first : last;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return EXIT_SBX;
	int command_r = number(argv[1]), channel = number(argv[2]), release_r = number(argv[3]);
	exec_w = number(argv[4]);
	/* Inherited across our own exec; close-on-exec again, so the command gets none of them. */
	int *ours[] = {&command_r, &channel, &release_r, &exec_w};
	for (int k = 0; k < 4; k++)
		if (fcntl(*ours[k], F_SETFD, FD_CLOEXEC) < 0)
			_exit(EXIT_SBX);
	prctl(PR_SET_NAME, "sbx-waiter");

	unsigned char header[8];
	if (read_exact(command_r, header, sizeof header) < 0)
		_exit(EXIT_SBX); /* discarded before use */
	struct cursor c = {header, header + sizeof header};
	uint64_t size = take(&c, 8);
	if (size > MAX_COMMAND)
		malformed();
	unsigned char *body = malloc(size ? size : 1);
	if (!body)
		setup_failed("malloc", ENOMEM);
	if (read_exact(command_r, body, size) < 0)
		_exit(EXIT_SBX);
	close(command_r);

	c = (struct cursor){body, body + size};
	char **args = strings(&c), **envp = strings(&c);
	if (!args[0])
		setup_failed("execve: argv must not be empty", 0);
	uint32_t nlimits = count(&c, (uint32_t)size / 20);
	const unsigned char *limits = c.p;
	c.p += (size_t)nlimits * 20;
	if (c.p > c.end)
		malformed();
	uint32_t npass = count(&c, MAX_FDS - 3);
	int targets[MAX_FDS] = {0, 1, 2};
	for (uint32_t i = 0; i < npass; i++) {
		uint64_t fd = take(&c, 4);
		if (fd > 1 << 20)
			malformed();
		targets[3 + i] = (int)fd;
	}
	uint32_t nredirects = count(&c, (uint32_t)size / 9);
	int *redirect_fds = calloc((size_t)nredirects + 1, sizeof *redirect_fds);
	char **redirect_paths = calloc((size_t)nredirects + 1, sizeof *redirect_paths);
	if (!redirect_fds || !redirect_paths)
		setup_failed("malloc", ENOMEM);
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
	if (setrlimit(RLIMIT_CORE, &none) < 0)
		setup_failed("setrlimit", errno);
	struct cursor l = {limits, limits + (size_t)nlimits * 20};
	for (uint32_t i = 0; i < nlimits; i++) {
		int which = (int)take(&l, 4);
		struct rlimit limit = {(rlim_t)take(&l, 8), (rlim_t)take(&l, 8)};
		if (setrlimit(which, &limit) < 0)
			setup_failed("setrlimit", errno);
	}

	/* protocol.send_payload_ready: the kernel adds our credentials; no listener here (waiter.py
	 * is used only where the filter was loaded before the command wait). */
	char ready = 'P';
	struct iovec iov = {&ready, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	while (sendmsg(channel, &msg, 0) < 0)
		if (errno != EINTR)
			setup_failed("sendmsg", errno);
	char go = 0;
	ssize_t n;
	do
		n = read(release_r, &go, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1 || go != 'G')
		_exit(EXIT_SBX); /* the supervisor is gone: never run unsupervised */

	int err = exec_command(args, envp);
	char message[32];
	int len = snprintf(message, sizeof message, "X %d", err);
	(void)!write(exec_w, message, (size_t)len);
	_exit(err == ENOENT || err == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC);
}
