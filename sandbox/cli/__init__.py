"""The `sbx` command line, the only reader of sys.argv."""
