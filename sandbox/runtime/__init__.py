"""The run path in process order: supervisor, entry, init, root filesystem, payload, and the pipes between them."""
