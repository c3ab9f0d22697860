/* Attach to a process with ptrace and read a word of its memory: the
   classic way to take over the sandbox's init (pid 1) or a sibling.
   usage: ptrace_peek [PID]  (default 1) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/user.h>
#include <stddef.h>

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ESRCH: return "ESRCH";
    case ENOSYS: return "ENOSYS";
    default: return strerror(e);
    }
}

int main(int argc, char **argv) {
    pid_t pid = argc > 1 ? (pid_t)atoi(argv[1]) : 1;
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) {
        printf("RESULT ptrace_peek blocked PTRACE_ATTACH %s\n", ename(errno));
        return 0;
    }
    int status;
    waitpid(pid, &status, __WALL);
    errno = 0;
    long rip = ptrace(PTRACE_PEEKUSER, pid, offsetof(struct user_regs_struct, rip), 0);
    int e = errno;
    ptrace(PTRACE_DETACH, pid, 0, 0);
    if (e)
        printf("RESULT ptrace_peek ESCAPED attached to %d (PEEKUSER %s)\n", (int)pid, ename(e));
    else
        printf("RESULT ptrace_peek ESCAPED attached to %d, rip=%#lx\n", (int)pid, rip);
    return 0;
}
