"""Services own the requests of one area each (streams, clock, system) and register them with the kernel."""
