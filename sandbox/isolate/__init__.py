"""isolate's interface on sbx: `sbx-isolate`, which is also `isolate` when called by that name.

Judges that run the `isolate` binary (CMS, Judge0) switch by putting a symlink named
`isolate` first on PATH.  Rootless: boxes are sbx boxes (warm/box.py) under the caller's
data directory, the program runs as a subordinate id that owns none of the box's files, and
runs go through sbx's runtime.  One module per concern:

    options.py   the command line, with isolate's units, defaults and usage errors
    rules.py     directory rules (-d, -D) and environment rules (-e, -E) -> Spec fields
    boxes.py     --init / --cleanup / the run's box and lock
    meta.py      the meta file and the status line
    main.py      the entry: one command per invocation, isolate's exit status 0/1/2
"""
