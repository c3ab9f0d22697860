"""cgroup v2: discovering a delegated subtree, systemd scopes, the run cgroup and its figures."""
