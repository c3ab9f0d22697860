/* Foreign syscall ABIs from a 64-bit process: getpid through `int $0x80`
   (i386, nr 20) or with the x32 bit (0x40000000 | 39).  A filter that only
   checks x86_64 numbers would let either through.
   usage: abi i386|x32 */
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    long r;
    const char *abi = argc > 1 ? argv[1] : "i386";
    if (strcmp(abi, "x32") == 0)
        __asm__ volatile("syscall" : "=a"(r) : "a"(0x40000000L | 39L) : "rcx", "r11", "memory");
    else
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    if (r > 0)
        printf("RESULT abi_%s ESCAPED getpid returned %ld\n", abi, r);
    else
        printf("RESULT abi_%s blocked %s\n", abi, r == -38 ? "ENOSYS" : r == -1 ? "EPERM" : "error");
    return 0;
}
