"""The kernel: tasks, the closed request vocabulary, and the one decoder of requests."""
