/* Payloads for the limit tests and bench/limits.py: C, because Python starts ~35x
 * slower in the test VM and would blur every figure.
 *
 *   probe busy                 spin forever
 *   probe spin SECONDS         spin for SECONDS of own CPU time, then print
 *                              "rusage USER SYS START_USER START_SYS" (getrusage of
 *                              itself at the end, and as main began: what the process
 *                              used before its own code, in its exec and, under sbx,
 *                              in the set-up that ran in it before) and exit 0
 *   probe forkbusy N [SECONDS] N children spinning (forever, or SECONDS of CPU
 *                              each); the parent waits for them
 *   probe threads N            N busy threads, forever
 *   probe hog MIB [keep]       allocate and touch MIB MiB (exactly, page by page),
 *                              print "touched MIB"; with "keep", then sleep forever
 *   probe forkbomb             every process forks forever
 *   probe flood                write to stdout forever
 *   probe dwrite PATH MIB      write MIB MiB with O_DIRECT and fsync, print
 *                              "dwrite SECONDS"
 *   probe write PATH MIB       write MIB MiB with plain write(2); exit 1 with the
 *                              error when a write fails
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void spin(double seconds) {
    volatile unsigned long x = 0;
    if (seconds < 0) for (;;) x++;
    double start = cpu_now();
    while (cpu_now() - start < seconds)
        for (int i = 0; i < 1000000; i++) x++;
}

static void *spin_thread(void *arg) {
    (void)arg;
    spin(-1);
    return NULL;
}

static int usage(void) {
    fprintf(stderr, "usage: probe busy|spin S|forkbusy N [S]|threads N|hog MIB [keep]|forkbomb|flood|dwrite P MIB|write P MIB\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *mode = argv[1];
    if (!strcmp(mode, "busy")) {
        spin(-1);
    } else if (!strcmp(mode, "spin") && argc == 3) {
        struct rusage start, ru;
        getrusage(RUSAGE_SELF, &start);
        spin(atof(argv[2]));
        getrusage(RUSAGE_SELF, &ru);
        printf("rusage %ld.%06ld %ld.%06ld %ld.%06ld %ld.%06ld\n", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
               (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, (long)start.ru_utime.tv_sec,
               (long)start.ru_utime.tv_usec, (long)start.ru_stime.tv_sec, (long)start.ru_stime.tv_usec);
    } else if (!strcmp(mode, "forkbusy") && argc >= 3) {
        int n = atoi(argv[2]);
        double seconds = argc > 3 ? atof(argv[3]) : -1;
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0) { perror("fork"); return 1; }
            if (pid == 0) { spin(seconds); _exit(0); }
        }
        int status, bad = 0;
        while (wait(&status) > 0)
            if (!WIFEXITED(status) || WEXITSTATUS(status)) bad = 1;
        return bad;
    } else if (!strcmp(mode, "threads") && argc == 3) {
        int n = atoi(argv[2]);
        pthread_t t;
        for (int i = 1; i < n; i++) pthread_create(&t, NULL, spin_thread, NULL);
        spin(-1);
    } else if (!strcmp(mode, "hog") && argc >= 3) {
        size_t size = (size_t)atol(argv[2]) << 20;
        char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        long page = sysconf(_SC_PAGESIZE);
        for (size_t off = 0; off < size; off += page) p[off] = 1;
        printf("touched %s\n", argv[2]);
        fflush(stdout);
        if (argc > 3) for (;;) pause();
    } else if (!strcmp(mode, "forkbomb")) {
        for (;;) if (fork() < 0) usleep(1000);
    } else if (!strcmp(mode, "flood")) {
        static char buf[65536];
        memset(buf, 'x', sizeof buf);
        for (;;) if (write(1, buf, sizeof buf) < 0) return 1;
    } else if ((!strcmp(mode, "dwrite") || !strcmp(mode, "write")) && argc == 4) {
        int direct = !strcmp(mode, "dwrite");
        long mib = atol(argv[3]);
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0644);
        if (fd < 0) { perror(argv[2]); return 1; }
        char *buf;
        if (posix_memalign((void **)&buf, 4096, 1 << 20)) return 1;
        memset(buf, 'x', 1 << 20);
        double start = mono_now();
        for (long i = 0; i < mib; i++)
            if (write(fd, buf, 1 << 20) != 1 << 20) { perror("write"); return 1; }
        if (fsync(fd)) { perror("fsync"); return 1; }
        printf("%s %.3f\n", mode, mono_now() - start);
    } else {
        return usage();
    }
    return 0;
}
