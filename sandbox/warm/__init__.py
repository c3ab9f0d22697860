"""Long-lived front ends over the runtime: the Python API, warm pools, the fork server, boxes, interactors, batch."""
