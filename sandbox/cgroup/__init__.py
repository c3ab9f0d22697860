"""cgroup v2: finding a delegated subtree, the systemd scope, and one cgroup per run.

Split by concern, as crun splits its cgroup code; each module imports only those below it:

- fs.py: reading cgroupfs files, the cgroup2 mounts, our own cgroup; CgroupError.
- discover.py: where a delegation comes from, and preparing it (leaf, controllers).
- systemd.py: re-running sbx in a transient systemd user scope (discovery step 3).
- resources.py: writing a run's limits, one function per controller.
- iodev.py: the block devices io.max must name.
- stats.py: a run's figures and the CPU-time limit's arithmetic.
- runcg.py: the run cgroup (create, enter, kill, remove) and removing stale ones.
- diagnose.py: the checks `sbx doctor` prints.

Nothing is imported here: the start-up path loads only the modules it uses.
"""
