/* i386 ABI from a 64-bit process: getpid through `int $0x80` (nr 20).
   Prints the result; a seccomp filter that only covers x86_64 lets it through. */
#include <stdio.h>
int main(void) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    printf("%ld\n", r);
    return 0;
}
