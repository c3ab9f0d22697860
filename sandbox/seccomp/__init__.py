"""seccomp: the reviewed syscall policy, its compiler to BPF, the cache and the loader."""
