/* x32 ABI: syscall number with bit 30 set (getpid = 0x40000000 | 39).
   On kernels without CONFIG_X86_X32_ABI the kernel itself returns ENOSYS. */
#include <stdio.h>
int main(void) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(0x40000000L | 39L) : "rcx", "r11", "memory");
    printf("%ld\n", r);
    return 0;
}
