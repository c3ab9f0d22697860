"""Thin wrappers over the kernel's interfaces (syscalls by ctypes, id maps, host files): no policy."""
